"""``SqlLedger``: the ledger over SQLite (WAL, one host) or PostgreSQL (many hosts).

Every read-check-write is one transaction that first takes the write locks it needs, always
in the same order (the analyst's ``budgets`` row, then the ``corpus_cap`` row) so that two
transactions cannot deadlock:

* SQLite: ``BEGIN IMMEDIATE`` takes the database write lock before the first read;
* PostgreSQL: ``SELECT ... FOR UPDATE`` on the two rows (READ COMMITTED re-reads the latest
  committed version once the lock is granted).

A worker that dies between ``reserve`` and ``commit`` leaves its entry ``reserved``: it stays
charged, because nobody can tell whether its answer left the process.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

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
from service.ledger import writes
from service.ledger.tables import budgets, corpus_cap, ledger_entries

CAP_ID = 1


class Gated(Exception):  # noqa: N818 - not an error: the caller's gate decided
    """A reservation abandoned because the caller's gate returned ``outcome``."""

    def __init__(self, outcome: object) -> None:
        super().__init__("reservation gated")
        self.outcome = outcome


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


def _insert_reserved(
    conn: Connection, rid: str, principal_id: str, event: PrivacyEvent
) -> Reservation:
    """Record a new reservation (inside the caller's locked transaction)."""
    created = now()
    conn.execute(
        _INSERT_ENTRY,
        {
            "id": rid,
            "principal_id": principal_id,
            "event": json.dumps(event.to_dict(), sort_keys=True),
            "status": "reserved",
            "created_at": created,
        },
    )
    return Reservation(rid, principal_id, event, created)


# The statements of the charged path, built once (constructing them anew costs more than
# running them on SQLite).
_INSERT_ENTRY = insert(ledger_entries)
_LOCK_BUDGET = select(budgets).where(budgets.c.principal_id == bindparam("pid")).with_for_update()
_SET_BUDGET_SPEND = (
    update(budgets).where(budgets.c.principal_id == bindparam("pid")).values(spend=bindparam("s"))
)
_LOCK_CAP = select(corpus_cap).where(corpus_cap.c.id == CAP_ID).with_for_update()
_SET_CAP_SPEND = update(corpus_cap).where(corpus_cap.c.id == CAP_ID).values(spend=bindparam("s"))
_SETTLE = (
    update(ledger_entries)
    .where(ledger_entries.c.id == bindparam("rid"), ledger_entries.c.status == "reserved")
    .values(status="committed", settled_at=bindparam("at"))
)


