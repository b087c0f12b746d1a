"""The privacy ledger: one small interface, the admission maths, and an in-memory backend.

The ledger stores what was spent (privacy events and amounts) per principal, never queries.
Every release is charged before it happens: ``reserve`` admits an event only when the
analyst's budget *and* the corpus-wide cap still afford it, ``commit`` marks it released, and
``refund`` returns a reservation whose answer was never released.

Admission uses Renyi DP: each reserved or committed event adds its RDP curve (at the
accountant's fixed public orders) to a running vector, and the event is admitted when

    min(epsilon_from_rdp(rdp_total + rdp_event, delta), basic composition of pure epsilons)
        <= budget.epsilon + EPSILON_TOLERANCE

at the budget's delta. Both bounds are sound, so their minimum is; the basic-composition term
makes a handful of Laplace releases cost exactly their epsilons, and the RDP term makes many
Gaussian releases cost what tight composition says. Because the vector is additive, admission
is O(number of orders) and can run inside one short database transaction. The tighter PLD figure
over the whole history is reported by ``remaining`` (``spent_epsilon_tight``) but never used to
admit, because it is too slow to compute under a lock.

Backends: ``mechanisms.ledger_memory.InMemoryLedger`` (unit tests, one process) and
``service.ledger.sql.SqlLedger`` (SQLite or PostgreSQL, shared by every worker and host).
"""

from __future__ import annotations

import abc
import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mechanisms.errors import (
    BudgetExhaustedError,
    InvalidParameterError,
    check_delta,
    check_positive,
)
from mechanisms.events import PrivacyEvent
from mechanisms.rdp import epsilon_from_rdp, rdp_vector

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
]

#: Absolute slack on the epsilon comparison so that float rounding in a sum of many small
#: charges (0.1 + 0.2 + ...) cannot refuse the last query that exactly fits.
EPSILON_TOLERANCE = 1e-9

STATUSES = ("reserved", "committed", "refunded")

#: The delta at which spending is reported when there is no budget to take it from.
REPORT_DELTA = 1e-6


class UnknownReservationError(InvalidParameterError, KeyError):
    """A commit or refund named a reservation that does not exist or is no longer reserved."""


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Budget:
    """An (epsilon, delta) budget as an administrator states it.

    ``epsilon`` in (0, inf), ``delta`` in [0, 1). Raises InvalidParameterError otherwise.
    """

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", check_positive("epsilon", self.epsilon))
        object.__setattr__(self, "delta", check_delta("delta", self.delta))

    def to_dict(self) -> dict[str, float]:
        return {"epsilon": self.epsilon, "delta": self.delta}


_CURVE_KINDS = ("laplace", "gaussian", "subsampled_gaussian")
_FIELDS = ("pure_epsilon", "curve_count", "approx_epsilon", "approx_delta")


def _rdp_entry(x: float, y: float, sign: int) -> float:
    """One order of ``x + sign * y``. A refund (sign -1) clamps at zero, so float residue
    never goes negative; but where either side is infinite (dp-accounting gives ``inf`` at
    orders where its series does not converge), the sum of the other events at that order is
    unknown: ``inf - inf`` would be NaN, which the clamp turned into 0, an order at which
    everything looked free (epsilon 0). Such an order keeps ``x``: conservative, never low."""
    if sign < 0 and (math.isinf(x) or math.isinf(y)):
        return x
    return max(0.0, x + sign * y)


