"""The privacy ledger: one small interface, the admission maths, and an in-memory backend.

The ledger stores what was spent (privacy events and amounts) per principal, never queries.
Every release is charged before it happens: ``reserve`` admits an event only when the
analyst's budget *and* the corpus-wide cap still afford it, ``commit`` marks it released, and
``refund`` returns a reservation whose answer was never released.

Admission has one rule, :func:`mechanisms.spend.within` (through :func:`affordable` here):
each reserved or committed event adds its RDP curve (at the accountant's fixed public orders)
to a running vector, and the event is admitted when

    min(epsilon_from_rdp(rdp_total + rdp_event, delta), basic composition of pure epsilons)
        <= budget.epsilon + EPSILON_TOLERANCE

at the budget's delta (``approx_dp`` events added on top by basic composition). Both bounds
are sound, so their minimum is; the basic-composition term makes a handful of Laplace releases
cost exactly their epsilons, and the RDP term makes many Gaussian releases cost what tight
composition says. Because the vector is additive, admission is O(number of orders) and can
run inside one short database transaction. ``Accountant.can_afford`` uses the same rule.

``remaining`` also reports ``spent_epsilon_tight``: over the whole history, the PLD figure
where every event has a known dominating privacy loss distribution, else the admission bound
(see :meth:`mechanisms.accountant.Accountant.epsilon`). It is never used to admit, because it
is too slow to compute under a lock; it is always a valid upper bound.

A budget's delta is in (0, :data:`MAX_DELTA`]; see :class:`Budget`.

Backends: ``mechanisms.ledger_memory.InMemoryLedger`` (unit tests, one process) and
``service.ledger.sql.SqlLedger`` (SQLite or PostgreSQL, shared by every worker and host).
"""

from __future__ import annotations

import abc
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
from mechanisms.spend import EPSILON_TOLERANCE, Spend, within

__all__ = [
    "Budget",
    "Spend",
    "Reservation",
    "LedgerEntry",
    "Remaining",
    "Quote",
    "Ledger",
    "UnknownReservationError",
    "EPSILON_TOLERANCE",
    "MAX_DELTA",
    "check_budget_delta",
]

STATUSES = ("reserved", "committed", "refunded")

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


class UnknownReservationError(InvalidParameterError, KeyError):
    """A commit or refund named a reservation that does not exist or is no longer reserved."""


def now() -> datetime:
    return datetime.now(UTC)


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
class Reservation:
    id: str
    principal_id: str
    event: PrivacyEvent
    created_at: datetime
    #: The principal's figures right after this reservation (from the rows it locked), when
    #: the backend computes them; saves reading the budget again to report it.
    remaining: Remaining | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class LedgerEntry:
    id: str
    principal_id: str
    event: PrivacyEvent
    status: str  # "reserved" | "committed" | "refunded"
    created_at: datetime
    settled_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "principal_id": self.principal_id,
            "event": self.event.to_dict(),
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "settled_at": self.settled_at.isoformat() if self.settled_at else None,
        }


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


class Ledger(abc.ABC):
    """Charge-before-release bookkeeping for every principal and the corpus-wide cap."""

    @abc.abstractmethod
    def reserve(self, principal_id: str, event: PrivacyEvent) -> Reservation:
        """Atomically admit ``event`` against the principal's budget and the corpus cap.

        Raises BudgetExhaustedError (with the remaining figures) when either would be exceeded
        or the principal has no budget; nothing is recorded then.
        """

    def reserve_corpus(self, principal_id: str, event: PrivacyEvent) -> Reservation:
        """Atomically admit ``event`` against the corpus-wide cap alone.

        For releases that are no analyst's (model training, requested by the administrator
        ``principal_id``, who is recorded on the entry but whose budget is not charged). With
        no cap set the event is admitted and tracked, like ``reserve``. ``commit`` and
        ``refund`` work as for ``reserve``. Raises BudgetExhaustedError when the cap cannot
        afford it; nothing is recorded then.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot reserve against the cap alone")

    @abc.abstractmethod
    def commit(self, reservation_id: str) -> None:
        """Mark a reservation released. Raises UnknownReservationError unless it is reserved."""

    @abc.abstractmethod
    def refund(self, reservation_id: str) -> None:
        """Return a reservation whose answer was never released (only while reserved)."""

    @abc.abstractmethod
    def remaining(self, principal_id: str, *, tight: bool = True) -> Remaining:
        """The principal's budget figures; ``tight`` also computes the PLD figure."""

    @abc.abstractmethod
    def history(self, principal_id: str, *, limit: int = 100, offset: int = 0) -> list[LedgerEntry]:
        """The principal's ledger entries, newest first."""

    @abc.abstractmethod
    def quote(self, principal_id: str, event: PrivacyEvent) -> Quote:
        """Price ``event`` for the principal without reserving (a dry run)."""

    @abc.abstractmethod
    def get_budget(self, principal_id: str) -> Budget | None: ...

    @abc.abstractmethod
    def set_budget(self, principal_id: str, budget: Budget) -> Budget: ...

    @abc.abstractmethod
    def raise_budget(
        self, principal_id: str, *, epsilon: float = 0.0, delta: float = 0.0
    ) -> Budget:
        """Add ``epsilon`` and ``delta`` (both >= 0) to the current budget."""

    @abc.abstractmethod
    def corpus_cap(self) -> Budget | None: ...

    @abc.abstractmethod
    def set_corpus_cap(self, budget: Budget | None) -> None:
        """Set the corpus-wide cap; None removes it (spending is still tracked)."""

    @abc.abstractmethod
    def corpus_remaining(self, *, tight: bool = False) -> Remaining: ...


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


def new_reservation_id() -> str:
    return f"rsv_{uuid.uuid4().hex}"


#: Reservations made by ``reserve_corpus`` (charged to the corpus-wide cap only) carry this
#: prefix, so that ``refund`` knows there is no analyst budget to give back.
CORPUS_RESERVATION_PREFIX = "rsvc_"


def new_corpus_reservation_id() -> str:
    return f"{CORPUS_RESERVATION_PREFIX}{uuid.uuid4().hex}"


def is_corpus_reservation(reservation_id: str) -> bool:
    return reservation_id.startswith(CORPUS_RESERVATION_PREFIX)


def make_quote(budget: Budget | None, spent: Spend, new: Spend, ok: bool) -> Quote:
    delta = budget.delta if budget else REPORT_DELTA
    before = spent.epsilon(delta)
    return Quote(
        epsilon=new.epsilon(delta),
        marginal_epsilon=max(0.0, (spent + new).epsilon(delta) - before),
        affordable=ok,
        remaining=make_remaining(budget, spent),
    )
