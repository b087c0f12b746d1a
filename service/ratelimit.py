"""Per-key rate limits kept in the state database, so every gunicorn worker (and host) shares
them: a fixed window per (API key, bucket), counting requests and units (texts).

One row per key and bucket holds the current window's start and its counts. ``hit`` reads and
updates it in one write transaction (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``SELECT ... FOR
UPDATE``, with an insert race settled by retrying once), so concurrent requests cannot both
take the last slot. A refused request is not counted. Over the limit: 429 ``rate_limited`` in
the error envelope, ``Retry-After`` (seconds to the next window) in the header and in
``errors.retry_after``.

A fixed window lets a key send up to twice the limit across a window boundary; that is
accepted here (the limit bounds load, it protects no privacy: embeddings cost no budget).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from sqlalchemy import Column, Engine, Integer, String, Table, insert, select, update
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
) -> None:
    """Count one request of ``units`` for ``key_id`` in ``bucket``; raise a 429 APIError
    (counting nothing) when the window's requests or units would exceed ``limit``."""
    t = time.time() if now is None else now
    start = int(t // limit.window_s) * limit.window_s
    retry_after = max(1, math.ceil(start + limit.window_s - t))
    if units > limit.units:
        raise _limited(retry_after, f"at most {limit.units} texts per {limit.window_s} s")
    for attempt in range(2):
        try:
            _hit_once(engine, key_id, bucket, limit, units, start, retry_after)
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
) -> None:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn = conn.execution_options(immediate=True)
        with conn.begin():
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
                raise _limited(retry_after, detail)
            if used_units + units > limit.units:
                raise _limited(retry_after, f"at most {limit.units} texts per {limit.window_s} s")
            conn.execute(
                update(rate_windows)
                .where(rate_windows.c.key_id == key_id, rate_windows.c.bucket == bucket)
                .values(window_start=start, requests=used_requests + 1, units=used_units + units)
            )


def _limited(retry_after: int, detail: str) -> APIError:
    return APIError(
        429,
        "rate_limited",
        f"Too many embedding requests for this key ({detail}); retry later.",
        errors={"retry_after": retry_after},
        headers={"Retry-After": str(retry_after)},
    )
