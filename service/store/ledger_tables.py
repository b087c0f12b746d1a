"""Tables of the ledger and the audit log, added to ``service.store.tables.metadata``.

``budgets`` holds one row per analyst (the budget and the running spend), ``corpus_cap`` one
row (id 1) for the corpus-wide cap and spend, ``ledger_entries`` one row per reservation,
``audit_log`` one row per query answered (append-only: triggers refuse UPDATE and DELETE on
SQLite and PostgreSQL, except the DELETE of a refused query's row), and ``query_claims`` one
row per query being answered (the replay promise under concurrency).

Spends are stored as JSON text (``mechanisms.ledger.Spend.to_dict``): the additive RDP vector
at the accountant's fixed orders, the sum of pure epsilons and the count of non-pure events.
"""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Connection

from service.store.tables import metadata

budgets = Table(
    "budgets",
    metadata,
    Column("principal_id", String(64), ForeignKey("principals.id"), primary_key=True),
    Column("epsilon", Float, nullable=False),
    Column("delta", Float, nullable=False),
    Column("spend", Text, nullable=False, default="{}"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

corpus_cap = Table(
    "corpus_cap",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    Column("epsilon", Float, nullable=True),  # NULL: no cap set (spend is still tracked)
    Column("delta", Float, nullable=True),
    Column("spend", Text, nullable=False, default="{}"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("principal_id", String(64), ForeignKey("principals.id"), nullable=False),
    Column("event", Text, nullable=False),  # PrivacyEvent.to_dict() as JSON
    Column("status", String(16), nullable=False),  # reserved | committed | refunded
    # analyst: charged to the analyst's budget and the cap; corpus: to the cap alone
    Column("scope", String(16), nullable=False, server_default="analyst"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("settled_at", DateTime(timezone=True), nullable=True),
    Index("ix_ledger_entries_principal_created", "principal_id", "created_at"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("principal_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # released | replay | failed | refused
    Column("snapshot_id", String(128), nullable=False),
    Column("query_hash", String(64), nullable=False),
    Column("query", Text, nullable=False),  # normalised query, canonical JSON
    Column("cost", Text, nullable=False),  # JSON: the event and its epsilon
    Column("released", Text, nullable=True),  # JSON: what was released (NULL when nothing)
    Column("reservation_id", String(64), nullable=True),
    Index("ix_audit_replay", "principal_id", "snapshot_id", "query_hash"),
    Index("ix_audit_created", "created_at"),
)

#: One row per (analyst, snapshot, normalised query) being answered right now: its primary key
#: lets exactly one of several identical concurrent requests reserve and compute; the others
#: wait for its audit row and replay it (``service.store.audit.claim``).
query_claims = Table(
    "query_claims",
    metadata,
    Column("principal_id", String(64), primary_key=True),
    Column("snapshot_id", String(128), primary_key=True),
    Column("query_hash", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

#: The audit log is append-only, with one exception: rows of refused queries (nothing charged,
#: nothing released) may be deleted, so that their retention can be bounded
#: (``service.store.retention``). UPDATE is refused for every row, so a charged row can never
#: be turned into a deletable one. ``service.store.retention`` upgrades databases made with
#: the older guards (which refused every DELETE).
DELETABLE_STATUS = "refused"
SQLITE_GUARDS = [
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
    f"WHEN OLD.status != '{DELETABLE_STATUS}' "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
]
PG_GUARDS = [
    "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$ "
    "BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$ LANGUAGE plpgsql",
    "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    f"FOR EACH ROW WHEN (OLD.status <> '{DELETABLE_STATUS}') "
    "EXECUTE FUNCTION audit_log_append_only()",
]
_SQLITE_GUARDS = [DDL(sql) for sql in SQLITE_GUARDS]
_PG_GUARDS = [DDL(sql) for sql in PG_GUARDS]
for _ddl in _SQLITE_GUARDS:
    event.listen(audit_log, "after_create", _ddl.execute_if(dialect="sqlite"))
for _ddl in _PG_GUARDS:
    event.listen(audit_log, "after_create", _ddl.execute_if(dialect="postgresql"))


def upgrade(conn: Connection) -> None:
    """Bring a store created by an earlier version up to these tables, in the caller's
    schema transaction (idempotent): ``ledger_entries.scope`` was once told by the id prefix
    ``rsvc_`` of corpus-only reservations."""
    columns = {c["name"] for c in inspect(conn).get_columns("ledger_entries")}
    if "scope" in columns:
        return
    conn.execute(
        text("ALTER TABLE ledger_entries ADD COLUMN scope VARCHAR(16) NOT NULL DEFAULT 'analyst'")
    )
    conn.execute(
        text("UPDATE ledger_entries SET scope = 'corpus' WHERE substr(id, 1, 5) = 'rsvc_'")
    )
