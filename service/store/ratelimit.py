"""Rate limits kept in the state database, so every gunicorn worker (and host) shares them: a
fixed window per (subject, bucket), counting requests and units (texts). The subject is the API
key for the embedding routes (bucket ``embeddings``) and the analyst for ``POST /v1/queries``
(bucket ``queries``, :func:`hit_queries`).

One row per key and bucket holds the current window's start and its counts. A
:class:`Counter` reads and updates it inside one write transaction (SQLite ``BEGIN
IMMEDIATE``; PostgreSQL ``SELECT ... FOR UPDATE``, a key's first row inserted with ``ON
CONFLICT DO NOTHING``), so concurrent requests cannot both take the last slot: in a
transaction of its own (``Counter.hit``, the embedding routes and dry runs), or inside the
caller's (``Counter.take``: the charged query path counts in its reservation's transaction, so
the count costs no transaction of its own, and a query refused by its budget is counted with
its audit row). A refused request is not counted. Over the limit: 429 ``rate_limited`` in the
error envelope, ``Retry-After`` (seconds to the next window) in the header and in
``errors.retry_after``.

A fixed window lets a key send up to twice the limit across a window boundary; that is
accepted here (the limit bounds load and the growth of the audit log; it protects no privacy:
embeddings cost no budget, and every query is charged by the ledger whatever its rate).

A count need not survive a crash, so a count in a transaction of its own does not wait for
the disk (``service/store/writes.py``); inside a reservation it commits with the charge.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    String,
    Table,
    bindparam,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError, ProgrammingError

from service.errors import APIError
from service.store import writes
from service.store.tables import metadata

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


@dataclass(frozen=True)
class Counter:
    """One request of ``units`` for ``key_id`` in ``bucket``, limited by ``limit``; ``what``
    names what is limited in the error message."""

    key_id: str
    bucket: str
    limit: Limit
    units: int = 1
    what: str = "embedding requests for this key"

    def hit(self, engine: Engine, *, now: float | None = None) -> None:
        """Count it in a transaction of its own, committed without an fsync."""
        with writes.write(engine, durable=False) as conn:
            self.take(conn, now=now)

    def take(self, conn: Connection, *, now: float | None = None) -> None:
        """Count it inside the caller's write transaction (which commits or rolls back the
        count with its own writes); raise a 429 APIError, counting nothing, when the window's
        requests or units would exceed the limit."""
        limit, units = self.limit, self.units
        t = time.time() if now is None else now
        start = int(t // limit.window_s) * limit.window_s
        retry_after = max(1, math.ceil(start + limit.window_s - t))
        if units > limit.units:
            detail = f"at most {limit.units} texts per {limit.window_s} s"
            raise _limited(retry_after, detail, self.what)
        row = conn.execute(_LOCK_ROW, {"k": self.key_id, "b": self.bucket}).first()
        if row is None:
            # ON CONFLICT DO NOTHING: two first requests at once cannot both insert (and the
            # loser's transaction is not aborted); the loser then locks the winner's row.
            first = {
                "key_id": self.key_id,
                "bucket": self.bucket,
                "window_start": start,
                "requests": 1,
                "units": units,
            }
            if conn.execute(_insert_first(conn), first).first() is not None:
                return
            row = conn.execute(_LOCK_ROW, {"k": self.key_id, "b": self.bucket}).one()
        used_requests, used_units = (
            (row.requests, row.units) if row.window_start == start else (0, 0)
        )
        if used_requests + 1 > limit.requests:
            detail = f"at most {limit.requests} requests per {limit.window_s} s"
            raise _limited(retry_after, detail, self.what)
        if used_units + units > limit.units:
            detail = f"at most {limit.units} texts per {limit.window_s} s"
            raise _limited(retry_after, detail, self.what)
        conn.execute(
            _UPDATE_ROW,
            {
                "k": self.key_id,
                "b": self.bucket,
                "start": start,
                "requests": used_requests + 1,
                "units": used_units + units,
            },
        )


# Built once: the hot path runs them on every query.
_LOCK_ROW = (
    select(rate_windows)
    .where(rate_windows.c.key_id == bindparam("k"), rate_windows.c.bucket == bindparam("b"))
    .with_for_update()
)
_UPDATE_ROW = (
    update(rate_windows)
    .where(rate_windows.c.key_id == bindparam("k"), rate_windows.c.bucket == bindparam("b"))
    .values(
        window_start=bindparam("start"),
        requests=bindparam("requests"),
        units=bindparam("units"),
    )
)
_INSERT_FIRST = {
    name: dialect_insert(rate_windows).on_conflict_do_nothing().returning(rate_windows.c.key_id)
    for name, dialect_insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}


def _insert_first(conn: Connection) -> Any:
    return _INSERT_FIRST[conn.dialect.name]


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
    """Count one request of ``units`` for ``key_id`` in ``bucket`` in a transaction of its
    own; raise a 429 APIError (counting nothing) when the window's requests or units would
    exceed ``limit``."""
    Counter(key_id, bucket, limit, units, what).hit(engine, now=now)


def queries_counter(principal_id: str, per_minute: int) -> Counter | None:
    """The count of one ``POST /v1/queries`` of the analyst ``principal_id`` (429 beyond
    ``per_minute`` in the current minute); None when ``per_minute`` is 0 or less (no limit).
    The charged path takes it inside its reservation's transaction."""
    if per_minute <= 0:
        return None
    limit = Limit(requests=per_minute, units=per_minute, window_s=60)
    return Counter(principal_id, "queries", limit, 1, "queries for this analyst")


def hit_queries(engine: Engine, principal_id: str, per_minute: int) -> None:
    """Count one ``POST /v1/queries`` of the analyst ``principal_id`` in a transaction of its
    own (see :func:`queries_counter`)."""
    counter = queries_counter(principal_id, per_minute)
    if counter is not None:
        counter.hit(engine)


def _limited(retry_after: int, detail: str, what: str) -> APIError:
    return APIError(
        429,
        "rate_limited",
        f"Too many {what} ({detail}); retry later.",
        errors={"retry_after": retry_after},
        headers={"Retry-After": str(retry_after)},
    )
