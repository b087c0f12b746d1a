"""The state store: one SQLAlchemy engine per process over SQLite (WAL) or PostgreSQL.

The tables are defined elsewhere, on one ``metadata`` (``service/store/tables.py``, which imports
nothing of the service; the ledger's, the audit log's and the rate limiter's add themselves to
it); this module makes the engine and, in ``init_db``, every table in one place.

Two promises hold on both backends (PRIVACY.md, "The ledger"):

* a charge is durable before its answer leaves: SQLite runs in WAL mode with
  ``synchronous=FULL`` on every connection (the WAL is fsynced at each commit; with
  ``NORMAL`` an OS crash or a filesystem error can roll back commits of answers already sent),
  and every PostgreSQL session of the service sets ``synchronous_commit=on`` itself, whatever
  the server's default;
* an outage is bounded: PostgreSQL gets a connect timeout, a server-side statement timeout
  and, for a server that stops answering altogether (frozen, partitioned), a client-side limit
  one second past the statement timeout on every round trip; SQLite gets a busy timeout. The
  errors they raise (``sqlalchemy.exc.OperationalError``) become ``503 store_unavailable``
  (``service/errors.py``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url

# The ledger's and audit log's tables and the rate limiter's add themselves to ``metadata``.
import service.store.ledger_tables
import service.store.ratelimit  # noqa: F401
import service.store.tables
from jobs import table as job_tables  # the job tables have their own MetaData
from service.config import Settings
from service.store.tables import heartbeat, metadata

log = logging.getLogger(__name__)

#: Defaults of ``Settings.db_connect_timeout_s`` and ``Settings.db_statement_timeout_ms``.
CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 5000
#: How long past the statement timeout the client waits for a server that does not answer.
CLIENT_MARGIN_S = 1.0


def make_engine(
    url: str,
    *,
    connect_timeout_s: int = CONNECT_TIMEOUT_S,
    statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
) -> Engine:
    """An engine for ``url`` with durable commits and bounded waits (see the module docstring).

    SQLite in WAL mode is shared safely by every gunicorn worker on one host; writers
    serialise on the database lock (``BEGIN IMMEDIATE`` in the ledger) and wait for it at
    most ``statement_timeout_ms``. ``connect_timeout_s`` applies to PostgreSQL only (libpq
    enforces at least 2 s).
    """
    if connect_timeout_s < 1 or statement_timeout_ms < 1:
        raise ValueError("database timeouts must be >= 1")
    if url.startswith("sqlite:///"):
        return _sqlite_engine(url, statement_timeout_ms)
    if make_url(url).get_backend_name() == "postgresql":
        return _postgres_engine(url, connect_timeout_s, statement_timeout_ms)
    return create_engine(url, pool_pre_ping=True)


def _sqlite_engine(url: str, busy_timeout_ms: int) -> Engine:
    Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # SQLAlchemy's own BEGIN handling is replaced by the "begin" hook below.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so a charge committed before its answer
        # is sent survives an OS crash, a power loss or a filesystem that fails. With NORMAL,
        # tests/service/test_disk_fault.py found answers without their charge after an ext4
        # error in 9 runs of 10 (issue 11: 72 of 455); with FULL in none. Costs one fsync per
        # write commit, about 2 ms per charged query here (BENCHMARKS.md).
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
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


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection that gives up on a server that does not answer.

    The server-side ``statement_timeout`` ends a slow statement or a lock wait, but a server
    that is frozen (SIGSTOP, a stalled VM or disk) or cut off cannot enforce it: without this,
    every worker waits for it for ever. Each round trip (a statement, a commit, a rollback)
    may take at most ``round_trip_timeout_s``; past that the connection is closed (SQLAlchemy
    then invalidates it) and ``psycopg.OperationalError`` is raised.
    """

    round_trip_timeout_s: float | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        if timeout is None:
            timeout = self.round_trip_timeout_s
        try:
            return super().wait(gen, interval=interval, timeout=timeout)
        # psycopg's wait functions raise its internal _WaitTimeout (an OperationalError) when
        # ``timeout`` expires; the protocol is then mid-message, so the connection is dropped.
        except psycopg.errors._WaitTimeout:
            self.close()
            raise psycopg.OperationalError(
                f"the database did not answer within {timeout:g} s; connection closed"
            ) from None


def _postgres_engine(url: str, connect_timeout_s: int, statement_timeout_ms: int) -> Engine:
    # Settings passed to every session at connection time (libpq ``options``), after any the
    # URL gives, so that they win: durable commits and the statement timeout do not depend on
    # how the server (or a pooler's default) is configured.
    given = make_url(url).query.get("options", "")
    given = given if isinstance(given, str) else " ".join(given)
    options = " ".join(
        part
        for part in (
            given,
            "-c synchronous_commit=on",
            f"-c statement_timeout={int(statement_timeout_ms)}",
        )
        if part
    )
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        pool_timeout=connect_timeout_s,
        connect_args={"connect_timeout": max(2, int(connect_timeout_s)), "options": options},
    )
    round_trip_s = statement_timeout_ms / 1000 + CLIENT_MARGIN_S

    @event.listens_for(engine, "do_connect")
    def _bounded_connect(dialect, _record, cargs, cparams):  # type: ignore[no-untyped-def]
        if dialect.driver != "psycopg":
            return None  # another driver: SQLAlchemy connects as usual
        conn = BoundedConnection.connect(*cargs, **cparams)
        conn.round_trip_timeout_s = round_trip_s
        return conn

    return engine


def engine_for(settings: Settings) -> Engine:
    """The state store's engine as ``settings`` describe it."""
    return make_engine(
        settings.resolved_database_url,
        connect_timeout_s=settings.db_connect_timeout_s,
        statement_timeout_ms=settings.db_statement_timeout_ms,
    )


def probe_write(engine: Engine) -> None:
    """Commit one small write (the heartbeat row); raises when the store cannot write.

    On SQLite this takes the write lock (``BEGIN IMMEDIATE``) and fsyncs the WAL, so it fails
    on a read-only or failed filesystem; on PostgreSQL it is a synchronous commit.
    """
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(heartbeat).values(id="readyz", at=datetime.now(UTC))
    stmt = stmt.on_conflict_do_update(
        index_elements=[heartbeat.c.id], set_={"at": stmt.excluded.at}
    )
    with engine.connect().execution_options(immediate=True) as conn, conn.begin():
        conn.execute(stmt)


#: Key of the PostgreSQL advisory lock that serialises schema creation across processes.
_SCHEMA_LOCK = 0x70727674  # "prvt"


def init_db(engine: Engine) -> None:
    """Create every table that does not exist yet (idempotent, safe to race).

    Every gunicorn worker calls this at start-up; on a fresh database their ``CREATE TABLE``
    statements would collide, so creation runs in one transaction that holds the write lock
    (SQLite ``BEGIN IMMEDIATE``) or an advisory lock (PostgreSQL).
    """
    with engine.connect().execution_options(immediate=True) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        metadata.create_all(conn)
        if not service.store.tables.upgrade(conn):
            log.warning(
                "two analysts share a name: the unique index on analysts' names was not made"
            )
        service.store.ledger_tables.upgrade(conn)
        job_tables.metadata.create_all(conn)
