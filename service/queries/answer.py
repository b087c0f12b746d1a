"""The release: read the private aggregates, add the priced noise, and shape the answer.

Called only from inside ``run_charged``'s compute step, i.e. after the cost is reserved. What
is generic lives here: the automatic cap's private choice, the parts rebuilt for the cap in
use, the selection of undeclared group keys, and the notes and mechanism figures every answer
carries; the kind reads, noises and estimates (``QueryKind.release``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from corpus.engine import Engine
from service.queries.groups import select_keys
from service.queries.kinds.base import Release
from service.queries.parts import half_width, noise_scale, noisy, rescale
from service.queries.plan import AUTO_CAP_BUCKETS, Plan
from service.queries.pricing import Priced, parts_for


def choose_cap(q: Engine, priced: Priced) -> int:
    """Choose the per-sender cap privately from a noisy histogram of sender activity.

    Each sender adds 1 to the bucket of its message count (sensitivity 1), noised by
    ``priced.cap_part``. The cap is the candidate (checked at pricing, so that whichever is
    chosen can be released) that minimises (messages the cap would drop, estimated from the
    noisy histogram) + (the 95% noise half-width of a count released at the main part's cost
    with that cap, computed at pricing). Everything after the noise is post-processing.
    """
    part = priced.cap_part
    assert part is not None and priced.cap_candidates
    hist = noisy(part, q.sender_activity())
    # Buckets whose noisy count is within the noise's own 95% range are treated as empty:
    # otherwise noise in the many empty high buckets would drag the cap up.
    hist = np.where(hist > half_width(part, 0.95), hist, 0.0)
    best, best_err = priced.cap_candidates[0], math.inf
    for cap in priced.cap_candidates:
        # bucket b holds senders with [2^b, 2^(b+1)) messages: take 1.5 * 2^b as typical
        dropped = sum(hist[b] * max(0.0, 1.5 * 2**b - cap) for b in range(AUTO_CAP_BUCKETS))
        err = dropped + priced.cap_probe_half_width[cap]
        if err < best_err:
            best, best_err = cap, err
    return best


def build_answer(plan: Plan, priced: Priced, q: Engine) -> dict[str, Any]:
    """Compute the private aggregates of ``plan``, add noise, and shape the answer."""
    bias: list[str] = []
    cap_info: dict[str, Any]
    if plan.max_messages is None:
        assert priced.cap_part is not None
        m = choose_cap(q, priced)
        cap_info = {"value": m, "chosen": "auto", "cost_share": priced.cap_part.share}
    else:
        m = plan.max_messages
        cap_info = {"value": m, "chosen": "fixed"}
    # Sensitivities follow from the cap; costs (epsilon or rho per part) do not change.
    for fresh in parts_for(plan, m):
        part = priced.parts[fresh.name]
        if part.sensitivity != fresh.sensitivity:
            rescale(part, plan, fresh.sensitivity)

    keys: list[Any] | None = None
    selection: dict[Any, float] = {}
    if plan.groups is not None and plan.groups.keys is None:
        assert priced.threshold is not None
        keys, selection, note = select_keys(q, priced.parts["selection"], priced.threshold)
        bias.append(note)
    elif plan.groups is not None:
        keys = list(plan.groups.keys)  # type: ignore[arg-type]

    r = Release(plan, priced.parts, q, m, keys, selection, priced.threshold, bias, plan.level)
    result = plan.spec.release(r)
    if plan.uses_cap:
        bias.append(
            f"At most {m} messages per sender count (those of smallest random rank); "
            "messages beyond the cap are left out, which lowers counts and sums and weights "
            "means toward lighter senders."
        )
    bias.extend(plan.spec.value_notes())
    return {
        **result,
        "confidence_level": plan.level,
        "mechanism": _mechanism(plan, priced),
        "max_messages_per_sender": cap_info,
        "bias": bias,
    }


def _mechanism(plan: Plan, priced: Priced) -> dict[str, Any]:
    """The answer's mechanism figures: each part's sensitivity and noise scale (or sigma)."""
    return {
        "name": plan.mechanism,
        "noise": {
            name: {
                "sensitivity": p.sensitivity,
                ("scale" if plan.mechanism == "laplace" else "sigma"): noise_scale(p),
            }
            for name, p in priced.parts.items()
        },
    }
