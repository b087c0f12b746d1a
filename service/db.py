"""The state store: one SQLAlchemy engine per process over SQLite (WAL) or PostgreSQL.

Tables of the foundation live here (principals, API keys); the ledger and audit log add theirs
to the same ``metadata`` so that ``create_all`` makes every table in one place.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    text,
)

metadata = MetaData()

principals = Table(
    "principals",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(16), nullable=False),  # "admin" | "analyst"
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

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


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode, a busy timeout and foreign keys.

    SQLite in WAL mode is shared safely by every gunicorn worker on one host; writers
    serialise on the database lock (``BEGIN IMMEDIATE`` in the ledger).
    """
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # SQLAlchemy's own BEGIN handling is replaced by the "begin" hook below.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            # Writers that read-check-write (the ledger) ask for the write lock up front:
            # ``engine.connect().execution_options(immediate=True)``.
            if conn.get_execution_options().get("immediate"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


#: Key of the PostgreSQL advisory lock that serialises schema creation across processes.
_SCHEMA_LOCK = 0x70727674  # "prvt"


def init_db(engine: Engine) -> None:
    """Create every table that does not exist yet (idempotent, safe to race).

    Every gunicorn worker calls this at start-up; on a fresh database their ``CREATE TABLE``
    statements would collide, so creation runs in one transaction that holds the write lock
    (SQLite ``BEGIN IMMEDIATE``) or an advisory lock (PostgreSQL).
    """
    import service.ledger.tables  # noqa: F401 - adds the ledger and audit tables
    import service.page_sessions  # noqa: F401 - adds the budget page's sessions
    import service.ratelimit  # noqa: F401 - adds the rate-limit windows
    from models import jobs  # the job table lives with the jobs (models/ imports no service)

    with engine.connect().execution_options(immediate=True) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        metadata.create_all(conn)
        jobs.metadata.create_all(conn)
