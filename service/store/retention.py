"""Retention of the audit log: refused queries' rows are pruned, charged rows are kept for ever.

A refused query (the budget could not afford it) charges nothing and releases nothing, yet
writes an audit row; an analyst with no budget left could grow the log without bound. Those
rows are deleted once older than ``refused_audit_retention_days`` (``PRIVTEXT_REFUSED_AUDIT_
RETENTION_DAYS``, 30 by default; 0 keeps them for ever), by ``privtext worker`` every hour and
by ``privtext audit prune``. Rows of released, replayed and failed queries (every row that
names a charge) are never deleted.

The audit log stays append-only for those rows in the database itself: the triggers
(``service.store.ledger_tables``) refuse every UPDATE, and every DELETE of a row whose status is not
``refused`` (on PostgreSQL a row-level trigger, TRUNCATE refused too). Databases made before
this rule have triggers that refuse every DELETE; :func:`ensure_guards` replaces them, once,
under the write lock (SQLite) or an advisory lock (PostgreSQL), before the first prune.

Rows are deleted in batches of ``batch`` in their own transactions, so that the write lock is
never held for long while queries write their own rows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, delete, select, text

from service.store.ledger_tables import DELETABLE_STATUS, PG_GUARDS, SQLITE_GUARDS, audit_log

#: PostgreSQL advisory lock key for the guards' upgrade ("prva").
_GUARDS_LOCK = 0x70727661


def ensure_guards(engine: Engine) -> bool:
    """Install the current append-only triggers where older ones are found; True if it did."""
    with engine.connect().execution_options(immediate=True) as conn, conn.begin():
        if conn.dialect.name == "sqlite":
            return _sqlite_guards(conn)
        if conn.dialect.name == "postgresql":
            return _pg_guards(conn)
    return False


def _sqlite_guards(conn: Connection) -> bool:
    found = conn.execute(
        text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = :name"),
        {"name": "audit_log_no_delete"},
    ).scalar()
    if found is not None and f"'{DELETABLE_STATUS}'" in found:
        return False
    conn.execute(text("DROP TRIGGER IF EXISTS audit_log_no_delete"))
    for sql in SQLITE_GUARDS:
        conn.execute(text(sql))
    return True


def _pg_guards(conn: Connection) -> bool:
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _GUARDS_LOCK})
    found = conn.execute(
        text(
            "SELECT 1 FROM pg_trigger WHERE tgname = 'audit_log_no_delete' "
            "AND tgrelid = 'audit_log'::regclass"
        )
    ).scalar()
    if found is not None:
        return False
    conn.execute(text("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log"))
    for sql in PG_GUARDS:
        conn.execute(text(sql))
    return True


def prune_refused(
    engine: Engine,
    *,
    retention_days: int,
    now: datetime | None = None,
    batch: int = 5000,
) -> int:
    """Delete the refused queries' audit rows older than ``retention_days`` (0 or less: keep
    them all); returns how many were deleted."""
    if retention_days <= 0:
        return 0
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    ensure_guards(engine)
    old = (
        select(audit_log.c.id)
        .where(audit_log.c.status == DELETABLE_STATUS, audit_log.c.created_at < cutoff)
        .limit(batch)
    )
    total = 0
    while True:
        with engine.begin() as conn:
            n = conn.execute(
                delete(audit_log).where(audit_log.c.id.in_(old.scalar_subquery()))
            ).rowcount
        total += n
        if n < batch:
            return total
