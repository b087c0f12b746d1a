"""The ledger's SQL store: SQLite (WAL, one host) or PostgreSQL (many hosts).

:class:`SqlStore` only opens transactions and locks, reads, writes and inserts rows; the policy
(admission, refunds, charging) is :class:`mechanisms.ledger.Ledger`'s, the same over every
store. :class:`SqlLedger` is that policy over this store.

A write transaction takes its locks before it reads: SQLite ``BEGIN IMMEDIATE`` takes the
database write lock first; PostgreSQL ``SELECT ... FOR UPDATE`` locks the analyst's ``budgets``
row and then the ``corpus_cap`` row (the policy always reads them in that order, so two
transactions cannot deadlock; READ COMMITTED re-reads the latest committed version once the
lock is granted).

A worker that dies between ``reserve`` and ``commit`` leaves its entry ``reserved``: it stays
charged, because nobody can tell whether its answer left the process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Budget, Ledger, LedgerEntry, Spend, now
from service.store import writes
from service.store.ledger_tables import budgets, corpus_cap, ledger_entries

CAP_ID = 1


def _aware(ts: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were stored in UTC."""
    if ts is not None and ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts


def _dump(spend: Spend) -> str:
    return json.dumps(spend.to_dict())


def _load(text: str | None) -> Spend:
    return Spend.from_dict(json.loads(text) if text else None)


def _budget(row: Any) -> Budget | None:
    """The stored budget (``Budget.stored``: a delta written before the limit reads safely)."""
    if row is None or row.epsilon is None:
        return None
    return Budget.stored(epsilon=row.epsilon, delta=row.delta)


def _entry(r: Any) -> LedgerEntry:
    return LedgerEntry(
        r.id,
        r.principal_id,
        PrivacyEvent.from_dict(json.loads(r.event)),
        r.status,
        _aware(r.created_at),  # type: ignore[arg-type]
        _aware(r.settled_at),
        r.scope,
    )


# The statements, built once (constructing them anew costs more than running them on SQLite).
_READ_BUDGET = select(budgets).where(budgets.c.principal_id == bindparam("pid"))
_LOCK_BUDGET = _READ_BUDGET.with_for_update()
_SET_SPEND = (
    update(budgets).where(budgets.c.principal_id == bindparam("pid")).values(spend=bindparam("s"))
)
_READ_CAP = select(corpus_cap).where(corpus_cap.c.id == CAP_ID)
_LOCK_CAP = _READ_CAP.with_for_update()
_SET_CAP_SPEND = update(corpus_cap).where(corpus_cap.c.id == CAP_ID).values(spend=bindparam("s"))
_INSERT_ENTRY = insert(ledger_entries)
_READ_ENTRY = select(ledger_entries).where(ledger_entries.c.id == bindparam("rid"))
_SETTLE = (
    update(ledger_entries)
    .where(ledger_entries.c.id == bindparam("rid"), ledger_entries.c.status == "reserved")
    .values(status=bindparam("to"), settled_at=bindparam("at"))
)


