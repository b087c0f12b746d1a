"""Pricing: from a plan to the mechanism of every noisy part and the privacy event to charge.

``price(plan, max_messages=...)`` decides every noise scale from public facts only (the plan's
bounds, cap, groups and requested cost or accuracy), and everything that could make the release
fail is decided here, before the corpus is read (PRIVACY.md, "The ledger"): the grid (in the
plan), every noise scale at every cap the release may use (``_check_caps``), the accuracy
target's range and the cost it implies. A plan that fails any of them is refused with a 422 that
costs nothing. The release itself (``answer.build_answer``) only reads, adds the priced noise and
post-processes.

Nothing here depends on a query kind: a kind says which parts it needs and their sensitivities
(``parts_for``); pricing splits the cost over them. All noise arithmetic lives in
``mechanisms/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mechanisms.accountant import PrivacyEvent
from mechanisms.bounding import partition_threshold
from mechanisms.errors import InvalidParameterError
from mechanisms.gaussian import GaussianMechanism
from mechanisms.laplace import LaplaceMechanism
from service.errors import APIError
from service.queries.groups import GROUPS_PER_SENDER, with_selection
from service.queries.parts import (
    MAX_NOISE_UNITS,
    Mechanism,
    Part,
    cost_of,
    gaussian,
    half_width,
    laplace,
    noise_scale,
    rescale,
)
from service.queries.plan import AUTO_CAP_SHARE, AUTO_CAPS, Plan

MIN_HALF_WIDTH_UNITS = 0.5
#: The most one query priced by accuracy may cost (the schema's limit on epsilon, and the
#: zCDP rho of that epsilon as pure DP).
MAX_QUERY_EPSILON = 10.0
MAX_QUERY_RHO = MAX_QUERY_EPSILON**2 / 2


@dataclass
class Priced:
    event: PrivacyEvent
    parts: dict[str, Part]
    epsilon: float | None  # the pure or (approximate) epsilon of the whole query
    delta: float
    cap_part: Part | None = None
    threshold: float | None = None
    #: Caps the release may use, each checked at pricing (see ``_check_caps``).
    cap_candidates: tuple[int, ...] = ()
    #: For an automatic cap: each candidate's weighed half-width (see ``choose_cap``).
    cap_probe_half_width: dict[int, float] = field(default_factory=dict)


def _rho_for(epsilon: float, delta: float) -> float:
    """The largest rho whose RDP conversion gives at most (epsilon, delta)."""
    return float(GaussianMechanism(sensitivity=1.0, epsilon=epsilon, delta=delta).rho)


def _from_accuracy(
    mechanism: str, sensitivity: float, half_width: float, level: float
) -> Mechanism:
    cls = LaplaceMechanism if mechanism == "laplace" else GaussianMechanism
    return cls.from_accuracy(sensitivity=sensitivity, half_width=half_width, level=level)


def parts_for(plan: Plan, max_messages: int) -> list[Part]:
    """The noisy releases a plan needs, with their sensitivities for a cap of ``max_messages``:
    its kind's parts and, over undeclared group keys, the key selection's (``groups``)."""
    parts = plan.spec.parts(plan, max_messages)
    if plan.groups is not None and plan.groups.keys is None:
        return with_selection(parts, selection_is_answer=plan.spec.selection_is_answer)
    return parts


def price(plan: Plan, *, max_messages: int | None) -> Priced:
    """Choose every mechanism of ``plan`` and the privacy event to charge.

    ``max_messages`` is the per-sender cap when fixed; ``None`` means it will be chosen
    privately at release, with ``AUTO_CAP_SHARE`` of the cost set aside for that choice
    (the parts are then priced for a provisional cap and re-scaled at release, keeping
    their cost, since cost depends only on epsilon or rho, not on the cap).

    Everything that could make the release fail is decided here, from public inputs only,
    before the corpus is read (``_check_caps``): every candidate cap's mechanisms are built
    once, and a plan that no candidate can serve is refused. Raises APIError (422) or
    InvalidParameterError for such plans.
    """
    selection = plan.needs_partition_selection
    if plan.mechanism == "gaussian" and selection:
        raise InvalidParameterError(
            "queries over undeclared keys (partition selection) use the Laplace mechanism"
        )
    provisional = max_messages or 1
    parts = {p.name: p for p in parts_for(plan, provisional)}
    cap_part = (
        Part("auto_cap", 1.0, AUTO_CAP_SHARE) if max_messages is None and plan.uses_cap else None
    )
    if plan.accuracy is not None:
        priced = _price_accuracy(plan, parts, selection)
    elif plan.mechanism == "laplace":
        priced = _price_laplace(plan, parts, cap_part, selection)
    else:
        priced = _price_gaussian(plan, parts, cap_part)
    priced.cap_part = cap_part
    if selection:
        priced.threshold = _threshold(plan, parts)
    _check_caps(plan, priced, max_messages)
    return priced


def _price_laplace(
    plan: Plan, parts: dict[str, Part], cap_part: Part | None, selection: bool
) -> Priced:
    """Split ``plan.epsilon`` over the parts by their shares (basic composition), after the
    automatic cap's share. Keys found by partition selection add the threshold's delta: the
    event is then (epsilon, delta)."""
    assert plan.epsilon is not None
    eps = plan.epsilon
    main_share = 1.0 - (AUTO_CAP_SHARE if cap_part else 0.0)
    for part in parts.values():
        part.mechanism = laplace(part.sensitivity, eps * main_share * part.share)
    if cap_part:
        cap_part.mechanism = laplace(cap_part.sensitivity, eps * cap_part.share)
    if selection:
        event = PrivacyEvent.approx_dp(eps, plan.delta)
        return Priced(event=event, parts=parts, epsilon=eps, delta=plan.delta, cap_part=cap_part)
    event = PrivacyEvent.laplace(eps)
    return Priced(event=event, parts=parts, epsilon=eps, delta=0.0, cap_part=cap_part)


def _price_gaussian(plan: Plan, parts: dict[str, Part], cap_part: Part | None) -> Priced:
    """Split the rho of ``(plan.epsilon, plan.delta)`` over the parts by their shares, after
    the automatic cap's share."""
    assert plan.epsilon is not None
    rho = _rho_for(plan.epsilon, plan.delta)
    main_share = 1.0 - (AUTO_CAP_SHARE if cap_part else 0.0)
    for part in parts.values():
        part.mechanism = gaussian(part.sensitivity, rho * main_share * part.share)
    if cap_part:
        cap_part.mechanism = gaussian(cap_part.sensitivity, rho * cap_part.share)
    # Gaussian releases compose exactly: the whole query is one Gaussian whose rho is the
    # sum of the parts' (each rounded up a little).
    spent_rho = sum(p.mechanism.rho for p in _all(parts, cap_part))
    event = PrivacyEvent.gaussian(1.0 / math.sqrt(2.0 * spent_rho))
    return Priced(
        event=event, parts=parts, epsilon=plan.epsilon, delta=plan.delta, cap_part=cap_part
    )


