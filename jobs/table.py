"""The job tables: ``jobs`` (one row per job: its kind, state, progress, parameters and result)
and ``job_leases`` (the lease a running job's worker holds, see :mod:`jobs.leases`).

They live in the service's state database (SQLite or PostgreSQL) but have their own
``MetaData``, so that this package needs nothing from ``service``; ``create_tables`` makes both,
and ``service.store.db.init_db`` creates them with the service's own tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.exc import OperationalError, ProgrammingError

#: The kinds of job the table holds; ``models.job_bodies`` registers one task per kind.
KINDS = ("training", "embedding")
STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
#: A job in one of these states never moves again.
FINAL = ("succeeded", "failed", "cancelled")
#: A job in one of these states has a worker (or had one that died: ``jobs.recovery``).
ACTIVE = ("running", "cancelling")

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("progress", Float, nullable=False, default=0.0),
    Column("error", String(500), nullable=True),  # a fixed message, never corpus text
    Column("created_by", String(64), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("params", Text, nullable=False),  # JSON: the validated request (no texts)
    Column("result", Text, nullable=True),  # JSON: model id, result file, counts
    Column("reservation_id", String(64), nullable=True),  # training: the ledger reservation
)

job_leases = Table(
    "job_leases",
    metadata,
    Column("job_id", String(40), primary_key=True),
    Column("holder", String(200), nullable=False),  # host:pid:token of the process running it
    Column("expires_at", Float, nullable=False),  # epoch seconds
)


def create_tables(engine: Engine) -> None:
    """Create the jobs and job_leases tables if missing (idempotent, safe when workers race)."""
    try:
        metadata.create_all(engine)
    except (OperationalError, ProgrammingError) as exc:  # another process created it first
        if "already exists" not in str(exc):
            raise


def now() -> datetime:
    return datetime.now(UTC)


def aware(ts: datetime | None) -> datetime | None:
    if ts is not None and ts.tzinfo is None:  # SQLite keeps no zone; every time stored is UTC
        return ts.replace(tzinfo=UTC)
    return ts


@dataclass(frozen=True)
class Job:
    """One row of the jobs table, as the code sees it (times are aware, JSON decoded)."""

    id: str
    kind: str
    status: str
    progress: float
    error: str | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: dict[str, Any]
    result: dict[str, Any] | None
    reservation_id: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Job:
        return cls(
            id=row.id,
            kind=row.kind,
            status=row.status,
            progress=float(row.progress or 0.0),
            error=row.error,
            created_by=row.created_by,
            created_at=aware(row.created_at),  # type: ignore[arg-type]
            started_at=aware(row.started_at),
            finished_at=aware(row.finished_at),
            params=json.loads(row.params) if row.params else {},
            result=json.loads(row.result) if row.result else None,
            reservation_id=row.reservation_id,
        )


def to_json(value: Any) -> str:
    """How params and results are stored: sorted JSON, anything else as its ``str``."""
    return json.dumps(dict(value), sort_keys=True, default=str)
