"""Write transactions of the state store, durable or not.

The charge itself is always durable (``service/store/db.py``: SQLite ``synchronous=FULL``,
PostgreSQL ``synchronous_commit=on``). Some writes need not survive an OS crash: a rate-limit
count, the audit row of a refusal or of a replay, and the settlement of a charge that is
already durable (its entry stays ``reserved``, which is charged all the same, when the
settlement is lost). Those commit without waiting for the disk: on SQLite in WAL mode the
connection commits with ``synchronous=NORMAL`` (no fsync; the WAL stays consistent, and the
next durable commit fsyncs these frames too, since the WAL is one file written in order), on
PostgreSQL ``synchronous_commit`` is off for that transaction. A query then pays one fsync,
for its charge.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text


@contextmanager
def write(engine: Engine, *, durable: bool = True) -> Iterator[Connection]:
    """A write transaction that takes the write lock first (SQLite ``BEGIN IMMEDIATE``),
    committed on a clean exit and rolled back on an exception; ``durable=False`` commits it
    without an fsync (see the module docstring)."""
    with engine.connect() as conn:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:
            conn = conn.execution_options(immediate=True)
        with _without_fsync(conn, sqlite and not durable):
            with conn.begin():
                if not durable and engine.dialect.name == "postgresql":
                    conn.execute(_NO_SYNC_COMMIT)
                yield conn


_NO_SYNC_COMMIT = text("SET LOCAL synchronous_commit = off")


@contextmanager
def _without_fsync(conn: Connection, relax: bool) -> Iterator[None]:
    """On SQLite in WAL mode, commit this connection's transactions inside the block with
    ``synchronous=NORMAL`` and then give it back its own setting."""
    if not relax:
        yield
        return
    raw = conn.connection.driver_connection
    assert raw is not None
    mode = raw.execute("PRAGMA journal_mode").fetchone()
    level = raw.execute("PRAGMA synchronous").fetchone()
    relax = mode is not None and str(mode[0]).lower() == "wal" and level is not None
    relax = relax and int(level[0]) > 1
    if relax:
        raw.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        if relax:
            raw.execute(f"PRAGMA synchronous={int(level[0])}")
