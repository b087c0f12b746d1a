"""Composition of privacy events: tight PLD figures for reporting, fast RDP bounds for admission.

Which guarantee each figure is (all are sound upper bounds on epsilon at the given delta):

- ``epsilon(delta, method="rdp")``: the ledger's admission bound, :meth:`Spend.epsilon
  <mechanisms.spend.Spend.epsilon>`: Renyi DP at :data:`~mechanisms.rdp.ORDERS` converted with
  dp-accounting's conversion, or basic composition when every event is pure and that is less.
  :meth:`Accountant.can_afford` admits with the same rule (:func:`mechanisms.spend.within`).
- ``"pld"`` (the default, the "tight" figure): privacy loss distributions from Google's
  dp-accounting, pessimistic discretisation on a 1e-3 grid (1e-4 when a small Laplace epsilon
  is off that grid), never more than the RDP figure. Only where every event has a known
  *dominating* PLD, one that bounds every mechanism the event can stand for:

  * Laplace events: the worst-case pure-DP loss (randomized response), which bounds any pure
    epsilon-DP release;
  * subsampled Gaussian events (DP-SGD, continuous noise): the Poisson-subsampled Gaussian PLD.

  A discrete Gaussian event records only sigma / L2 sensitivity (``noise_multiplier``), and
  no PLD of that ratio alone bounds every discrete Gaussian with it: the loss of a discrete
  Gaussian depends on sigma and the integer shift, not on their ratio. At noise multiplier 1
  and delta 1e-6 the unit-sensitivity discrete Gaussian PLD says 4.50, the continuous Gaussian
  4.89, and the discrete Gaussian with sigma 2 and sensitivity 2 is at 4.92 (so neither model
  is a bound). Its RDP curve, rho = 1 / (2 noise_multiplier**2) zCDP, is proven for any integer
  shift within the sensitivity and any dimension (Canonne, Kamath, Steinke 2020). So a history
  with a discrete Gaussian event reports the RDP figure as its tight figure
  (:attr:`Accountant.pld_dominated` is False).
- ``"zcdp"``: sum of rho, then ``rho + 2 sqrt(rho ln(1/delta))`` (Bun, Steinke 2016).
- ``"basic"``: sum of epsilons, each non-pure event charged its single-release epsilon (RDP
  conversion for a discrete Gaussian, PLD for a subsampled Gaussian) at an equal share of delta.

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
from .spend import Spend, within

__all__ = ["Accountant", "PrivacyEvent", "rdp_vector", "epsilon_from_rdp", "ORDERS", "METHODS"]

METHODS = ("pld", "rdp", "zcdp", "basic")
PLD_DISCRETISATION = 1e-3  # value_discretization_interval; pessimistic, so still an upper bound
_STATE_VERSION = 1

#: Event kinds with a known dominating PLD (see the module docstring).
PLD_KINDS = ("laplace", "subsampled_gaussian")


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
    """A dominating PLD of one event; InvalidParameterError for kinds without one."""
    if event.kind == "laplace":
        params = DifferentialPrivacyParameters(event.epsilon, 0.0)
        return _pld.from_privacy_parameters(params, value_discretization_interval=interval)
    if event.kind == "subsampled_gaussian":
        once = _pld.from_gaussian_mechanism(
            event.noise_multiplier,
            sampling_prob=event.sampling_rate,
            value_discretization_interval=interval,
        )
        return once.self_compose(event.steps) if event.steps and event.steps > 1 else once
    raise InvalidParameterError(f"no dominating PLD is known for {event.kind} events")


class Accountant:
    """A history of privacy events and what it costs under composition.

    Not thread-safe; the ledger, not this class, is the source of truth for budgets.
    """

    def __init__(self, events: Iterable[PrivacyEvent] = ()) -> None:
        self._events: list[PrivacyEvent] = []
        self._rdp = np.zeros(len(ORDERS))  # summed curves of the non-approx events
        self._pure = 0.0
        self._curves = 0  # non-pure events with a curve (Gaussian, subsampled Gaussian)
        self._gaussians = 0  # discrete Gaussian events (no dominating PLD)
        self._approx = 0  # approx_dp events (no curve)
        self._approx_eps = 0.0
        self._approx_delta = 0.0
        for event in events:
            self.add(event)

    @property
    def events(self) -> tuple[PrivacyEvent, ...]:
        return tuple(self._events)

    def __len__(self) -> int:
        return len(self._events)

    @property
    def pld_dominated(self) -> bool:
        """Whether every event has a known dominating PLD, so ``method="pld"`` uses PLDs."""
        return self._gaussians == 0

    def add(self, event: PrivacyEvent) -> None:
        """Record a release. Raises InvalidParameterError for a non-event."""
        if not isinstance(event, PrivacyEvent):
            raise InvalidParameterError(f"expected a PrivacyEvent, got {type(event).__name__}")
        if event.kind == "approx_dp":
            assert event.epsilon is not None and event.delta is not None
            self._events.append(event)
            self._approx += 1
            self._approx_eps += event.epsilon
            self._approx_delta += event.delta
            return
        curve = np.asarray(rdp_vector(event))
        self._events.append(event)
        self._rdp += curve
        if event.kind == "laplace":
            assert event.epsilon is not None
            self._pure += event.epsilon
        else:
            self._curves += 1
            self._gaussians += event.kind == "gaussian"

    def spend(self) -> Spend:
        """The history as the ledger stores it (equal to summing ``Spend.of`` of each event)."""
        if not self._events:
            return Spend()
        curves = len(self._events) > self._approx
        return Spend(
            rdp=tuple(float(x) for x in self._rdp) if curves else (),
            pure_epsilon=self._pure,
            curve_count=self._curves,
            approx_epsilon=self._approx_eps,
            approx_delta=self._approx_delta,
            count=len(self._events),
        )

    # ----------------------------------------------------------------- reporting
    def epsilon(self, delta: float, *, method: str = "pld") -> float:
        """Epsilon of the whole history at ``delta`` in [0, 1), by ``method`` (see module doc).

        Returns inf when no finite epsilon holds at that delta (e.g. delta < the approx_dp
        deltas, or no delta left for a non-pure event). Raises InvalidParameterError for a bad
        delta or method.
        """
        delta = check_delta("delta", delta)
        if method not in METHODS:
            raise InvalidParameterError(f"method must be one of {METHODS}, got {method!r}")
        if method == "rdp":
            return self.spend().epsilon(delta)
        rest_delta = delta - self._approx_delta
        others = [e for e in self._events if e.kind != "approx_dp"]
        if rest_delta < 0:
            return math.inf
        if not others:
            return self._approx_eps
        pure_only = self._curves == 0
        if rest_delta == 0:
            return self._pure + self._approx_eps if pure_only else math.inf
        body = getattr(self, f"_epsilon_{method}")(others, rest_delta)
        if pure_only:
            body = min(body, self._pure)
        return float(body) + self._approx_eps

    def _admission(self, events: list[PrivacyEvent], delta: float) -> float:
        """The admission bound of the non-approx ``events`` (this history's) at ``delta``."""
        spend = Spend(
            rdp=tuple(float(x) for x in self._rdp),
            pure_epsilon=self._pure,
            curve_count=self._curves,
            count=len(events),
        )
        return spend.epsilon(delta)

    def _epsilon_pld(self, events: list[PrivacyEvent], delta: float) -> float:
        admission = self._admission(events, delta)
        if not self.pld_dominated:
            return admission
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
        return min(tight, admission)

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
            if event.kind == "gaussian":
                single = epsilon_from_rdp(rdp_vector(event), share)
            else:
                single = float(_event_pld(event).get_epsilon_for_delta(share))
            total += counts[event] * single
        return total

    # ----------------------------------------------------------------- admission
    def can_afford(
        self, event: PrivacyEvent, *, epsilon_budget: float, delta_budget: float
    ) -> bool:
        """Whether history + ``event`` stays within (epsilon_budget, delta_budget).

        The ledger's one admission rule (:func:`mechanisms.spend.within` on the history's
        :class:`~mechanisms.spend.Spend` plus the event's): sound, a little looser than PLD,
        O(len(ORDERS)) time whatever the history length. ``epsilon_budget`` > 0,
        ``delta_budget`` in [0, 1). Raises InvalidParameterError for bad budgets or a non-event.
        """
        epsilon_budget = check_positive("epsilon_budget", epsilon_budget)
        delta_budget = check_delta("delta_budget", delta_budget)
        if not isinstance(event, PrivacyEvent):
            raise InvalidParameterError(f"expected a PrivacyEvent, got {type(event).__name__}")
        return within(self.spend() + Spend.of(event), epsilon_budget, delta_budget)

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