def _price_accuracy(plan: Plan, parts: dict[str, Part], selection: bool) -> Priced:
    """The cheapest noise that delivers the requested half-width at the requested level.

    Only single-release plans take an accuracy target: kinds that say they take one
    (``takes_accuracy``), with no key selection besides, unless the selection's counts are the
    answer (a count of senders over undeclared groups). The half-width is in the kind's
    ``accuracy_unit``. When keys are discovered, the threshold spends delta: the event charged
    is (epsilon, delta).
    """
    assert plan.accuracy is not None
    if len(parts) != 1:
        raise APIError(
            422,
            "validation_error",
            "An accuracy target needs a query with one noisy release; this one has "
            f"{len(parts)} ({', '.join(parts)}). Give privacy.epsilon instead.",
            {"privacy": {"accuracy": ["not supported for this query"]}},
        )
    (part,) = parts.values()
    half_width_, level = plan.accuracy
    unit = plan.spec.accuracy_unit
    target = half_width_ / unit
    if not MIN_HALF_WIDTH_UNITS <= target <= MAX_NOISE_UNITS:
        raise APIError(
            422,
            "validation_error",
            "The accuracy target is out of range: its half-width must lie between "
            f"{MIN_HALF_WIDTH_UNITS * unit!r} and {MAX_NOISE_UNITS * unit!r} for this query.",
            {"privacy": {"accuracy": {"half_width": ["out of range"]}}},
        )
    part.mechanism = _from_accuracy(plan.mechanism, part.sensitivity, target, level)
    if plan.mechanism == "laplace":
        epsilon = float(part.mechanism.epsilon)
        _check_derived(epsilon <= MAX_QUERY_EPSILON, f"epsilon {epsilon:.4g}")
        if selection:
            return Priced(
                event=PrivacyEvent.approx_dp(epsilon, plan.delta),
                parts=parts,
                epsilon=epsilon,
                delta=plan.delta,
            )
        return Priced(
            event=PrivacyEvent.laplace(epsilon), parts=parts, epsilon=epsilon, delta=0.0
        )
    rho = float(part.mechanism.rho)
    _check_derived(rho <= MAX_QUERY_RHO, f"rho {rho:.4g}")
    return Priced(
        event=PrivacyEvent.gaussian(1.0 / math.sqrt(2.0 * rho)),
        parts=parts,
        epsilon=None,
        delta=plan.delta,
    )


