"""Composition of privacy events: tight PLD figures for reporting, fast RDP bounds for admission.

Which guarantee each figure is (all are sound upper bounds on epsilon at the given delta):

- ``epsilon(delta, method="pld")``: privacy loss distributions from Google's dp-accounting,
  pessimistic discretisation on a 1e-3 grid (1e-4 when a small Laplace epsilon is off that
  grid), so an upper bound within about 1e-2 of the optimum; where the discretisation error
  would exceed the RDP bound's slack (many tiny-epsilon events) the RDP bound is returned.
  Laplace events use the worst-case pure-DP loss (exact for a unit-sensitivity discrete
  Laplace, and an upper bound for any pure-DP release). Gaussian events use dp-accounting's
  discrete Gaussian PLD at sigma = noise_multiplier, sensitivity 1: exact for a one-dimensional
  integer statistic of unit sensitivity; for other sensitivities, grids or dimensions it is the
  same-noise-multiplier approximation, NOT a proven bound (the RDP and zCDP figures are proven
  for any integer shift within the L2 sensitivity, CKS 2020). Subsampled Gaussian events use
  the Poisson-subsampled continuous Gaussian PLD (DP-SGD adds continuous noise).
- ``"rdp"``: Renyi DP at :data:`~mechanisms.rdp.ORDERS`, converted with dp-accounting's
  conversion, and never worse than basic composition of the pure events plus RDP of the rest.
- ``"zcdp"``: sum of rho, then ``rho + 2 sqrt(rho ln(1/delta))`` (Bun, Steinke 2016).
- ``"basic"``: sum of epsilons, each Gaussian event charged its single-release PLD epsilon at
  an equal share of delta.

``approx_dp`` events are added by basic composition to every method: their epsilons are summed and
their deltas subtracted from the delta available to the rest.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
from dp_accounting.pld import privacy_loss_distribution as _pld
from dp_accounting.pld.common import DifferentialPrivacyParameters

from .errors import InvalidParameterError, check_delta, check_positive
from .events import PrivacyEvent
from .rdp import ORDERS, epsilon_from_rdp, rdp_vector

__all__ = ["Accountant", "PrivacyEvent", "rdp_vector", "epsilon_from_rdp", "ORDERS", "METHODS"]

METHODS = ("pld", "rdp", "zcdp", "basic")
PLD_DISCRETISATION = 1e-3  # value_discretization_interval; pessimistic, so still an upper bound
_STATE_VERSION = 1


def _discretisation(events: Iterable[PrivacyEvent]) -> float:
    """PLD grid: 1e-3, or 1e-4 when a small Laplace epsilon is off the 1e-3 grid (the
    pessimistic rounding of +-epsilon up to the grid would otherwise inflate it by up to 10%)."""
    for event in events:
        if event.kind == "laplace" and event.epsilon is not None and event.epsilon < 0.1:
            steps = event.epsilon / PLD_DISCRETISATION
            if abs(steps - round(steps)) > 1e-6:
                return PLD_DISCRETISATION / 10
    return PLD_DISCRETISATION


@functools.lru_cache(maxsize=1024)
def _event_pld(event: PrivacyEvent, interval: float = PLD_DISCRETISATION) -> Any:
    if event.kind == "laplace":
        params = DifferentialPrivacyParameters(event.epsilon, 0.0)
        return _pld.from_privacy_parameters(params, value_discretization_interval=interval)
    if event.kind == "gaussian":
        return _pld.from_discrete_gaussian_mechanism(
            event.noise_multiplier, value_discretization_interval=interval
        )
    if event.kind == "subsampled_gaussian":
        once = _pld.from_gaussian_mechanism(
            event.noise_multiplier,
            sampling_prob=event.sampling_rate,
            value_discretization_interval=interval,
        )
        return once.self_compose(event.steps) if event.steps and event.steps > 1 else once
    raise InvalidParameterError(f"no PLD for {event.kind} events")


class Accountant:
    """A history of privacy events and what it costs under composition.

    Not thread-safe; the ledger, not this class, is the source of truth for budgets.
    """

    def __init__(self, events: Iterable[PrivacyEvent] = ()) -> None:
        self._events: list[PrivacyEvent] = []
        self._rdp_all = np.zeros(len(ORDERS))
        self._rdp_rest = np.zeros(len(ORDERS))  # RDP of the non-pure, non-approx events
        self._pure = 0.0
        self._approx_eps = 0.0
        self._approx_delta = 0.0
        for event in events:
            self.add(event)

    @property
    def events(self) -> tuple[PrivacyEvent, ...]:
        return tuple(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def add(self, event: PrivacyEvent) -> None:
        """Record a release. Raises InvalidParameterError for a non-event."""
        if not isinstance(event, PrivacyEvent):
            raise InvalidParameterError(f"expected a PrivacyEvent, got {type(event).__name__}")
        self._events.append(event)
        if event.kind == "approx_dp":
            assert event.epsilon is not None and event.delta is not None
            self._approx_eps += event.epsilon
            self._approx_delta += event.delta
            return
        curve = np.asarray(rdp_vector(event))
        self._rdp_all += curve
        if event.kind == "laplace":
            assert event.epsilon is not None
            self._pure += event.epsilon
        else:
            self._rdp_rest += curve

    # ----------------------------------------------------------------- reporting
    def epsilon(self, delta: float, *, method: str = "pld") -> float:
        """Epsilon of the whole history at ``delta`` in [0, 1), by ``method`` (see module doc).

        Returns inf when no finite epsilon holds at that delta (e.g. delta <= the approx_dp
        deltas, or delta = 0 with any non-pure event). Raises InvalidParameterError for a bad
        delta or method.
        """
        delta = check_delta("delta", delta)
        if method not in METHODS:
            raise InvalidParameterError(f"method must be one of {METHODS}, got {method!r}")
        rest_delta = delta - self._approx_delta
        others = [e for e in self._events if e.kind != "approx_dp"]
        if self._approx_delta and rest_delta <= 0:
            return math.inf
        if not others:
            return self._approx_eps
        if all(e.kind == "laplace" for e in others):
            pure_sum = self._pure + self._approx_eps
            if rest_delta == 0:
                return pure_sum
        elif rest_delta == 0:
            return math.inf
        else:
            pure_sum = math.inf
        body = getattr(self, f"_epsilon_{method}")(others, rest_delta)
        return min(pure_sum, body + self._approx_eps)

    def _epsilon_pld(self, events: list[PrivacyEvent], delta: float) -> float:
        counts = Counter(events)
        interval = _discretisation(counts)
        total = None
        for event, count in counts.items():
            pld = _event_pld(event, interval)
            pld = pld.self_compose(count) if count > 1 else pld
            total = pld if total is None else total.compose(pld)
        assert total is not None
        tight = float(total.get_epsilon_for_delta(delta))
        # both are upper bounds; the RDP one wins only where discretisation error dominates
        return min(tight, self._epsilon_rdp(events, delta))

    def _epsilon_rdp(self, events: list[PrivacyEvent], delta: float) -> float:
        return self._rdp_bound(self._rdp_all, self._rdp_rest, self._pure, delta)

    def _epsilon_zcdp(self, events: list[PrivacyEvent], delta: float) -> float:
        rhos = [e.rho for e in events]
        if any(r is None for r in rhos):
            raise InvalidParameterError("zCDP accounting does not cover subsampled_gaussian events")
        rho = math.fsum(r for r in rhos if r is not None)
        return rho + 2 * math.sqrt(rho * math.log(1 / delta))

    def _epsilon_basic(self, events: list[PrivacyEvent], delta: float) -> float:
        counts = Counter(events)
        approx = [e for e in counts if e.kind != "laplace"]
        share = delta / sum(counts[e] for e in approx) if approx else 0.0
        total = math.fsum((e.epsilon or 0.0) * n for e, n in counts.items() if e.kind == "laplace")
        for event in approx:
            total += counts[event] * float(_event_pld(event).get_epsilon_for_delta(share))
        return total

    @staticmethod
    def _rdp_bound(rdp_all: np.ndarray, rdp_rest: np.ndarray, pure: float, delta: float) -> float:
        whole = epsilon_from_rdp(rdp_all, delta)
        split = pure + (epsilon_from_rdp(rdp_rest, delta) if rdp_rest.any() else 0.0)
        return min(whole, split)

    # ----------------------------------------------------------------- admission
    def can_afford(
        self, event: PrivacyEvent, *, epsilon_budget: float, delta_budget: float
    ) -> bool:
        """Whether history + ``event`` stays within (epsilon_budget, delta_budget).

        Uses the RDP bound (sound, a little looser than PLD, O(len(ORDERS)) time whatever the
        history length). ``epsilon_budget`` > 0, ``delta_budget`` in [0, 1).
        Raises InvalidParameterError for bad budgets or a non-event.
        """
        epsilon_budget = check_positive("epsilon_budget", epsilon_budget)
        delta_budget = check_delta("delta_budget", delta_budget)
        if not isinstance(event, PrivacyEvent):
            raise InvalidParameterError(f"expected a PrivacyEvent, got {type(event).__name__}")
        approx_eps, approx_delta = self._approx_eps, self._approx_delta
        rdp_all, rdp_rest, pure = self._rdp_all, self._rdp_rest, self._pure
        if event.kind == "approx_dp":
            assert event.epsilon is not None and event.delta is not None
            approx_eps += event.epsilon
            approx_delta += event.delta
        else:
            curve = np.asarray(rdp_vector(event))
            rdp_all = rdp_all + curve
            if event.kind == "laplace":
                assert event.epsilon is not None
                pure += event.epsilon
            else:
                rdp_rest = rdp_rest + curve
        rest_delta = delta_budget - approx_delta
        if rest_delta < 0 or (approx_delta and rest_delta == 0 and rdp_all.any()):
            return False
        if not rdp_rest.any():  # only pure events besides approx ones: basic composition
            return pure + approx_eps <= epsilon_budget
        if rest_delta == 0:
            return False
        return self._rdp_bound(rdp_all, rdp_rest, pure, rest_delta) + approx_eps <= epsilon_budget

    # ----------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state: the event history (the sums are recomputed on load)."""
        return {"version": _STATE_VERSION, "events": [e.to_dict() for e in self._events]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Accountant:
        """Inverse of :meth:`state_dict`; raises InvalidParameterError on a malformed state."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise InvalidParameterError(f"accountant state must have version {_STATE_VERSION}")
        events = state.get("events")
        if not isinstance(events, list):
            raise InvalidParameterError("accountant state needs an 'events' list")
        return cls(PrivacyEvent.from_dict(e) for e in events)
