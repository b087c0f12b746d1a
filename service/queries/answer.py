"""Turn private aggregates into a released answer: noise, intervals, bias notes.

Called only from inside ``run_charged``'s compute step, i.e. after the cost is reserved.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np

from corpus.engine import EmbeddingEngine, Engine
from mechanisms.estimators import (
    bootstrap_quantile_interval,
    histogram_quantile,
    interval,
    ratio_box,
    variance_box,
)
from service.queries.parts import (
    half_width,
    noise_scale,
    noisy,
    rescale,
    simulate_noise,
)
from service.queries.plan import AUTO_CAP_BUCKETS, EMBEDDING_KINDS, Plan
from service.queries.pricing import GROUPS_PER_SENDER, Priced, parts_for


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
    level = plan.level
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
    if plan.groups is not None:
        if plan.groups.keys is None:
            counts = q.group_sender_counts(GROUPS_PER_SENDER)
            part = priced.parts["selection"]
            names = list(counts)
            noisy_counts = noisy(part, [counts[k] for k in names]) if names else np.array([])
            assert priced.threshold is not None
            selection = {
                k: float(v)
                for k, v in zip(names, noisy_counts, strict=True)
                if v >= priced.threshold
            }
            keys = sorted(selection, key=str)
            bias.append(
                f"Groups are released only when their noisy number of distinct senders reaches "
                f"{priced.threshold:.1f}; each sender counted toward at most {GROUPS_PER_SENDER} "
                "groups in that selection, so small groups are missing."
            )
        else:
            keys = list(plan.groups.keys)

    result = _dispatch(plan, priced, q, m, keys, selection, level, bias)
    if plan.kind not in ("count",) or plan.of != "senders":
        bias.append(
            f"At most {m} messages per sender count (those of smallest random rank); "
            "messages beyond the cap are left out, which lowers counts and sums and weights "
            "means toward lighter senders."
        )
    if plan.grid is not None and plan.kind != "histogram":
        bias.append(
            f"Values are clamped to [{plan.grid.lower}, {plan.grid.upper}] and rounded to "
            f"multiples of {plan.grid.step}."
        )
    mech = {
        "name": plan.mechanism,
        "noise": {
            name: {
                "sensitivity": p.sensitivity,
                ("scale" if plan.mechanism == "laplace" else "sigma"): noise_scale(p),
            }
            for name, p in priced.parts.items()
        },
    }
    return {
        **result,
        "confidence_level": level,
        "mechanism": mech,
        "max_messages_per_sender": cap_info,
        "bias": bias,
    }


def _keyed(keys: list[Any] | None, values: dict[Any, Any], default: Any) -> list[tuple[Any, Any]]:
    if keys is None:
        return [(None, values.get(None, default))]
    return [(k, values.get(k, default)) for k in keys]


def _pack(keys: list[Any] | None, rows: list[tuple[Any, dict[str, Any]]]) -> dict[str, Any]:
    if keys is None:
        return {"result": rows[0][1]}
    return {"groups": [{"key": k, **v} for k, v in rows]}


def _dispatch(
    plan: Plan,
    priced: Priced,
    q: Engine,
    m: int,
    keys: list[Any] | None,
    selection: dict[Any, float],
    level: float,
    bias: list[str],
) -> dict[str, Any]:
    P = priced.parts
    kind = plan.kind
    if kind in EMBEDDING_KINDS:
        from service.queries.embeddings import answer

        return answer(plan, priced, cast(EmbeddingEngine, q), m, level, bias)
    if kind == "count":
        if plan.groups is not None and plan.groups.keys is None and plan.of == "senders":
            hw = half_width(P["selection"], level)
            rows = [
                (k, {"value": selection[k], "interval": interval(selection[k], hw)})
                for k in keys or []
            ]
            return _pack(keys, rows)
        raw = _keyed(keys, q.counts(m), 0)
        vals = noisy(P["count"], [v for _, v in raw])
        hw = half_width(P["count"], level)
        rows = [
            (k, {"value": float(v), "interval": interval(float(v), hw)})
            for (k, _), v in zip(raw, vals, strict=True)
        ]
        return _pack(keys, rows)
    if kind == "top_terms":
        return _top_terms(plan, priced, q, m, level, bias)
    if kind in ("histogram", "quantiles"):
        return _binned(plan, priced, q, m, keys, level)
    grid = plan.grid
    assert grid is not None
    step = grid.step
    if kind == "sentiment":
        raw = _keyed(keys, q.sentiment(m), (0, 0, 0, 0))
        cls = noisy(P["classes"], [list(v[:3]) for _, v in raw]).reshape(len(raw), 3)
        sums = noisy(P["sum"], [v[3] for _, v in raw])
        hc, hs = half_width(P["classes"], level), half_width(P["sum"], level)
        rows = []
        for (k, _), c, s in zip(raw, cls, sums, strict=True):
            c = np.maximum(c, 0.0)
            total = float(c.sum())
            htot = 3 * hc
            shares = {
                name: {
                    "value": float(c[i] / total) if total > 0 else None,
                    "interval": ratio_box(float(c[i]), hc, total, htot, 0.0, 1.0),
                }
                for i, name in enumerate(("positive", "neutral", "negative"))
            }
            mean = float(s) / total * step if total > 0 else None
            rows.append(
                (
                    k,
                    {
                        "mean_compound": {
                            "value": None if mean is None else max(-1.0, min(1.0, mean)),
                            "interval": ratio_box(
                                float(s) * step, hs * step, total, htot, -1.0, 1.0
                            ),
                        },
                        "shares": shares,
                    },
                )
            )
        bias.append(
            "Intervals of means and shares are conservative boxes over the noisy sums "
            "and counts (approximate, not exact)."
        )
        return _pack(keys, rows)
    raw = _keyed(keys, q.moments(m), (0, 0, 0, 0))
    off = grid.offset_q
    if kind == "sum":
        vals = noisy(P["sum"], [v[3] for _, v in raw])
        hw = half_width(P["sum"], level) * step
        rows = [
            (k, {"value": float(v) * step, "interval": interval(float(v) * step, hw)})
            for (k, _), v in zip(raw, vals, strict=True)
        ]
        return _pack(keys, rows)
    counts = noisy(P["count"], [v[0] for _, v in raw])
    sums = noisy(P["sum"], [v[1] for _, v in raw])
    hc, hs = half_width(P["count"], level), half_width(P["sum"], level)
    rows = []
    if kind == "mean":
        for (k, _), c, s in zip(raw, counts, sums, strict=True):
            value = (off + s / c) * step if c >= 1 else None
            lo_hi = ratio_box(float(s), hs, float(c), hc, grid.lower_q - off, grid.upper_q - off)
            value = None if value is None else min(grid.upper, max(grid.lower, value))
            rows.append(
                (
                    k,
                    {
                        "value": value,
                        "interval": [(off + lo_hi[0]) * step, (off + lo_hi[1]) * step],
                    },
                )
            )
        bias.append(
            "The mean is a noisy sum over a noisy count; its interval is a conservative "
            "box over both (approximate)."
        )
        return _pack(keys, rows)
    # variance
    sq = noisy(P["sumsq"], [v[2] for _, v in raw])
    hq = half_width(P["sumsq"], level)
    span = (grid.upper - grid.lower) ** 2 / 4
    for (k, _), c, s, qq in zip(raw, counts, sums, sq, strict=True):
        value, box = variance_box(
            c, s, qq, h_count=hc, h_total=hs, h_sq=hq, unit=step, span=span
        )
        rows.append((k, {"value": value, "interval": box}))
    bias.append(
        "The variance comes from a noisy count, sum and sum of squares; its interval is a "
        "conservative box over them (approximate)."
    )
    return _pack(keys, rows)


def _binned(
    plan: Plan, priced: Priced, q: Engine, m: int, keys: list[Any] | None, level: float
) -> dict[str, Any]:
    from service.queries.plan import QUANTILE_BINS

    grid = plan.grid
    assert grid is not None
    if plan.kind == "histogram":
        edges = plan.bins
    else:
        edges = tuple(np.linspace(grid.lower, grid.upper, QUANTILE_BINS + 1).tolist())
    nb = len(edges) - 1
    raw = _keyed(keys, q.bin_counts(edges, m), [0] * nb)
    part = priced.parts["bins"]
    vals = noisy(part, [v for _, v in raw]).reshape(len(raw), nb)
    hw = half_width(part, level)
    if plan.kind == "histogram":
        rows = [
            (
                k,
                {
                    "bins": [
                        {
                            "lower": edges[i],
                            "upper": edges[i + 1],
                            "value": float(v[i]),
                            "interval": interval(float(v[i]), hw),
                        }
                        for i in range(nb)
                    ]
                },
            )
            for (k, _), v in zip(raw, vals, strict=True)
        ]
        return _pack(keys, rows)
    v = vals[0]
    width = (grid.upper - grid.lower) / nb
    sims = v + simulate_noise(part, (BOOTSTRAP, nb))
    out = [
        {
            "quantile": qv,
            "value": histogram_quantile(v, edges, qv),
            # widened by one bin: the histogram cannot place a quantile more finely
            "interval": bootstrap_quantile_interval(
                sims, edges, qv, level, widen=width, lower=grid.lower, upper=grid.upper
            ),
        }
        for qv in plan.quantiles
    ]
    return {
        "result": {"quantiles": out},
        "interval_note": f"Quantiles are read off a noisy {nb}-bin histogram; their "
        f"intervals are a parametric bootstrap ({BOOTSTRAP} re-noised copies of it) "
        "widened by one bin width: approximate, not exact.",
    }


BOOTSTRAP = 200


def _top_terms(
    plan: Plan, priced: Priced, q: Engine, m: int, level: float, bias: list[str]
) -> dict[str, Any]:
    counts = q.term_sender_counts(m)
    part = priced.parts["senders"]
    hw = half_width(part, level)
    if plan.terms:
        vals = noisy(part, [counts.get(t, 0) for t in plan.terms])
        rows: list[dict[str, Any]] = [
            {"term": t, "senders": float(v), "interval": interval(float(v), hw)}
            for t, v in zip(plan.terms, vals, strict=True)
        ]
        rows.sort(key=lambda r: -float(r["senders"]))
        return {"result": {"terms": rows[: plan.k] if plan.k else rows}}
    names = list(counts)
    vals = noisy(part, [counts[t] for t in names]) if names else np.array([])
    assert priced.threshold is not None
    kept = [(t, float(v)) for t, v in zip(names, vals, strict=True) if v >= priced.threshold]
    kept.sort(key=lambda tv: -tv[1])
    bias.append(
        f"Terms are released only when their noisy number of distinct senders reaches "
        f"{priced.threshold:.1f}; each sender counted toward at most "
        f"{plan.max_terms_per_sender} of its terms (its most used), and common function "
        "words are left out."
    )
    rows = [{"term": t, "senders": v, "interval": interval(v, hw)} for t, v in kept[: plan.k]]
    return {"result": {"terms": rows}}
