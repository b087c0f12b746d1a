"""Jobs cut short: failing the jobs whose worker died, and deleting what they left on disk.

A worker killed mid-job (SIGKILL, out of memory, a lost host) leaves its job ``running`` or
``cancelling`` and, for an embedding job, the caller's texts in the job's input file. The
queue will not run the task again (huey's retries are off; the task left the queue when the
worker took it), so the job must be ended here:

* :func:`fail_orphaned` fails every running or cancelling job whose lease
  (``jobs.leases``) has expired: its holder stopped renewing it. ``every_running=True``
  fails every such job whatever its lease: what a worker does when it starts on the default
  SQLite queue, which has one consumer per data directory, so nothing else can be running
  them. A lease renewed between the look and the write keeps its job (the UPDATE checks it).
* A failed job's files go with it: the input texts, a partial or even a complete result (a
  failed job publishes nothing).
* A training job's reservation is left as it is: reserved, which the cap counts as spent.
  Whether the corpus was read, or a model published, before the worker died is not known
  here, and a refund could give back a release that exists (``models.charge``: a training
  that read the corpus stays charged). A ``cancelling`` job is failed, not taken as
  cancelled, for the same reason.
* :func:`sweep_inputs` deletes the input file of any job that has ended but still has one
  (a process that died between marking its job and deleting the file).

``privtext worker`` runs both when it starts and then every ``lease_s / 2`` seconds, on the
SQLite and the Redis queue alike.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update

from jobs.context import INPUT_FILE, JobContext
from jobs.leases import live
from jobs.table import ACTIVE, FINAL, aware, job_leases, jobs, now

log = logging.getLogger("privtext.jobs")

#: What a job whose worker died reports (fixed: nothing about the data).
INTERRUPTED = "the worker stopped while the job ran"


@dataclass(frozen=True)
class Recovered:
    """What one pass did: the jobs failed, and the jobs whose leftover input was deleted."""

    failed: list[str]
    inputs_deleted: list[str]


def fail_orphaned(
    ctx: JobContext, *, every_running: bool = False, at: float | None = None
) -> list[str]:
    """Fail the running or cancelling jobs whose worker is gone and delete their files;
    returns their ids.

    Gone means: the lease expired (before ``at``, epoch seconds, default now), or there is
    no lease and the job started more than ``ctx.lease_s`` ago (a job started by a version
    without leases); with ``every_running``, every running or cancelling job (a worker
    starting on the single-consumer SQLite queue).
    """
    t = time.time() if at is None else at
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(jobs.c.id, jobs.c.started_at, job_leases.c.expires_at)
            .select_from(jobs.outerjoin(job_leases, job_leases.c.job_id == jobs.c.id))
            .where(jobs.c.status.in_(ACTIVE))
        ).all()
    failed = []
    for row in rows:
        if not every_running and not _orphaned(row.started_at, row.expires_at, t, ctx.lease_s):
            continue
        if _fail(ctx, row.id, t, every_running):
            failed.append(row.id)
    return failed


def _orphaned(
    started_at: datetime | None, expires_at: float | None, t: float, lease_s: float
) -> bool:
    if expires_at is not None:
        return expires_at < t
    started_at = aware(started_at)
    if started_at is None:
        return True
    return started_at.timestamp() < t - lease_s


def _fail(ctx: JobContext, job_id: str, t: float, every_running: bool) -> bool:
    cond = [jobs.c.id == job_id, jobs.c.status.in_(ACTIVE)]
    if not every_running:
        cond.append(~live(job_id, t))  # renewed since we looked: still alive
    with ctx.engine.begin() as conn:
        res = conn.execute(
            update(jobs).where(*cond).values(status="failed", finished_at=now(), error=INTERRUPTED)
        )
        if res.rowcount != 1:
            return False
        conn.execute(delete(job_leases).where(job_leases.c.job_id == job_id))
    shutil.rmtree(ctx.job_dir(job_id), ignore_errors=True)
    log.warning("job failed: its worker stopped while it ran", extra={"job_id": job_id})
    return True


def sweep_inputs(ctx: JobContext) -> list[str]:
    """Delete the input file of every job that has ended; returns those jobs' ids."""
    root = ctx.data_dir / "jobs"
    if not root.is_dir():
        return []
    found = {p.parent.name: p for p in root.glob(f"*/{INPUT_FILE}")}
    if not found:
        return []
    with ctx.engine.connect() as conn:
        ended = {
            r.id
            for r in conn.execute(
                select(jobs.c.id).where(jobs.c.id.in_(list(found)), jobs.c.status.in_(FINAL))
            )
        }
    for job_id in ended:
        found[job_id].unlink(missing_ok=True)
    return sorted(ended)


def recover(ctx: JobContext, *, every_running: bool = False) -> Recovered:
    """One pass of both: what ``privtext worker`` runs at start and periodically."""
    return Recovered(fail_orphaned(ctx, every_running=every_running), sweep_inputs(ctx))