def _check_derived(ok: bool, what: str) -> None:
    if not ok:
        raise APIError(
            422,
            "validation_error",
            f"The accuracy target is too tight: it would cost {what}, above the most one query "
            f"may spend (epsilon {MAX_QUERY_EPSILON}).",
            {"privacy": {"accuracy": {"half_width": ["too small"]}}},
        )


def cap_candidates(plan: Plan, max_messages: int | None) -> tuple[int, ...]:
    """The per-sender caps a plan may end up with: the fixed one, or every automatic one."""
    if max_messages is not None:
        return (max_messages,)
    return AUTO_CAPS


def _check_caps(plan: Plan, priced: Priced, max_messages: int | None) -> None:
    """Build, for every candidate cap, every mechanism the release will use, and keep the caps
    for which all of them exist, with noise below ``MAX_NOISE_UNITS``; refuse the plan when
    none is left. After this, nothing in the release depends on a check that can fail.

    Also records, per candidate, the half-width that ``choose_cap`` weighs (a count released
    at the main part's cost), so that the choice itself builds no mechanism.
    """
    main = next((p for n, p in priced.parts.items() if n != "selection"), None)
    feasible: list[int] = []
    probe_hw: dict[int, float] = {}
    why = ""
    checked: dict[tuple[float, float, float], float] = {}  # many parts share one shape
    costs = {id(p): cost_of(p) for p in _all(priced.parts, priced.cap_part)}

    def check(part: Part, sensitivity: float, level: float) -> float:
        key = (sensitivity, costs[id(part)], level)
        if key not in checked:
            probe = Part(part.name, part.sensitivity, part.share, part.mechanism)
            if probe.sensitivity != sensitivity:
                rescale(probe, plan, sensitivity)
            checked[key] = _check_noise(probe, level)
        return checked[key]

    for cap in cap_candidates(plan, max_messages):
        try:
            for fresh in parts_for(plan, cap):
                check(priced.parts[fresh.name], fresh.sensitivity, plan.level)
            if priced.cap_part is not None and main is not None:
                probe_hw[cap] = check(main, float(cap), 0.95)
        except (InvalidParameterError, ValueError, OverflowError, ZeroDivisionError) as exc:
            why = str(exc)
            continue
        feasible.append(cap)
    if not feasible:
        caps = "the per-sender cap" if max_messages is not None else "every automatic cap"
        raise APIError(
            422,
            "validation_error",
            f"No release is possible with {caps} at this cost and these bounds: the noise "
            f"would be out of range ({why}). Narrow the bounds, lower the cap or raise epsilon.",
            {"privacy": ["noise out of range for these bounds and cap"]},
        )
    priced.cap_candidates = tuple(feasible)
    priced.cap_probe_half_width = probe_hw
    for part in _all(priced.parts, priced.cap_part):
        check(part, part.sensitivity, plan.level)


def _check_noise(part: Part, level: float) -> float:
    """The part's half-width at ``level``; InvalidParameterError if its noise is too large."""
    scale = noise_scale(part)
    if not (math.isfinite(scale) and scale <= MAX_NOISE_UNITS):
        raise InvalidParameterError(
            f"noise scale {scale:.4g} above the limit of 2**39 units for {part.name}"
        )
    hw = half_width(part, level)
    if not math.isfinite(hw):
        raise InvalidParameterError(f"non-finite interval for {part.name}")
    return hw


def _all(parts: dict[str, Part], cap_part: Part | None) -> list[Part]:
    return [*parts.values(), *([cap_part] if cap_part else [])]


def _threshold(plan: Plan, parts: dict[str, Part]) -> float:
    """The partition-selection threshold of keys found in the data: the kind's own (top terms)
    or the group selection's, at the Laplace part that counts the keys' senders."""
    name, max_keys = plan.spec.discovers_keys or ("selection", GROUPS_PER_SENDER)
    eps = parts[name].mechanism.epsilon
    # partition_threshold assumes LaplaceMechanism(sensitivity=max_keys, epsilon=eps); ours
    # reports its epsilon rounded up, so a hair less epsilon (more noise) keeps the threshold
    # on the safe side of our mechanism's actual scale.
    eps_safe = float(eps) * (1.0 - 1e-9)
    return float(partition_threshold(epsilon=eps_safe, delta=plan.delta, max_keys=max_keys))
