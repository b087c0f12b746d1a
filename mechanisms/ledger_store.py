"""What a ledger store provides: transactions that lock, read, write and insert rows.

The policy (admission, refunds, charging) is :class:`mechanisms.ledger.Ledger`'s, written once;
a store (``mechanisms.ledger_memory.MemoryStore``, ``service.store.ledger.SqlStore``) implements
these two protocols and decides nothing.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from mechanisms.budget import Budget
from mechanisms.events import PrivacyEvent
from mechanisms.spend import Spend

__all__ = ["ANALYST", "CORPUS", "LedgerEntry", "LedgerStore", "LedgerTxn"]

#: The scope of an entry: charged to the analyst's budget and the cap, or to the cap alone.
ANALYST, CORPUS = "analyst", "corpus"


@dataclass(frozen=True)
class LedgerEntry:
    id: str
    principal_id: str
    event: PrivacyEvent
    status: str  # "reserved" | "committed" | "refunded"
    created_at: datetime
    settled_at: datetime | None = None
    scope: str = ANALYST

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "principal_id": self.principal_id,
            "event": self.event.to_dict(),
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "settled_at": self.settled_at.isoformat() if self.settled_at else None,
        }


class LedgerTxn(Protocol):
    """One transaction of a store. In a write transaction, reading a budget or the cap locks
    its row until the transaction ends (SQLite holds the database write lock throughout)."""

    def budget(self, principal_id: str) -> tuple[Budget | None, Spend]:
        """The principal's budget (None: none set) and running spend."""

    def put_spend(self, principal_id: str, spend: Spend) -> None:
        """Store the principal's running spend (the budget row exists)."""

    def put_budget(self, principal_id: str, budget: Budget) -> None:
        """Set the principal's budget, creating the row (spend empty) when there is none."""

    def cap(self) -> tuple[Budget | None, Spend]:
        """The corpus-wide cap (None: none set) and the corpus's running spend."""

    def put_cap_spend(self, spend: Spend) -> None: ...

    def put_cap(self, budget: Budget | None) -> None: ...

    def add_entry(self, entry: LedgerEntry) -> None: ...

    def entry(self, reservation_id: str) -> LedgerEntry | None: ...

    def settle_entry(self, reservation_id: str, status: str, at: datetime) -> bool:
        """Move a ``reserved`` entry to ``status``; False when it is not reserved (or absent)."""

    def budget_rows(self) -> list[tuple[str, Budget | None, Spend]]:
        """Every principal's (id, budget, spend), ordered by id (locked in a write)."""

    def live_entries(self, principal_id: str | None = None) -> list[LedgerEntry]:
        """Reserved and committed entries (of one principal, or all), oldest first."""

    def counts(self, principal_id: str) -> dict[str, int]:
        """How many of the principal's entries are in each status."""

    def history(self, principal_id: str, limit: int, offset: int) -> list[LedgerEntry]:
        """The principal's entries, newest first."""


class LedgerStore(Protocol):
    """Where the ledger's rows live. It opens transactions; the :class:`Ledger` decides."""

    def write(self, *, durable: bool = True) -> AbstractContextManager[LedgerTxn]:
        """A write transaction, committed on a clean exit, rolled back on an exception.
        ``durable=False``: the commit need not wait for the disk (a lost commit must leave
        nothing under-charged)."""

    def read(self) -> AbstractContextManager[LedgerTxn]:
        """A read-only transaction (one consistent view; locks nothing)."""
