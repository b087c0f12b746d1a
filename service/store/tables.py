"""The state store's ``metadata`` and the tables of the foundation: principals, their API keys,
the budget page's sessions and the readiness heartbeat.

This module imports nothing from the rest of the service, so every module may import it (the
table definitions and ``metadata`` sit below auth, the ledger and the rate limiter; the engine
lives in ``service/store/db.py``, which creates the tables). The ledger and the audit log
(``service/store/ledger_tables.py``) and the rate limiter (``service/store/ratelimit.py``) add
theirs to this same ``metadata``, so ``service.store.db.init_db`` makes every table in one place.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    text,
)
from sqlalchemy.engine import Connection

metadata = MetaData()

principals = Table(
    "principals",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(16), nullable=False),  # admin | analyst | app | metrics
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

#: Analysts' names are unique (disabled analysts keep theirs); other roles' are not (every
#: ``ensure-admin`` principal is named "admin"). A partial index, on SQLite and PostgreSQL
#: alike; stores made before it get it from :func:`upgrade` when they hold no duplicate.
ANALYST_NAME_INDEX = "principals_analyst_name"
Index(
    ANALYST_NAME_INDEX,
    principals.c.name,
    unique=True,
    sqlite_where=principals.c.role == "analyst",
    postgresql_where=principals.c.role == "analyst",
)


def upgrade(conn: Connection) -> bool:
    """Give a store made before the unique index on analysts' names that index, in the
    caller's schema transaction (idempotent). A store that already holds two analysts of one
    name keeps working without it (new names are still checked before each insert, by
    ``service.accounts``); returns whether the index exists afterwards."""
    duplicate = conn.execute(
        text(
            "SELECT name FROM principals WHERE role = 'analyst' "
            "GROUP BY name HAVING count(*) > 1 LIMIT 1"
        )
    ).first()
    if duplicate is not None:
        return False
    conn.execute(
        text(
            f"CREATE UNIQUE INDEX IF NOT EXISTS {ANALYST_NAME_INDEX} "
            "ON principals (name) WHERE role = 'analyst'"
        )
    )
    return True


api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),  # public key id, part of the token
    Column("principal_id", String(64), ForeignKey("principals.id"), nullable=False, index=True),
    Column("salt", String(64), nullable=False),
    Column("secret_hash", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

#: Sessions of the budget page (``service/page_sessions.py``): the SHA-256 of a random token,
#: never the token or the key.
page_sessions = Table(
    "page_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # sha256 hex of the token
    Column("principal_id", String(64), ForeignKey("principals.id"), nullable=False),
    Column("key_id", String(32), ForeignKey("api_keys.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("ix_page_sessions_expires", "expires_at"),
)

#: One row that ``/readyz`` rewrites to prove the store accepts a durable write.
heartbeat = Table(
    "heartbeat",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
)