@dataclass(frozen=True)
class Spend:
    """Additive summary of a set of privacy events (what the ledger stores per principal).

    ``rdp``: sum of the RDP curves (``rdp_vector``) of the events that have one;
    ``pure_epsilon``: sum of the Laplace events' epsilons (basic composition);
    ``curve_count``: how many events are not pure (Gaussian, subsampled Gaussian);
    ``approx_epsilon``/``approx_delta``: sums over ``approx_dp`` events, which have no curve
    and are added on top by basic composition; ``count``: number of events.
    """

    rdp: tuple[float, ...] = ()
    pure_epsilon: float = 0.0
    curve_count: int = 0
    approx_epsilon: float = 0.0
    approx_delta: float = 0.0
    count: int = 0

    @classmethod
    def of(cls, event: PrivacyEvent) -> Spend:
        if event.kind == "approx_dp":
            return cls(
                approx_epsilon=float(event.epsilon or 0.0),
                approx_delta=float(event.delta or 0.0),
                count=1,
            )
        if event.kind not in _CURVE_KINDS:
            raise InvalidParameterError(f"the ledger cannot price a {event.kind!r} event")
        pure = event.kind == "laplace"
        return cls(
            rdp=tuple(float(x) for x in rdp_vector(event)),
            pure_epsilon=float(event.epsilon or 0.0) if pure else 0.0,
            curve_count=0 if pure else 1,
            count=1,
        )

    def _combine(self, other: Spend, sign: int) -> Spend:
        a, b = list(self.rdp), list(other.rdp)
        n = max(len(a), len(b))
        a += [0.0] * (n - len(a))
        b += [0.0] * (n - len(b))
        rdp = tuple(_rdp_entry(x, y, sign) for x, y in zip(a, b, strict=True))
        sums = {f: max(0, getattr(self, f) + sign * getattr(other, f)) for f in _FIELDS}
        return Spend(rdp=rdp, count=max(0, self.count + sign * other.count), **sums)

    def __add__(self, other: Spend) -> Spend:
        return self._combine(other, +1)

    def __sub__(self, other: Spend) -> Spend:
        result = self._combine(other, -1)
        return Spend() if result.count == 0 else result

    def epsilon(self, delta: float) -> float:
        """A sound epsilon for everything in this spend at ``delta`` (0.0 when empty).

        The approx_dp events take ``approx_delta`` of ``delta`` and add ``approx_epsilon``;
        the rest is the smaller of basic composition (when all are pure) and the RDP
        conversion at the delta left. ``inf`` when ``delta`` cannot cover it.
        """
        if self.count == 0:
            return 0.0
        rest = delta - self.approx_delta
        if rest < 0:
            return math.inf
        curve = 0.0
        if self.curve_count or self.pure_epsilon:
            pure = self.pure_epsilon if self.curve_count == 0 else math.inf
            rdp = float(epsilon_from_rdp(list(self.rdp), rest)) if rest > 0 else math.inf
            curve = min(pure, rdp)
        return curve + self.approx_epsilon

    def to_dict(self) -> dict[str, Any]:
        return {
            "rdp": list(self.rdp),
            "count": self.count,
            **{f: getattr(self, f) for f in _FIELDS},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Spend:
        if not data:
            return cls()
        return cls(
            rdp=tuple(float(x) for x in data.get("rdp", ())),
            pure_epsilon=float(data.get("pure_epsilon", 0.0)),
            curve_count=int(data.get("curve_count", 0)),
            approx_epsilon=float(data.get("approx_epsilon", 0.0)),
            approx_delta=float(data.get("approx_delta", 0.0)),
            count=int(data.get("count", 0)),
        )


def affordable(spent: Spend, new: Spend, budget: Budget | None) -> bool:
    """True when ``spent + new`` stays within ``budget`` (False when there is no budget)."""
    if budget is None:
        return False
    return (spent + new).epsilon(budget.delta) <= budget.epsilon + EPSILON_TOLERANCE


@dataclass(frozen=True)
class Reservation:
    id: str
    principal_id: str
    event: PrivacyEvent
    created_at: datetime


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
    ``spent_epsilon_tight`` is the PLD accountant's figure over the same events (tighter, for
    reporting; None when not computed). ``remaining_epsilon`` = budget - admission bound.
    """

    budget: Budget | None
    spent_epsilon: float
    remaining_epsilon: float
    spent_epsilon_tight: float | None = None
    reserved: int = 0
    committed: int = 0
    delta: float = 0.0  # the delta every epsilon here is stated at

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
            "spent_epsilon_tight_accounting": "pld",
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
    """Build a :class:`Remaining`; ``events`` (when given) yields the tight PLD figure."""
    # Without a budget (the corpus before a cap is set) figures are stated at REPORT_DELTA.
    delta = budget.delta if budget else REPORT_DELTA
    spent = spend.epsilon(delta)
    tight: float | None = None
    if events is not None and budget is not None:
        evs = list(events)
        tight = 0.0 if not evs else _tight_epsilon(evs, budget.delta)
    left = max(0.0, budget.epsilon - spent) if budget else 0.0
    return Remaining(
        budget, spent, left, tight, reserved=reserved, committed=committed, delta=delta
    )


def _tight_epsilon(events: Sequence[PrivacyEvent], delta: float) -> float | None:
    try:
        from mechanisms.accountant import Accountant

        return float(Accountant(events).epsilon(delta, method="pld"))
    except Exception:  # noqa: BLE001 - the tight figure is informative, never load-bearing
        return None


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
    """``old`` raised by (epsilon, delta); both increments must be >= 0 and not both 0."""
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
