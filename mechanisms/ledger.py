"""The privacy ledger: one policy over thin stores.

The ledger stores what was spent (privacy events and amounts) per principal, never queries.
Every release is charged before it happens: ``reserve`` admits an event only when the
analyst's budget *and* the corpus-wide cap still afford it, ``commit`` marks it released, and
``refund`` returns a reservation whose answer was never released. :meth:`Ledger.charging`
(and :meth:`Ledger.charge`, which reserves first) wraps the code that reads private data: the
reservation is committed whatever that code does, because once the data has been read,
*whether* the computation succeeded is itself an answer (PRIVACY.md, "The ledger").

Admission has one rule, :func:`mechanisms.spend.within` (through
:func:`mechanisms.budget.affordable`): each reserved or committed event adds its RDP curve (at
the accountant's fixed public orders) to a running vector, and the event is admitted when

    min(epsilon_from_rdp(rdp_total + rdp_event, delta), basic composition of pure epsilons)
        <= budget.epsilon + EPSILON_TOLERANCE

at the budget's delta (``approx_dp`` events added on top by basic composition). Both bounds
are sound, so their minimum is; the basic-composition term makes a handful of Laplace releases
cost exactly their epsilons, and the RDP term makes many Gaussian releases cost what tight
composition says. Because the vector is additive, admission is O(number of orders) and runs
inside one short store transaction. ``Accountant.can_afford`` uses the same rule.

``remaining`` also reports ``spent_epsilon_tight``: over the whole history, the PLD figure
where every event has a known dominating privacy loss distribution, else the admission bound
(see :meth:`mechanisms.accountant.Accountant.epsilon`). It is never used to admit, because it
is too slow to compute under a lock; it is always a valid upper bound.

The policy (this module's :class:`Ledger`) is written once. A store only opens transactions
and locks, reads, writes and inserts rows (:class:`LedgerStore`, :class:`LedgerTxn`):
``mechanisms.ledger_memory.MemoryStore`` (unit tests, one process) and
``service.store.ledger.SqlStore`` (SQLite or PostgreSQL, shared by every worker and host). Every
write transaction reads the analyst's row before the cap's, so two cannot deadlock.

Each entry has a scope: ``"analyst"`` (charged to the analyst's budget and the cap) or
``"corpus"`` (charged to the cap alone: training requested by an administrator).

A budget's delta is in (0, :data:`MAX_DELTA`]; see :class:`Budget`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mechanisms.budget import (
    MAX_DELTA,
    REPORT_DELTA,
    Budget,
    Quote,
    Remaining,
    affordable,
    check_budget_delta,
    exhausted,
    make_quote,
    make_remaining,
    raised,
)
from mechanisms.errors import InvalidParameterError
from mechanisms.events import PrivacyEvent
from mechanisms.ledger_repair import recompute
from mechanisms.ledger_store import ANALYST, CORPUS, LedgerEntry, LedgerStore, LedgerTxn
from mechanisms.spend import EPSILON_TOLERANCE, Spend

__all__ = [
    "Budget",
    "Spend",
    "Reservation",
    "LedgerEntry",
    "Remaining",
    "Quote",
    "Ledger",
    "LedgerStore",
    "LedgerTxn",
    "Charge",
    "Gated",
    "UnknownReservationError",
    "EPSILON_TOLERANCE",
    "MAX_DELTA",
    "REPORT_DELTA",
    "ANALYST",
    "CORPUS",
    "check_budget_delta",
]

log = logging.getLogger("privtext.ledger")

STATUSES = ("reserved", "committed", "refunded")
SCOPES = (ANALYST, CORPUS)


class UnknownReservationError(InvalidParameterError, KeyError):
    """A commit or refund named a reservation that does not exist or is no longer reserved."""


class Gated(Exception):  # noqa: N818 - not an error: the caller's gate decided
    """A reservation abandoned because the caller's gate returned ``outcome``."""

    def __init__(self, outcome: object) -> None:
        super().__init__("reservation gated")
        self.outcome = outcome


def now() -> datetime:
    return datetime.now(UTC)


def new_reservation_id() -> str:
    return f"rsv_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Reservation:
    id: str
    principal_id: str
    event: PrivacyEvent
    created_at: datetime
    #: The principal's figures right after this reservation (from the rows it locked); for an
    #: analyst's reservation, saves reading the budget again to report it.
    remaining: Remaining | None = field(default=None, compare=False, repr=False)
    scope: str = ANALYST


Gate = Callable[[LedgerTxn], object | None]