class SqlTxn:
    """One transaction on ``conn`` (see :class:`mechanisms.ledger.LedgerTxn`); ``conn`` is
    also what the caller's gate and records run on, inside the same transaction."""

    def __init__(self, conn: Connection, *, lock: bool) -> None:
        self.conn = conn
        self._lock = lock

    def budget(self, principal_id: str) -> tuple[Budget | None, Spend]:
        stmt = _LOCK_BUDGET if self._lock else _READ_BUDGET
        row = self.conn.execute(stmt, {"pid": principal_id}).first()
        return _budget(row), _load(row.spend if row is not None else None)

    def put_spend(self, principal_id: str, spend: Spend) -> None:
        self.conn.execute(_SET_SPEND, {"pid": principal_id, "s": _dump(spend)})

    def put_budget(self, principal_id: str, budget: Budget) -> None:
        values = {"epsilon": budget.epsilon, "delta": budget.delta, "updated_at": now()}
        res = self.conn.execute(
            update(budgets).where(budgets.c.principal_id == principal_id).values(values)
        )
        if res.rowcount == 0:
            self.conn.execute(
                insert(budgets).values(principal_id=principal_id, spend=_dump(Spend()), **values)
            )

    def cap(self) -> tuple[Budget | None, Spend]:
        row = self.conn.execute(_LOCK_CAP if self._lock else _READ_CAP).one()
        return _budget(row), _load(row.spend)

    def put_cap_spend(self, spend: Spend) -> None:
        self.conn.execute(_SET_CAP_SPEND, {"s": _dump(spend)})

    def put_cap(self, budget: Budget | None) -> None:
        self.conn.execute(
            update(corpus_cap)
            .where(corpus_cap.c.id == CAP_ID)
            .values(
                epsilon=budget.epsilon if budget else None,
                delta=budget.delta if budget else None,
                updated_at=now(),
            )
        )

    def add_entry(self, entry: LedgerEntry) -> None:
        self.conn.execute(
            _INSERT_ENTRY,
            {
                "id": entry.id,
                "principal_id": entry.principal_id,
                "event": json.dumps(entry.event.to_dict(), sort_keys=True),
                "status": entry.status,
                "scope": entry.scope,
                "created_at": entry.created_at,
            },
        )

    def entry(self, reservation_id: str) -> LedgerEntry | None:
        row = self.conn.execute(_READ_ENTRY, {"rid": reservation_id}).first()
        return _entry(row) if row is not None else None

    def settle_entry(self, reservation_id: str, status: str, at: datetime) -> bool:
        res = self.conn.execute(_SETTLE, {"rid": reservation_id, "to": status, "at": at})
        return bool(res.rowcount == 1)

    def budget_rows(self) -> list[tuple[str, Budget | None, Spend]]:
        q = select(budgets).order_by(budgets.c.principal_id)
        rows = self.conn.execute(q.with_for_update() if self._lock else q).all()
        return [(r.principal_id, _budget(r), _load(r.spend)) for r in rows]

    def live_entries(self, principal_id: str | None = None) -> list[LedgerEntry]:
        q = (
            select(ledger_entries)
            .where(ledger_entries.c.status != "refunded")
            .order_by(ledger_entries.c.created_at, ledger_entries.c.id)
        )
        if principal_id is not None:
            q = q.where(ledger_entries.c.principal_id == principal_id)
        return [_entry(r) for r in self.conn.execute(q)]

    def counts(self, principal_id: str) -> dict[str, int]:
        q = (
            select(ledger_entries.c.status, func.count())
            .where(ledger_entries.c.principal_id == principal_id)
            .group_by(ledger_entries.c.status)
        )
        return {str(status): int(n) for status, n in self.conn.execute(q)}

    def history(self, principal_id: str, limit: int, offset: int) -> list[LedgerEntry]:
        rows = self.conn.execute(
            select(ledger_entries)
            .where(ledger_entries.c.principal_id == principal_id)
            .order_by(ledger_entries.c.created_at.desc(), ledger_entries.c.id.desc())
            .limit(limit)
            .offset(offset)
        ).all()
        return [_entry(r) for r in rows]


class SqlStore:
    """The ledger's tables in the service's state store (``engine``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ensure_cap_row()

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[SqlTxn]:
        with writes.write(self.engine, durable=durable) as conn:
            yield SqlTxn(conn, lock=True)

    @contextmanager
    def read(self) -> Iterator[SqlTxn]:
        with self.engine.connect() as conn, conn.begin():
            yield SqlTxn(conn, lock=False)

    def _ensure_cap_row(self) -> None:
        with self.engine.connect() as conn:
            exists = conn.execute(select(corpus_cap.c.id).where(corpus_cap.c.id == CAP_ID)).first()
        if exists is not None:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(corpus_cap).values(
                        id=CAP_ID, epsilon=None, delta=None, spend=_dump(Spend()), updated_at=now()
                    )
                )
        except IntegrityError:
            pass  # another worker created it first


class SqlLedger(Ledger):
    """The ledger policy over the service's state store, shared by every worker and host."""

    store: SqlStore

    def __init__(self, engine: Engine) -> None:
        super().__init__(SqlStore(engine))
        self.engine = engine
