"""Budgets and what is left of them: the figures every ledger reports, and its one admission
rule (:func:`affordable`, through :func:`mechanisms.spend.within`).

A :class:`Budget` is an (epsilon, delta) an administrator grants an analyst, or the corpus-wide
cap; :class:`Remaining` states what was spent against it (the admission bound, and the tight
figure for reporting); :class:`Quote` prices one event without reserving it. The ledger
(:mod:`mechanisms.ledger`) keeps the running spends and decides with these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mechanisms.accountant import Accountant
from mechanisms.errors import (
    BudgetExhaustedError,
    InvalidParameterError,
    check_delta,
    check_finite,
    check_positive,
)
from mechanisms.events import PrivacyEvent
from mechanisms.spend import Spend, within

__all__ = [
    "Budget",
    "Remaining",
    "Quote",
    "MAX_DELTA",
    "REPORT_DELTA",
    "affordable",
    "check_budget_delta",
    "exhausted",
    "make_quote",
    "make_remaining",
    "raised",
]

#: The delta at which spending is reported when there is no budget to take it from.
REPORT_DELTA = 1e-6

#: The largest delta a budget or the corpus-wide cap may have (queries have the same limit).
#: Delta is the probability that the epsilon guarantee fails outright: above 1e-3 it means
#: little, and a large one makes the RDP conversion read real spending as epsilon 0 (at delta
#: 0.5 past spending read as 0 and more queries were admitted).
MAX_DELTA = 1e-3


def check_budget_delta(name: str, value: object) -> float:
    """Return ``value`` as a float in (0, MAX_DELTA]; raise InvalidParameterError otherwise.

    Zero is refused too: an (epsilon, 0) budget can pay for no Gaussian release and no key
    discovery, and its spent epsilon at delta 0 is infinite once anything but Laplace events
    is charged to the corpus.
    """
    result = check_finite(name, value)
    if not 0 < result <= MAX_DELTA:
        raise InvalidParameterError(f"{name} must be in (0, {MAX_DELTA:g}], got {result}")
    return result


@dataclass(frozen=True)
class Budget:
    """An (epsilon, delta) budget as an administrator states it.

    ``epsilon`` in (0, inf), ``delta`` in (0, MAX_DELTA] (1e-3). Raises InvalidParameterError
    otherwise. Budgets read back from a store go through :meth:`stored`.
    """

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", check_positive("epsilon", self.epsilon))
        object.__setattr__(self, "delta", check_budget_delta("delta", self.delta))

    @classmethod
    def stored(cls, epsilon: float, delta: float) -> Budget:
        """A budget as a store holds it, which may predate the delta limit.

        A delta above MAX_DELTA is read as MAX_DELTA (stricter than stored, so never admits
        more); a delta of 0 (a pure-epsilon budget, once allowed) stays 0, which admission
        handles soundly (only Laplace releases fit). Setting or raising such a budget again
        goes through the normal checks. Raises InvalidParameterError for values that were
        never valid (epsilon <= 0, delta outside [0, 1), non-finite).
        """
        budget = object.__new__(cls)
        object.__setattr__(budget, "epsilon", check_positive("epsilon", epsilon))
        object.__setattr__(budget, "delta", min(check_delta("delta", delta), MAX_DELTA))
        return budget

    def to_dict(self) -> dict[str, float]:
        return {"epsilon": self.epsilon, "delta": self.delta}


def affordable(spent: Spend, new: Spend, budget: Budget | None) -> bool:
    """True when ``spent + new`` stays within ``budget`` (False when there is no budget).

    The one admission rule (:func:`mechanisms.spend.within`), for both backends and quotes.
    """
    if budget is None:
        return False
    return within(spent + new, budget.epsilon, budget.delta)


@dataclass(frozen=True)
class Remaining:
    """Budget figures for one principal (or the corpus), all at ``delta`` (the budget's).

    ``spent_epsilon`` is the admission bound (min of RDP conversion and basic composition of
    pure epsilons) over reserved and committed events: what admission compares with the budget.
    ``spent_epsilon_tight`` is the accountant's tightest valid figure over the same events (for
    reporting; None when not computed), and ``tight_accounting`` says how it was computed:
    ``"pld"`` (privacy loss distributions, or RDP where smaller) when every event has a known
    dominating PLD, else ``"rdp+basic (admission bound)"``: a discrete Gaussian event records
    only its noise-to-sensitivity ratio, and no PLD of that ratio alone bounds every discrete
    Gaussian with it (see :mod:`mechanisms.accountant`). ``remaining_epsilon`` = budget -
    admission bound. ``spent_epsilon`` is infinite when no finite epsilon holds at ``delta``
    (a stored budget of delta 0 with a Gaussian event): JSON writes it as null.
    """

    budget: Budget | None
    spent_epsilon: float
    remaining_epsilon: float
    spent_epsilon_tight: float | None = None
    reserved: int = 0
    committed: int = 0
    delta: float = 0.0  # the delta every epsilon here is stated at
    tight_accounting: str | None = None

    @property
    def remaining_delta(self) -> float:
        return self.budget.delta if self.budget is not None else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget.to_dict() if self.budget else None,
            "delta": self.delta,
            "spent_epsilon": self.spent_epsilon,
            "spent_epsilon_accounting": "rdp+basic (admission bound)",
            "spent_epsilon_tight": self.spent_epsilon_tight,
            "spent_epsilon_tight_accounting": self.tight_accounting,
            "remaining_epsilon": self.remaining_epsilon,
            "reserved": self.reserved,
            "committed": self.committed,
        }


@dataclass(frozen=True)
class Quote:
    """The price of one event for one principal, without reserving anything."""

    epsilon: float  # the event alone, at the analyst's delta (admission bound)
    marginal_epsilon: float  # how much the analyst's spent admission bound would grow
    affordable: bool  # both the analyst's budget and the corpus cap afford it now
    remaining: Remaining = field(repr=False)


def make_remaining(
    budget: Budget | None,
    spend: Spend,
    events: Iterable[PrivacyEvent] | None = None,
    *,
    reserved: int = 0,
    committed: int = 0,
) -> Remaining:
    """Build a :class:`Remaining`; ``events`` (when given) yields the tight figure."""
    # Without a budget (the corpus before a cap is set) figures are stated at REPORT_DELTA.
    delta = budget.delta if budget else REPORT_DELTA
    spent = spend.epsilon(delta)
    tight: float | None = None
    method: str | None = None
    if events is not None and budget is not None:
        tight, method = _tight_epsilon(list(events), budget.delta)
    left = max(0.0, budget.epsilon - spent) if budget else 0.0
    return Remaining(
        budget,
        spent,
        left,
        tight,
        reserved=reserved,
        committed=committed,
        delta=delta,
        tight_accounting=method,
    )


def _tight_epsilon(events: list[PrivacyEvent], delta: float) -> tuple[float | None, str | None]:
    """The tightest valid epsilon of ``events`` at ``delta``, and how it was computed."""
    try:
        accountant = Accountant(events)
        method = "pld" if accountant.pld_dominated else "rdp+basic (admission bound)"
        return float(accountant.epsilon(delta, method="pld")), method
    except Exception:  # noqa: BLE001 - the tight figure is informative, never load-bearing
        return None, None


def exhausted(message: str, *rems: Remaining) -> BudgetExhaustedError:
    """A BudgetExhaustedError carrying the smallest remaining epsilon of ``rems``."""
    known = [r for r in rems if r.budget is not None]
    left = min((r.remaining_epsilon for r in known), default=0.0)
    delta = known[0].remaining_delta if known else 0.0
    return BudgetExhaustedError(message, remaining_epsilon=left, remaining_delta=delta)


def raised(old: Budget | None, epsilon: float, delta: float) -> Budget:
    """``old`` raised by (epsilon, delta); both increments must be >= 0 and not both 0.

    The result is a :class:`Budget`, so its delta must end in (0, MAX_DELTA]: a first raise
    needs a delta, and a raise past MAX_DELTA raises InvalidParameterError.
    """
    for name, value in (("epsilon", epsilon), ("delta", delta)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise InvalidParameterError(f"{name} increment must be a finite number >= 0")
    if epsilon == 0 and delta == 0:
        raise InvalidParameterError("a raise must increase epsilon or delta")
    base = old or Budget(epsilon=epsilon, delta=delta)
    if old is None:
        return base
    return Budget(epsilon=old.epsilon + epsilon, delta=old.delta + delta)


def make_quote(budget: Budget | None, spent: Spend, new: Spend, ok: bool) -> Quote:
    delta = budget.delta if budget else REPORT_DELTA
    before = spent.epsilon(delta)
    return Quote(
        epsilon=new.epsilon(delta),
        marginal_epsilon=max(0.0, (spent + new).epsilon(delta) - before),
        affordable=ok,
        remaining=make_remaining(budget, spent),
    )