class Ledger:
    """Charge-before-release bookkeeping for every principal and the corpus-wide cap, over
    ``store``."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store

    # -- charging -----------------------------------------------------------------------

    def reserve(
        self,
        principal_id: str,
        event: PrivacyEvent,
        *,
        scope: str = ANALYST,
        gate: Gate | None = None,
    ) -> Reservation:
        """Atomically admit ``event`` against the principal's budget and the corpus cap
        (``scope="corpus"``: against the cap alone, for releases that are no analyst's, such
        as training requested by the administrator ``principal_id``; with no cap set the event
        is admitted and tracked). One write transaction; nothing is recorded on refusal.

        ``gate``, when given, runs first inside that transaction, with it, so that the
        caller's own checks and writes (the query path's rate count, claim and replay lookup)
        commit or roll back with the reservation. When it returns something other than None,
        the transaction is rolled back and :class:`Gated` carrying that value is raised.

        Raises BudgetExhaustedError (with the remaining figures) when either would be
        exceeded or the principal has no budget.
        """
        if scope not in SCOPES:
            raise InvalidParameterError(f"scope must be one of {SCOPES}")
        new = Spend.of(event)  # priced before the transaction: it stays short
        entry = LedgerEntry(
            new_reservation_id(), principal_id, event, "reserved", now(), None, scope
        )
        mine: Remaining | None = None
        budget: Budget | None = None
        spent = Spend()
        with self.store.write() as txn:
            if gate is not None:
                outcome = gate(txn)
                if outcome is not None:
                    raise Gated(outcome)
            # The analyst's row first (checked and written), the shared cap's row last, so
            # that the cap is held for as little as possible: its check, one write, the commit.
            if scope == ANALYST:
                budget, spent = txn.budget(principal_id)
                if not affordable(spent, new, budget):
                    raise exhausted("privacy budget exhausted", make_remaining(budget, spent))
                txn.put_spend(principal_id, spent + new)
            txn.add_entry(entry)
            cap, corpus = txn.cap()
            if cap is not None and not affordable(corpus, new, cap):
                rems = [make_remaining(cap, corpus)]
                if scope == ANALYST:
                    rems.insert(0, make_remaining(budget, spent))
                raise exhausted("the corpus-wide privacy cap is exhausted", *rems)
            txn.put_cap_spend(corpus + new)
        if scope == ANALYST:
            mine = make_remaining(budget, spent + new)
        return Reservation(entry.id, principal_id, event, entry.created_at, mine, scope)

    def reserve_corpus(self, principal_id: str, event: PrivacyEvent) -> Reservation:
        """``reserve(principal_id, event, scope="corpus")``."""
        return self.reserve(principal_id, event, scope=CORPUS)

    def settle(
        self,
        reservation_id: str,
        *,
        also: Callable[[LedgerTxn], object] | None = None,
        durable: bool = True,
    ) -> None:
        """Commit a reservation and run ``also`` (the caller's records) in the same
        transaction. Raises UnknownReservationError (rolling ``also`` back too) unless the
        reservation is still reserved. ``durable=False`` need not wait for the disk: losing
        the commit leaves the entry reserved, which is charged all the same."""
        with self.store.write(durable=durable) as txn:
            if not txn.settle_entry(reservation_id, "committed", now()):
                raise UnknownReservationError(f"no open reservation {reservation_id}")
            if also is not None:
                also(txn)

    def commit(self, reservation_id: str) -> None:
        """Mark a reservation released. Raises UnknownReservationError unless it is reserved."""
        self.settle(reservation_id)

    def refund(self, reservation_id: str) -> None:
        """Return a reservation whose answer was never released (only while reserved), and
        only when the private data was never read: once it was, use :meth:`charging`."""
        with self.store.write() as txn:
            entry = txn.entry(reservation_id)
            if entry is None or entry.status != "reserved":
                raise UnknownReservationError(f"no open reservation {reservation_id}")
            old = Spend.of(entry.event)
            if entry.scope == ANALYST:
                _, spent = txn.budget(entry.principal_id)
                txn.put_spend(entry.principal_id, spent - old)
            _, corpus = txn.cap()
            txn.put_cap_spend(corpus - old)
            if not txn.settle_entry(reservation_id, "refunded", now()):
                raise UnknownReservationError(f"no open reservation {reservation_id}")

    @contextmanager
    def charging(
        self,
        reservation: Reservation,
        *,
        also: Callable[[LedgerTxn, str], object] | None = None,
        durable: bool = True,
        unsettled: Callable[[], object] | None = None,
    ) -> Iterator[Charge]:
        """Run the block that reads private data for ``reservation``, and commit it whatever
        the block does: after a clean exit (outcome ``"released"``) or an exception
        (``"failed"``, re-raised after the commit). Never refunds.

        ``also(txn, outcome)`` writes the caller's records in the commit's transaction. The
        block may call :meth:`Charge.defer` to commit a clean exit later itself (the service
        commits after the response has been sent). The commit is best effort: when the store
        fails, the entry stays reserved (charged all the same), the error is logged, and
        ``unsettled`` is called.
        """
        charge = Charge(self, reservation, also, durable, unsettled)
        try:
            yield charge
        except BaseException:
            charge.settle("failed")
            raise
        if not charge.deferred:
            charge.settle("released")

    @contextmanager
    def charge(
        self, principal_id: str, event: PrivacyEvent, *, scope: str = ANALYST, **settle: Any
    ) -> Iterator[Charge]:
        """:meth:`reserve`, then :meth:`charging` (``settle``: its keyword arguments).
        Raises as ``reserve`` does before the block runs (nothing read, nothing charged)."""
        reservation = self.reserve(principal_id, event, scope=scope)
        with self.charging(reservation, **settle) as charge:
            yield charge

    # -- reading ------------------------------------------------------------------------

    def remaining(self, principal_id: str, *, tight: bool = True) -> Remaining:
        """The principal's budget figures; ``tight`` also computes the PLD figure."""
        with self.store.read() as txn:
            budget, spend = txn.budget(principal_id)
            counts = txn.counts(principal_id)
            live = txn.live_entries(principal_id) if tight else None
        return make_remaining(
            budget,
            spend,
            [e.event for e in live] if live is not None else None,
            reserved=counts.get("reserved", 0),
            committed=counts.get("committed", 0),
        )

    def history(self, principal_id: str, *, limit: int = 100, offset: int = 0) -> list[LedgerEntry]:
        """The principal's ledger entries, newest first."""
        with self.store.read() as txn:
            return txn.history(principal_id, limit, offset)

    def live_entries(self, principal_id: str | None = None) -> list[LedgerEntry]:
        """The reserved and committed entries (of one principal, or of everyone: what the
        corpus-wide cap counts), oldest first."""
        with self.store.read() as txn:
            return txn.live_entries(principal_id)

    def quote(self, principal_id: str, event: PrivacyEvent) -> Quote:
        """Price ``event`` for the principal without reserving (a dry run)."""
        new = Spend.of(event)
        with self.store.read() as txn:
            budget, spent = txn.budget(principal_id)
            cap, corpus = txn.cap()
        ok = affordable(spent, new, budget) and (cap is None or affordable(corpus, new, cap))
        return make_quote(budget, spent, new, ok)

    def corpus_cap(self) -> Budget | None:
        with self.store.read() as txn:
            return txn.cap()[0]

    def corpus_remaining(self, *, tight: bool = False) -> Remaining:
        with self.store.read() as txn:
            cap, corpus = txn.cap()
            live = txn.live_entries() if tight else None
        return make_remaining(cap, corpus, [e.event for e in live] if live is not None else None)

    # -- administration -----------------------------------------------------------------

    def get_budget(self, principal_id: str) -> Budget | None:
        with self.store.read() as txn:
            return txn.budget(principal_id)[0]

    def set_budget(self, principal_id: str, budget: Budget) -> Budget:
        with self.store.write() as txn:
            txn.budget(principal_id)  # locks the row first, like every write
            txn.put_budget(principal_id, budget)
        return budget

    def raise_budget(
        self, principal_id: str, *, epsilon: float = 0.0, delta: float = 0.0
    ) -> Budget:
        """Add ``epsilon`` and ``delta`` (both >= 0) to the current budget."""
        with self.store.write() as txn:
            budget = raised(txn.budget(principal_id)[0], epsilon, delta)
            txn.put_budget(principal_id, budget)
        return budget

    def set_corpus_cap(self, budget: Budget | None) -> None:
        """Set the corpus-wide cap; None removes it (spending is still tracked)."""
        with self.store.write() as txn:
            txn.cap()
            txn.put_cap(budget)

    def recompute_spends(self, *, apply: bool = False) -> list[dict[str, Any]]:
        """Recompute every stored spend from the live entries, and repair them with
        ``apply`` (``privtext ledger recompute``; see :func:`mechanisms.ledger_repair`)."""
        return recompute(self.store, apply=apply)


class Charge:
    """A reservation being spent by code that reads private data (see
    :meth:`Ledger.charging`)."""

    def __init__(
        self,
        ledger: Ledger,
        reservation: Reservation,
        also: Callable[[LedgerTxn, str], object] | None,
        durable: bool,
        unsettled: Callable[[], object] | None,
    ) -> None:
        self.ledger, self.reservation = ledger, reservation
        self._also, self._durable, self._unsettled = also, durable, unsettled
        self.deferred = False
        self.settled = False

    @property
    def id(self) -> str:
        return self.reservation.id

    def defer(self) -> Callable[[], None]:
        """Take over the commit of a clean exit; returns the call that makes it."""
        self.deferred = True
        return lambda: self.settle("released")

    def settle(self, outcome: str) -> None:
        """Commit the reservation (once), with the caller's records for ``outcome``."""
        if self.settled:
            return
        self.settled = True
        also = self._also

        def write(txn: LedgerTxn) -> None:
            if also is not None:
                also(txn, outcome)

        try:
            self.ledger.settle(self.id, also=write, durable=self._durable)
        except Exception:  # noqa: BLE001 - a reserved entry is charged already
            log.exception(
                "could not commit a %s charge (its reservation stays charged)",
                outcome,
                extra={"reservation_id": self.id},
            )
            if self._unsettled is not None:
                try:
                    self._unsettled()
                except Exception:  # noqa: BLE001 - best effort, logged
                    log.exception("could not clean up after an unsettled charge")
