"""A job's states and the transitions between them.

States: ``queued -> running -> succeeded | failed``, and cancelling (:func:`cancel`):
``queued -> cancelled`` at once, ``running -> cancelling -> cancelled`` once the worker has
stopped (``cancelling -> succeeded`` when the cancel came too late: the result was already
being published). Every transition is one conditional UPDATE (``_transition``), so the API
and a worker racing on a job resolve atomically: exactly one of them moves it.

A job that raises is marked ``failed`` with a fixed, data-free message
(:func:`failure_message`: the exception's class name; the traceback goes to the operator log
only). A running job holds a lease renewed by its worker (:func:`claim`, ``jobs.leases``); a
job whose worker died is failed by ``jobs.recovery``.

What a job does (its body) is not here: ``models.job_bodies`` holds the training and the
embedding job and settles what is kind-specific (a training's charge, an embedding's result).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine, insert, select, update

from jobs import leases
from jobs.context import JobContext
from jobs.table import KINDS, Job, jobs, now, to_json

log = logging.getLogger("privtext.jobs")


class JobStateError(RuntimeError):
    """A transition that the job's current state does not allow."""


class JobCancelled(RuntimeError):
    """The job was asked to stop (its status is ``cancelling``); nothing was published."""


# -- reading and creating ---------------------------------------------------------------


def create_job(
    engine: Engine,
    *,
    kind: str,
    created_by: str,
    params: Mapping[str, Any],
    job_id: str | None = None,
    reservation_id: str | None = None,
) -> Job:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    jid = job_id or new_job_id(kind)
    with engine.begin() as conn:
        conn.execute(
            insert(jobs).values(
                id=jid,
                kind=kind,
                status="queued",
                progress=0.0,
                error=None,
                created_by=created_by,
                created_at=now(),
                params=to_json(params),
                result=None,
                reservation_id=reservation_id,
            )
        )
    return get_job(engine, jid)  # type: ignore[return-value]


def new_job_id(kind: str) -> str:
    return f"{'trn' if kind == 'training' else 'emb'}_{uuid.uuid4().hex}"


def get_job(engine: Engine, job_id: str) -> Job | None:
    with engine.connect() as conn:
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    return Job.from_row(row) if row is not None else None


def list_jobs(
    engine: Engine, *, kind: str | None = None, created_by: str | None = None, limit: int = 100
) -> list[Job]:
    q = select(jobs).order_by(jobs.c.created_at.desc()).limit(limit)
    if kind is not None:
        q = q.where(jobs.c.kind == kind)
    if created_by is not None:
        q = q.where(jobs.c.created_by == created_by)
    with engine.connect() as conn:
        return [Job.from_row(r) for r in conn.execute(q)]


def job_status(engine: Engine, job_id: str) -> str | None:
    """The job's status alone (one indexed column: cheap enough to poll once per step)."""
    with engine.connect() as conn:
        status = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
    return str(status) if status is not None else None


def cancel_requested(engine: Engine, job_id: str) -> bool:
    """True once the job is ``cancelling``: what a worker polls to stop early."""
    return job_status(engine, job_id) == "cancelling"


def stop_if_cancelled(engine: Engine, job_id: str) -> None:
    """Raise JobCancelled once the job is ``cancelling``."""
    if cancel_requested(engine, job_id):
        raise JobCancelled(job_id)


# -- transitions ---------------------------------------------------------------------------


def _transition(engine: Engine, job_id: str, allowed: tuple[str, ...], **values: Any) -> None:
    with engine.begin() as conn:
        res = conn.execute(
            update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(allowed)).values(**values)
        )
    if res.rowcount != 1:
        raise JobStateError(f"job {job_id} is not in {allowed}")


def _try(engine: Engine, job_id: str, allowed: tuple[str, ...], **values: Any) -> bool:
    try:
        _transition(engine, job_id, allowed, **values)
    except JobStateError:
        return False
    return True


def _result_values(result: Mapping[str, Any] | None) -> dict[str, Any]:
    return {} if result is None else {"result": to_json(result)}


def mark_running(
    engine: Engine,
    job_id: str,
    *,
    holder: str | None = None,
    lease_s: float = leases.DEFAULT_LEASE_S,
) -> None:
    """``queued -> running``; with ``holder``, the job's lease (``jobs.leases``) is given to
    it in the same transaction, so no running job is ever without one."""
    with engine.begin() as conn:
        res = conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == "queued")
            .values(status="running", started_at=now(), progress=0.0)
        )
        if res.rowcount != 1:
            raise JobStateError(f"job {job_id} is not in ('queued',)")
        if holder is not None:
            leases.take(conn, job_id, holder, lease_s)


