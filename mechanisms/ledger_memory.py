"""An in-memory :class:`~mechanisms.ledger.Ledger` for unit tests.

It holds state in one process's memory: N gunicorn workers would each have their own copy, so
the service never uses it (``service.ledger.SqlLedger`` is the real backend).
"""

from __future__ import annotations

import threading

from mechanisms.events import PrivacyEvent
from mechanisms.ledger import (
    Budget,
    Ledger,
    LedgerEntry,
    Quote,
    Remaining,
    Reservation,
    Spend,
    UnknownReservationError,
    affordable,
    exhausted,
    is_corpus_reservation,
    make_quote,
    make_remaining,
    new_corpus_reservation_id,
    new_reservation_id,
    now,
    raised,
)

__all__ = ["InMemoryLedger"]


class InMemoryLedger(Ledger):
    """A ledger in one process's memory (tests only: workers would each have their own)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._budgets: dict[str, Budget] = {}
        self._spend: dict[str, Spend] = {}
        self._cap: Budget | None = None
        self._corpus = Spend()
        self._entries: dict[str, LedgerEntry] = {}

    def reserve(self, principal_id: str, event: PrivacyEvent) -> Reservation:
        new = Spend.of(event)
        with self._lock:
            budget = self._budgets.get(principal_id)
            spent = self._spend.get(principal_id, Spend())
            if not affordable(spent, new, budget):
                raise exhausted("privacy budget exhausted", make_remaining(budget, spent))
            if self._cap is not None and not affordable(self._corpus, new, self._cap):
                raise exhausted(
                    "the corpus-wide privacy cap is exhausted",
                    make_remaining(budget, spent),
                    make_remaining(self._cap, self._corpus),
                )
            self._spend[principal_id] = spent + new
            self._corpus = self._corpus + new
            rid = new_reservation_id()
            entry = LedgerEntry(rid, principal_id, event, "reserved", now())
            self._entries[rid] = entry
        return Reservation(rid, principal_id, event, entry.created_at)

    def reserve_corpus(self, principal_id: str, event: PrivacyEvent) -> Reservation:
        new = Spend.of(event)
        with self._lock:
            if self._cap is not None and not affordable(self._corpus, new, self._cap):
                raise exhausted(
                    "the corpus-wide privacy cap is exhausted",
                    make_remaining(self._cap, self._corpus),
                )
            self._corpus = self._corpus + new
            rid = new_corpus_reservation_id()
            entry = LedgerEntry(rid, principal_id, event, "reserved", now())
            self._entries[rid] = entry
        return Reservation(rid, principal_id, event, entry.created_at)

    def _settle(self, reservation_id: str, status: str) -> None:
        with self._lock:
            entry = self._entries.get(reservation_id)
            if entry is None or entry.status != "reserved":
                raise UnknownReservationError(f"no open reservation {reservation_id}")
            if status == "refunded":
                new = Spend.of(entry.event)
                if not is_corpus_reservation(reservation_id):
                    self._spend[entry.principal_id] = self._spend[entry.principal_id] - new
                self._corpus = self._corpus - new
            self._entries[reservation_id] = LedgerEntry(
                entry.id, entry.principal_id, entry.event, status, entry.created_at, now()
            )

    def commit(self, reservation_id: str) -> None:
        self._settle(reservation_id, "committed")

    def refund(self, reservation_id: str) -> None:
        self._settle(reservation_id, "refunded")

    def _live(self, principal_id: str | None) -> list[LedgerEntry]:
        return [
            e
            for e in self._entries.values()
            if e.status != "refunded" and (principal_id is None or e.principal_id == principal_id)
        ]

    def remaining(self, principal_id: str, *, tight: bool = True) -> Remaining:
        with self._lock:
            live = self._live(principal_id)
            spend = self._spend.get(principal_id, Spend())
            budget = self._budgets.get(principal_id)
        return make_remaining(
            budget,
            spend,
            [e.event for e in live] if tight else None,
            reserved=sum(e.status == "reserved" for e in live),
            committed=sum(e.status == "committed" for e in live),
        )

    def history(self, principal_id: str, *, limit: int = 100, offset: int = 0) -> list[LedgerEntry]:
        with self._lock:
            mine = [e for e in self._entries.values() if e.principal_id == principal_id]
        mine.reverse()
        return mine[offset : offset + limit]

    def quote(self, principal_id: str, event: PrivacyEvent) -> Quote:
        new = Spend.of(event)
        with self._lock:
            budget = self._budgets.get(principal_id)
            spent = self._spend.get(principal_id, Spend())
            ok = affordable(spent, new, budget) and (
                self._cap is None or affordable(self._corpus, new, self._cap)
            )
        return make_quote(budget, spent, new, ok)

    def get_budget(self, principal_id: str) -> Budget | None:
        return self._budgets.get(principal_id)

    def set_budget(self, principal_id: str, budget: Budget) -> Budget:
        with self._lock:
            self._budgets[principal_id] = budget
        return budget

    def raise_budget(
        self, principal_id: str, *, epsilon: float = 0.0, delta: float = 0.0
    ) -> Budget:
        with self._lock:
            budget = raised(self._budgets.get(principal_id), epsilon, delta)
            self._budgets[principal_id] = budget
        return budget

    def corpus_cap(self) -> Budget | None:
        return self._cap

    def set_corpus_cap(self, budget: Budget | None) -> None:
        with self._lock:
            self._cap = budget

    def corpus_remaining(self, *, tight: bool = False) -> Remaining:
        with self._lock:
            events = [e.event for e in self._live(None)] if tight else None
            return make_remaining(self._cap, self._corpus, events)
