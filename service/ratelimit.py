"""Rate limits kept in the state database, so every gunicorn worker (and host) shares them: a
fixed window per (subject, bucket), counting requests and units (texts). The subject is the API
key for the embedding routes (bucket ``embeddings``) and the analyst for ``POST /v1/queries``
(bucket ``queries``, :func:`hit_queries`).

One row per key and bucket holds the current window's start and its counts. ``hit`` reads and
updates it in one write transaction (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``SELECT ... FOR
UPDATE``, with an insert race settled by retrying once), so concurrent requests cannot both
take the last slot. A refused request is not counted. Over the limit: 429 ``rate_limited`` in
the error envelope, ``Retry-After`` (seconds to the next window) in the header and in
``errors.retry_after``.

A fixed window lets a key send up to twice the limit across a window boundary; that is
accepted here (the limit bounds load and the growth of the audit log; it protects no privacy:
embeddings cost no budget, and every query is charged by the ledger whatever its rate).

A count need not survive a crash, so its write does not wait for the disk: on PostgreSQL
``synchronous_commit`` is off for that transaction, on SQLite (WAL) the connection commits it
with ``synchronous=NORMAL`` (no fsync, and no risk of corruption in WAL mode) and then gets
its own setting back. The charged path's writes keep their durability; a query pays no
second fsync for its rate limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    String,
    Table,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from service.db import metadata
from service.errors import APIError

rate_windows = Table(
    "rate_windows",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("bucket", String(32), primary_key=True),
    Column("window_start", Integer, nullable=False),
    Column("requests", Integer, nullable=False),
    Column("units", Integer, nullable=False),
)


def create_tables(engine: Engine) -> None:
    try:
        rate_windows.create(engine, checkfirst=True)
    except (OperationalError, ProgrammingError) as exc:
        if "already exists" not in str(exc):
            raise


@dataclass(frozen=True)
class Limit:
    """At most ``requests`` requests and ``units`` units per ``window_s`` seconds (all >= 1)."""

    requests: int
    units: int
    window_s: int

    def __post_init__(self) -> None:
        for name in ("requests", "units", "window_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


def hit(
    engine: Engine,
    key_id: str,
    bucket: str,
    limit: Limit,
    *,
    units: int = 1,
    now: float | None = None,
    what: str = "embedding requests for this key",
) -> None:
    """Count one request of ``units`` for ``key_id`` in ``bucket``; raise a 429 APIError
    (counting nothing) when the window's requests or units would exceed ``limit``. ``what``
    names what is limited in the error message."""
    t = time.time() if now is None else now
    start = int(t // limit.window_s) * limit.window_s
    retry_after = max(1, math.ceil(start + limit.window_s - t))
    if units > limit.units:
        raise _limited(retry_after, f"at most {limit.units} texts per {limit.window_s} s", what)
    for attempt in range(2):
        try:
            _hit_once(engine, key_id, bucket, limit, units, start, retry_after, what)
            return
        except IntegrityError:
            if attempt:
                raise


def _hit_once(
    engine: Engine,
    key_id: str,
    bucket: str,
    limit: Limit,
    units: int,
    start: int,
    retry_after: int,
    what: str,
) -> None:
    with engine.connect() as conn, _without_fsync(conn):
        if engine.dialect.name == "sqlite":
            conn = conn.execution_options(immediate=True)
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(text("SET LOCAL synchronous_commit = off"))
            row = conn.execute(
                select(rate_windows)
                .where(rate_windows.c.key_id == key_id, rate_windows.c.bucket == bucket)
                .with_for_update()
            ).first()
            if row is None:
                conn.execute(
                    insert(rate_windows).values(
                        key_id=key_id, bucket=bucket, window_start=start, requests=1, units=units
                    )
                )
                return
            used_requests, used_units = (
                (row.requests, row.units) if row.window_start == start else (0, 0)
            )
            if used_requests + 1 > limit.requests:
                detail = f"at most {limit.requests} requests per {limit.window_s} s"
                raise _limited(retry_after, detail, what)
            if used_units + units > limit.units:
                detail = f"at most {limit.units} texts per {limit.window_s} s"
                raise _limited(retry_after, detail, what)
            conn.execute(
                update(rate_windows)
                .where(rate_windows.c.key_id == key_id, rate_windows.c.bucket == bucket)
                .values(window_start=start, requests=used_requests + 1, units=used_units + units)
            )


def hit_queries(engine: Engine, principal_id: str, per_minute: int) -> None:
    """Count one ``POST /v1/queries`` of the analyst ``principal_id`` (429 beyond
    ``per_minute`` in the current minute; ``per_minute`` 0 or less: no limit)."""
    if per_minute <= 0:
        return
    limit = Limit(requests=per_minute, units=per_minute, window_s=60)
    hit(engine, principal_id, "queries", limit, what="queries for this analyst")


@contextmanager
def _without_fsync(conn: Connection) -> Iterator[None]:
    """On SQLite in WAL mode, commit this connection's next transactions with
    ``synchronous=NORMAL`` (no fsync) and then restore its own setting; elsewhere nothing."""
    if conn.dialect.name != "sqlite":
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


def _limited(retry_after: int, detail: str, what: str) -> APIError:
    return APIError(
        429,
        "rate_limited",
        f"Too many {what} ({detail}); retry later.",
        errors={"retry_after": retry_after},
        headers={"Retry-After": str(retry_after)},
    )
