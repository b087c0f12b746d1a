"""An in-memory ledger store for unit tests.

It holds state in one process's memory: N gunicorn workers would each have their own copy, so
the service never uses it (``service.store.ledger.SqlStore`` is the real store). A transaction
holds one lock for its whole life and applies its writes only when it ends cleanly, so a
refusal or an exception leaves nothing behind, as a database rollback would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from mechanisms.budget import Budget
from mechanisms.ledger import Ledger, LedgerEntry
from mechanisms.spend import Spend

__all__ = ["InMemoryLedger", "MemoryStore"]


class _Txn:
    """Reads see the store plus this transaction's own writes; writes wait for ``apply``."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.budgets: dict[str, Budget] = {}
        self.spends: dict[str, Spend] = {}
        self.cap_budget: tuple[Budget | None] | None = None
        self.corpus: Spend | None = None
        self.entries: dict[str, LedgerEntry] = {}

    def budget(self, principal_id: str) -> tuple[Budget | None, Spend]:
        s = self.store
        budget = self.budgets.get(principal_id, s.budgets.get(principal_id))
        return budget, self.spends.get(principal_id, s.spends.get(principal_id, Spend()))

    def put_spend(self, principal_id: str, spend: Spend) -> None:
        self.spends[principal_id] = spend

    def put_budget(self, principal_id: str, budget: Budget) -> None:
        self.budgets[principal_id] = budget

    def cap(self) -> tuple[Budget | None, Spend]:
        cap = self.cap_budget[0] if self.cap_budget is not None else self.store.cap
        return cap, self.corpus if self.corpus is not None else self.store.corpus

    def put_cap_spend(self, spend: Spend) -> None:
        self.corpus = spend

    def put_cap(self, budget: Budget | None) -> None:
        self.cap_budget = (budget,)

    def add_entry(self, entry: LedgerEntry) -> None:
        self.entries[entry.id] = entry

    def entry(self, reservation_id: str) -> LedgerEntry | None:
        return self.entries.get(reservation_id, self.store.entries.get(reservation_id))

    def settle_entry(self, reservation_id: str, status: str, at: datetime) -> bool:
        e = self.entry(reservation_id)
        if e is None or e.status != "reserved":
            return False
        self.entries[reservation_id] = LedgerEntry(
            e.id, e.principal_id, e.event, status, e.created_at, at, e.scope
        )
        return True

    def _all_entries(self) -> list[LedgerEntry]:
        merged = {**self.store.entries, **self.entries}
        return list(merged.values())  # insertion order: oldest first

    def budget_rows(self) -> list[tuple[str, Budget | None, Spend]]:
        ids = sorted({*self.store.budgets, *self.budgets})
        return [(pid, *self.budget(pid)) for pid in ids]

    def live_entries(self, principal_id: str | None = None) -> list[LedgerEntry]:
        return [
            e
            for e in self._all_entries()
            if e.status != "refunded" and principal_id in (None, e.principal_id)
        ]

    def counts(self, principal_id: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self._all_entries():
            if e.principal_id == principal_id:
                out[e.status] = out.get(e.status, 0) + 1
        return out

    def history(self, principal_id: str, limit: int, offset: int) -> list[LedgerEntry]:
        mine = [e for e in self._all_entries() if e.principal_id == principal_id]
        mine.reverse()
        return mine[offset : offset + limit]

    def apply(self) -> None:
        s = self.store
        s.budgets.update(self.budgets)
        s.spends.update(self.spends)
        if self.cap_budget is not None:
            s.cap = self.cap_budget[0]
        if self.corpus is not None:
            s.corpus = self.corpus
        s.entries.update(self.entries)


class MemoryStore:
    """Budgets, spends, the cap and the entries in dicts, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.budgets: dict[str, Budget] = {}
        self.spends: dict[str, Spend] = {}
        self.cap: Budget | None = None
        self.corpus = Spend()
        self.entries: dict[str, LedgerEntry] = {}

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[_Txn]:
        with self._lock:
            txn = _Txn(self)
            yield txn
            txn.apply()

    @contextmanager
    def read(self) -> Iterator[_Txn]:
        with self._lock:
            yield _Txn(self)


class InMemoryLedger(Ledger):
    """The ledger over a :class:`MemoryStore` (tests only: workers would each have their own)."""

    def __init__(self) -> None:
        super().__init__(MemoryStore())