class SqlLedger(Ledger):
    """A ledger in the service's state store, shared by every worker process and host."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._ensure_cap_row()

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE); rows are locked FOR UPDATE."""
        with self.engine.connect() as conn:
            if self._sqlite:
                conn = conn.execution_options(immediate=True)
            with conn.begin():
                yield conn

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

    @staticmethod
    def _lock_budget(conn: Connection, principal_id: str) -> Any:
        return conn.execute(_LOCK_BUDGET, {"pid": principal_id}).first()

    @staticmethod
    def _lock_cap(conn: Connection) -> Any:
        return conn.execute(_LOCK_CAP).one()

    # -- charging -----------------------------------------------------------------------

    def reserve(
        self,
        principal_id: str,
        event: PrivacyEvent,
        *,
        gate: Callable[[Connection], object | None] | None = None,
    ) -> Reservation:
        """Admit ``event`` (see :meth:`Ledger.reserve`) in one write transaction.

        ``gate``, when given, runs first inside that transaction, with its connection, so that
        the caller's own checks and writes (the query path's replay lookup and claim) commit or
        roll back with the reservation: one durable write for all of them. When it returns
        something other than None, the transaction is rolled back and :class:`Gated` carrying
        that value is raised. The reservation comes back with the principal's figures after it.
        """
        new = Spend.of(event)  # priced before the lock: the transaction stays short
        rid = new_reservation_id()
        with self._locked() as conn:
            if gate is not None:
                outcome = gate(conn)
                if outcome is not None:
                    raise Gated(outcome)
            # The analyst's row first (checked and written), the shared cap's row last, so that
            # the cap is held for as little as possible: its check, one UPDATE and the commit.
            brow = self._lock_budget(conn, principal_id)
            budget, spent = _budget(brow), _load(brow.spend if brow is not None else None)
            if not affordable(spent, new, budget):
                raise exhausted("privacy budget exhausted", make_remaining(budget, spent))
            conn.execute(_SET_BUDGET_SPEND, {"pid": principal_id, "s": _dump(spent + new)})
            reservation = _insert_reserved(conn, rid, principal_id, event)
            crow = self._lock_cap(conn)
            cap, corpus = _budget(crow), _load(crow.spend)
            if cap is not None and not affordable(corpus, new, cap):
                raise exhausted(
                    "the corpus-wide privacy cap is exhausted",
                    make_remaining(budget, spent),
                    make_remaining(cap, corpus),
                )
            conn.execute(_SET_CAP_SPEND, {"s": _dump(corpus + new)})
        return dataclasses.replace(reservation, remaining=make_remaining(budget, spent + new))

    def settle(
        self,
        reservation_id: str,
        *,
        also: Callable[[Connection], object] | None = None,
        durable: bool = True,
    ) -> None:
        """Commit a reservation and run ``also`` (the caller's audit writes) in the same
        transaction: one write for both. Raises UnknownReservationError (rolling ``also``
        back too) unless the reservation is still reserved.

        ``durable=False`` commits without an fsync (``service/ledger/writes.py``): for a
        reservation whose charge is durable already, losing the settlement in an OS crash
        leaves the entry reserved, which is charged all the same."""
        with writes.write(self.engine, durable=durable) as conn:
            res = conn.execute(_SETTLE, {"rid": reservation_id, "at": now()})
            if res.rowcount != 1:
                raise UnknownReservationError(f"no open reservation {reservation_id}")
            if also is not None:
                also(conn)

    def reserve_corpus(self, principal_id: str, event: PrivacyEvent) -> Reservation:
        new = Spend.of(event)
        rid = new_corpus_reservation_id()
        with self._locked() as conn:
            crow = self._lock_cap(conn)
            cap, corpus = _budget(crow), _load(crow.spend)
            if cap is not None and not affordable(corpus, new, cap):
                raise exhausted(
                    "the corpus-wide privacy cap is exhausted", make_remaining(cap, corpus)
                )
            conn.execute(
                update(corpus_cap)
                .where(corpus_cap.c.id == CAP_ID)
                .values(spend=_dump(corpus + new))
            )
            return _insert_reserved(conn, rid, principal_id, event)

    def commit(self, reservation_id: str) -> None:
        self.settle(reservation_id)

    def refund(self, reservation_id: str) -> None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(ledger_entries.c.principal_id).where(ledger_entries.c.id == reservation_id)
            ).first()
        if row is None:
            raise UnknownReservationError(f"no open reservation {reservation_id}")
        with self._locked() as conn:
            corpus_only = is_corpus_reservation(reservation_id)
            brow = None if corpus_only else self._lock_budget(conn, row.principal_id)
            crow = self._lock_cap(conn)
            entry = conn.execute(
                select(ledger_entries).where(ledger_entries.c.id == reservation_id)
            ).one()
            if entry.status != "reserved":
                raise UnknownReservationError(f"no open reservation {reservation_id}")
            old = Spend.of(PrivacyEvent.from_dict(json.loads(entry.event)))
            if brow is not None:
                conn.execute(
                    update(budgets)
                    .where(budgets.c.principal_id == row.principal_id)
                    .values(spend=_dump(_load(brow.spend) - old))
                )
            conn.execute(
                update(corpus_cap)
                .where(corpus_cap.c.id == CAP_ID)
                .values(spend=_dump(_load(crow.spend) - old))
            )
            res = conn.execute(
                update(ledger_entries)
                .where(ledger_entries.c.id == reservation_id, ledger_entries.c.status == "reserved")
                .values(status="refunded", settled_at=now())
            )
            if res.rowcount != 1:  # committed meanwhile: roll the whole refund back
                raise UnknownReservationError(f"no open reservation {reservation_id}")

    # -- reading ------------------------------------------------------------------------

    def _live_events(self, conn: Connection, principal_id: str | None) -> list[PrivacyEvent]:
        q = select(ledger_entries.c.event).where(ledger_entries.c.status != "refunded")
        if principal_id is not None:
            q = q.where(ledger_entries.c.principal_id == principal_id)
        return [PrivacyEvent.from_dict(json.loads(r.event)) for r in conn.execute(q)]

    def remaining(self, principal_id: str, *, tight: bool = True) -> Remaining:
        with self.engine.connect() as conn, conn.begin():
            brow = conn.execute(
                select(budgets).where(budgets.c.principal_id == principal_id)
            ).first()
            counts: dict[str, int] = {
                str(status): int(n)
                for status, n in conn.execute(
                    select(ledger_entries.c.status, func.count())
                    .where(ledger_entries.c.principal_id == principal_id)
                    .group_by(ledger_entries.c.status)
                )
            }
            events = self._live_events(conn, principal_id) if tight else None
        return make_remaining(
            _budget(brow),
            _load(brow.spend if brow is not None else None),
            events,
            reserved=int(counts.get("reserved", 0)),
            committed=int(counts.get("committed", 0)),
        )

    def history(self, principal_id: str, *, limit: int = 100, offset: int = 0) -> list[LedgerEntry]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(ledger_entries)
                .where(ledger_entries.c.principal_id == principal_id)
                .order_by(ledger_entries.c.created_at.desc(), ledger_entries.c.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
        return [
            LedgerEntry(
                r.id,
                r.principal_id,
                PrivacyEvent.from_dict(json.loads(r.event)),
                r.status,
                _aware(r.created_at),  # type: ignore[arg-type]
                _aware(r.settled_at),
            )
            for r in rows
        ]

    def quote(self, principal_id: str, event: PrivacyEvent) -> Quote:
        new = Spend.of(event)
        with self.engine.connect() as conn, conn.begin():
            brow = conn.execute(
                select(budgets).where(budgets.c.principal_id == principal_id)
            ).first()
            crow = conn.execute(select(corpus_cap).where(corpus_cap.c.id == CAP_ID)).one()
        budget, spent = _budget(brow), _load(brow.spend if brow is not None else None)
        cap, corpus = _budget(crow), _load(crow.spend)
        ok = affordable(spent, new, budget) and (cap is None or affordable(corpus, new, cap))
        return make_quote(budget, spent, new, ok)

    # -- administration -----------------------------------------------------------------

    def get_budget(self, principal_id: str) -> Budget | None:
        with self.engine.connect() as conn:
            return _budget(
                conn.execute(select(budgets).where(budgets.c.principal_id == principal_id)).first()
            )

    def _write_budget(
        self, conn: Connection, principal_id: str, budget: Budget, exists: bool
    ) -> None:
        values = {"epsilon": budget.epsilon, "delta": budget.delta, "updated_at": now()}
        if exists:
            conn.execute(
                update(budgets).where(budgets.c.principal_id == principal_id).values(values)
            )
        else:
            conn.execute(
                insert(budgets).values(principal_id=principal_id, spend=_dump(Spend()), **values)
            )

    def set_budget(self, principal_id: str, budget: Budget) -> Budget:
        with self._locked() as conn:
            brow = self._lock_budget(conn, principal_id)
            self._write_budget(conn, principal_id, budget, brow is not None)
        return budget

    def raise_budget(
        self, principal_id: str, *, epsilon: float = 0.0, delta: float = 0.0
    ) -> Budget:
        with self._locked() as conn:
            brow = self._lock_budget(conn, principal_id)
            budget = raised(_budget(brow), epsilon, delta)
            self._write_budget(conn, principal_id, budget, brow is not None)
        return budget

    def corpus_cap(self) -> Budget | None:
        with self.engine.connect() as conn:
            return _budget(conn.execute(select(corpus_cap).where(corpus_cap.c.id == CAP_ID)).one())

    def set_corpus_cap(self, budget: Budget | None) -> None:
        with self._locked() as conn:
            self._lock_cap(conn)
            conn.execute(
                update(corpus_cap)
                .where(corpus_cap.c.id == CAP_ID)
                .values(
                    epsilon=budget.epsilon if budget else None,
                    delta=budget.delta if budget else None,
                    updated_at=now(),
                )
            )

    def recompute_spends(self, *, apply: bool = False) -> list[dict[str, Any]]:
        """Recompute every stored spend from the live (reserved or committed) entries.

        The stored spends are running sums, updated on every reserve and refund; this sums
        the entries again, for an operator to check them, or to repair them (``apply``) after
        a bug (a refund of an event with infinite RDP orders once zeroed those orders). An
        analyst's spend is the sum of their entries except corpus-only ones (training); the
        cap's is the sum of all. Runs under the write locks, budgets before the cap, like
        every other transaction. Returns, per budget row and for the cap, the epsilon stored
        and recomputed (at the budget's delta, or REPORT_DELTA without one).
        """
        from collections import defaultdict

        from mechanisms.ledger import REPORT_DELTA

        with self._locked() as conn:
            brows = conn.execute(
                select(budgets).order_by(budgets.c.principal_id).with_for_update()
            ).all()
            crow = self._lock_cap(conn)
            entries = conn.execute(
                select(ledger_entries.c.id, ledger_entries.c.principal_id, ledger_entries.c.event)
                .where(ledger_entries.c.status != "refunded")
                .order_by(ledger_entries.c.created_at, ledger_entries.c.id)
            ).all()
            priced: dict[str, Spend] = {}
            own: dict[str, Spend] = defaultdict(Spend)
            corpus = Spend()
            for e in entries:
                if e.event not in priced:
                    priced[e.event] = Spend.of(PrivacyEvent.from_dict(json.loads(e.event)))
                corpus = corpus + priced[e.event]
                if not is_corpus_reservation(e.id):
                    own[e.principal_id] = own[e.principal_id] + priced[e.event]
            report = []
            rows: list[tuple[str | None, Budget | None, Spend, Spend]] = [
                (r.principal_id, _budget(r), _load(r.spend), own[r.principal_id]) for r in brows
            ]
            rows.append((None, _budget(crow), _load(crow.spend), corpus))
            for principal_id, budget, stored, fresh in rows:
                delta = budget.delta if budget else REPORT_DELTA
                report.append(
                    {
                        "scope": "corpus" if principal_id is None else "analyst",
                        "principal_id": principal_id,
                        "delta": delta,
                        "stored_epsilon": stored.epsilon(delta),
                        "recomputed_epsilon": fresh.epsilon(delta),
                        "entries": fresh.count,
                    }
                )
                if not apply:
                    continue
                if principal_id is None:
                    conn.execute(
                        update(corpus_cap)
                        .where(corpus_cap.c.id == CAP_ID)
                        .values(spend=_dump(fresh), updated_at=now())
                    )
                else:
                    conn.execute(
                        update(budgets)
                        .where(budgets.c.principal_id == principal_id)
                        .values(spend=_dump(fresh), updated_at=now())
                    )
        return report

    def corpus_remaining(self, *, tight: bool = False) -> Remaining:
        with self.engine.connect() as conn, conn.begin():
            crow = conn.execute(select(corpus_cap).where(corpus_cap.c.id == CAP_ID)).one()
            events = self._live_events(conn, None) if tight else None
        return make_remaining(_budget(crow), _load(crow.spend), events)