def set_progress(engine: Engine, job_id: str, fraction: float) -> None:
    fraction = min(1.0, max(0.0, float(fraction)))
    with engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status.in_(("running", "cancelling")))
            .values(progress=fraction)
        )


def mark_succeeded(engine: Engine, job_id: str, result: Mapping[str, Any]) -> None:
    """``running | cancelling -> succeeded``: a cancel that came after the work was done (the
    result is being published) is too late; the job succeeds (a training: charged)."""
    _transition(
        engine,
        job_id,
        ("running", "cancelling"),
        status="succeeded",
        progress=1.0,
        finished_at=now(),
        result=to_json(result),
    )


def mark_failed(
    engine: Engine, job_id: str, message: str, *, result: Mapping[str, Any] | None = None
) -> None:
    _transition(
        engine,
        job_id,
        ("queued", "running", "cancelling"),
        status="failed",
        finished_at=now(),
        error=message[:500],
        **_result_values(result),
    )


def fail_if_queued(engine: Engine, job_id: str, message: str) -> bool:
    """``queued -> failed`` (a job that could not be queued); False, nothing changed, when a
    worker has already taken it."""
    return _try(engine, job_id, ("queued",), status="failed", finished_at=now(),
                error=message[:500])


def mark_cancelled(
    engine: Engine, job_id: str, *, result: Mapping[str, Any] | None = None
) -> bool:
    """``cancelling -> cancelled``: the worker stopped and removed what it had made. False
    (nothing changed) when the job is not ``cancelling``."""
    return _try(
        engine,
        job_id,
        ("cancelling",),
        status="cancelled",
        finished_at=now(),
        **_result_values(result),
    )


def update_result(engine: Engine, job_id: str, result: Mapping[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(result=to_json(result)))


def set_reservation(engine: Engine, job_id: str, reservation_id: str) -> None:
    """Point the job at the ledger reservation that now holds its charge."""
    with engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(reservation_id=reservation_id))


def failure_message(exc: BaseException) -> str:
    """What a failed job reports: the exception's class, never its text (it may quote data)."""
    return f"the job failed ({type(exc).__name__}); the operator log has the details"


# -- a worker's run and a caller's cancel ----------------------------------------------------


def claim(ctx: JobContext, job_id: str) -> leases.Heartbeat | None:
    """``queued -> running`` with a lease for this run, and the started heartbeat that keeps
    it (the caller stops it when the job has ended); None (logged, nothing raised) when the
    job is no longer queued: cancelled before a worker got to it, or a task delivered twice."""
    holder = leases.new_holder()
    try:
        mark_running(ctx.engine, job_id, holder=holder, lease_s=ctx.lease_s)
    except JobStateError:
        log.info(
            "job is %s, not queued: skipped",
            job_status(ctx.engine, job_id),
            extra={"job_id": job_id},
        )
        return None
    return leases.Heartbeat(ctx.engine, job_id, holder, ctx.lease_s).start()


def cancel(ctx: JobContext, job_id: str) -> Job:
    """Ask a job to stop; returns the job as it is now (``cancelled`` or ``cancelling``).

    * ``queued -> cancelled`` here: nothing ran; its input file (if any) is deleted. The
      worker that later picks the task finds the job not queued and returns without touching
      it. What else a job cancelled before it ran gives back (a training's reservation) is
      its kind's to do: ``models.job_bodies.cancel_job``.
    * ``running -> cancelling``: the worker stops at its next check, removes what it made,
      settles what its kind settles and marks the job cancelled.
    * ``cancelling``: already asked; unchanged.

    A returned ``cancelled`` job was therefore cancelled by this call, before it ran.
    Raises JobStateError when the job is final (succeeded, failed, cancelled) or missing.
    Each step is a conditional UPDATE, so a worker moving the job at the same moment either
    wins (then the next step sees its new state) or loses; there is no check-then-write gap.
    """
    engine = ctx.engine
    if _try(engine, job_id, ("queued",), status="cancelled", finished_at=now()):
        ctx.delete_input(job_id)
        job = get_job(engine, job_id)
        assert job is not None
        return job
    _try(engine, job_id, ("running",), status="cancelling")
    job = get_job(engine, job_id)
    if job is None:
        raise JobStateError(f"no job {job_id}")
    if job.status != "cancelling":
        raise JobStateError(f"job {job_id} is {job.status}")
    return job
