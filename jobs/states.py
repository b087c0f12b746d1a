"""Background jobs: the ``jobs`` table, its state transitions, the work, and the huey queue.

A job is a plain function first (``run_training_job``, ``run_embedding_job``: each takes a job
id and a :class:`JobContext`) and a queued huey task second (``make_queue`` registers thin
wrappers). Tests call the functions directly or run the queue inline (``memory://``).

States: ``queued -> running -> succeeded | failed``, and cancelling (``cancel_job``):
``queued -> cancelled`` at once, ``running -> cancelling -> cancelled`` once the worker has
stopped (``cancelling -> succeeded`` when the cancel came too late: the result was already
being published). Every transition is one conditional UPDATE (``_transition``), so the API
and a worker racing on a job resolve atomically: exactly one of them moves it.

A job that raises is marked ``failed`` with a fixed, data-free message (the exception's class
name; the traceback goes to the operator log only), and publishes nothing: an embedding job's
result file is renamed into place only after it is complete; a training job's model version is
the trainer's to publish atomically. A training job's ledger reservation is settled by
``models.charge.settle_training``: refunded when the job never started (cancelled while
queued) or stopped before its first read of the corpus; once the corpus has been read, a
failure of any kind is charged in full (and reported with one message, the same for every
such failure: not even the exception's class), and a cancel is charged for the steps begun.
The settlement is recorded in the job's ``result["charge"]``.

A running job holds a lease renewed by its worker (``models.job_leases``); a job whose worker
died (its lease expired, or every running job when a worker starts on the single-consumer
SQLite queue) is failed by ``models.job_recovery``, which also deletes its files. A job's
input texts are deleted when it ends, however it ends: by the worker when it succeeds, fails
or is cancelled while running, by ``cancel_job`` when it is cancelled while queued, by
``models.job_recovery`` when its worker died.

This module knows no Flask; the service passes the engine, the data directory and a ledger in.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.exc import OperationalError, ProgrammingError

from models import job_leases as leases

if TYPE_CHECKING:
    from mechanisms.events import PrivacyEvent
    from mechanisms.ledger import Reservation

log = logging.getLogger("privtext.jobs")

KINDS = ("training", "embedding")
STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")

#: The jobs table lives in the service's state database. It has its own MetaData so that
#: ``models`` does not import ``service`` (imports go one way), shared with the jobs' leases
#: (``models.job_leases``); ``create_tables`` makes both.
metadata = leases.metadata

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


def create_tables(engine: Engine) -> None:
    """Create the jobs and job_leases tables if missing (idempotent, safe when workers race)."""
    try:
        metadata.create_all(engine)
    except (OperationalError, ProgrammingError) as exc:  # another process created it first
        if "already exists" not in str(exc):
            raise


def now() -> datetime:
    return datetime.now(UTC)


def _aware(ts: datetime | None) -> datetime | None:
    if ts is not None and ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts


@dataclass(frozen=True)
class Job:
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
            created_at=_aware(row.created_at),  # type: ignore[arg-type]
            started_at=_aware(row.started_at),
            finished_at=_aware(row.finished_at),
            params=json.loads(row.params) if row.params else {},
            result=json.loads(row.result) if row.result else None,
            reservation_id=row.reservation_id,
        )


class JobStateError(RuntimeError):
    """A transition that the job's current state does not allow."""


class JobCancelled(RuntimeError):
    """The job was asked to stop (its status is ``cancelling``); nothing was published."""


# -- state transitions -------------------------------------------------------------------


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
                params=json.dumps(dict(params), sort_keys=True, default=str),
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


def _transition(engine: Engine, job_id: str, allowed: tuple[str, ...], **values: Any) -> None:
    with engine.begin() as conn:
        res = conn.execute(
            update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(allowed)).values(**values)
        )
    if res.rowcount != 1:
        raise JobStateError(f"job {job_id} is not in {allowed}")


def mark_running(
    engine: Engine,
    job_id: str,
    *,
    holder: str | None = None,
    lease_s: float = leases.DEFAULT_LEASE_S,
) -> None:
    """``queued -> running``; with ``holder``, the job's lease (``models.job_leases``) is
    given to it in the same transaction, so no running job is ever without one."""
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


def job_status(engine: Engine, job_id: str) -> str | None:
    """The job's status alone (one indexed column: cheap enough to poll once per step)."""
    with engine.connect() as conn:
        status = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
    return str(status) if status is not None else None


def cancel_requested(engine: Engine, job_id: str) -> bool:
    """True once the job is ``cancelling``: what a worker polls to stop early."""
    return job_status(engine, job_id) == "cancelling"


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
    result is being published) is too late; the job succeeds and its charge is committed."""
    _transition(
        engine,
        job_id,
        ("running", "cancelling"),
        status="succeeded",
        progress=1.0,
        finished_at=now(),
        result=json.dumps(dict(result), sort_keys=True, default=str),
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


def _result_values(result: Mapping[str, Any] | None) -> dict[str, Any]:
    if result is None:
        return {}
    return {"result": json.dumps(dict(result), sort_keys=True, default=str)}


def _try(engine: Engine, job_id: str, allowed: tuple[str, ...], **values: Any) -> bool:
    try:
        _transition(engine, job_id, allowed, **values)
    except JobStateError:
        return False
    return True


def update_result(engine: Engine, job_id: str, result: Mapping[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(result=json.dumps(dict(result), sort_keys=True, default=str))
        )


def failure_message(exc: BaseException) -> str:
    """What a failed job reports: the exception's class, never its text (it may quote data)."""
    return f"the job failed ({type(exc).__name__}); the operator log has the details"


#: What every training job that failed after reading the corpus reports: one fixed message,
#: not even the exception's class (which kind of failure happened can depend on the data).
FAILED_AFTER_READ = (
    "the training failed after it read the corpus and was charged in full; "
    "the operator log has the details"
)


# -- the context the work runs in ----------------------------------------------------------


@dataclass
class JobContext:
    """What a job needs: the state database, the data directory, the ledger, the settings.

    ``ledger`` is a ``mechanisms.ledger.Ledger`` (the service passes its SQL ledger);
    ``model_source`` returns ``(model_id, path)`` of the active model for embedding jobs.
    """

    engine: Engine
    data_dir: Path
    ledger: Any = None
    model_source: Callable[[], tuple[str, Path]] | None = None
    encoder_options: dict[str, Any] = field(default_factory=dict)
    result_ttl_s: int = 3600
    lease_s: float = leases.DEFAULT_LEASE_S

    def job_dir(self, job_id: str) -> Path:
        return self.data_dir / "jobs" / job_id


# -- cancelling ----------------------------------------------------------------------------


def cancel_job(ctx: JobContext, job_id: str) -> Job:
    """Ask a job to stop; returns the job as it is now (``cancelled`` or ``cancelling``).

    * ``queued -> cancelled`` here: nothing ran. A training job's reservation is refunded
      now (``ctx.ledger``), an embedding job's texts are deleted; the worker that later
      picks the task finds the job not queued and returns without touching it.
    * ``running -> cancelling``: the worker stops at its next check (training: before the
      read, before each step and within a step every ``models.trainer.STOP_POLL_S`` seconds;
      embedding: between chunks), removes what it made, settles a training's reservation
      (refunded before the corpus was read, else charged for the steps begun) and marks the
      job cancelled.
    * ``cancelling``: already asked; unchanged.

    Raises JobStateError when the job is final (succeeded, failed, cancelled) or missing.
    Each step is a conditional UPDATE, so a worker moving the job at the same moment either
    wins (then the next step sees its new state) or loses; there is no check-then-write gap.
    """
    engine = ctx.engine
    if _try(engine, job_id, ("queued",), status="cancelled", finished_at=now()):
        job = get_job(engine, job_id)
        assert job is not None
        if job.kind == "training":
            reservation = _reservation(job)
            if reservation is not None and ctx.ledger is not None:
                from models.charge import refund_training

                # Nothing was trained or read: giving the reservation back reveals nothing.
                refund_training(ctx.ledger, reservation)
        else:
            (ctx.job_dir(job_id) / INPUT_FILE).unlink(missing_ok=True)
        return job
    _try(engine, job_id, ("running",), status="cancelling")
    job = get_job(engine, job_id)
    if job is None:
        raise JobStateError(f"no job {job_id}")
    if job.status != "cancelling":
        raise JobStateError(f"job {job_id} is {job.status}")
    return job


# -- embedding jobs ------------------------------------------------------------------------

INPUT_FILE = "input.json"
RESULT_FILE = "result.npy"


def write_embedding_input(ctx: JobContext, job_id: str, texts: list[str]) -> Path:
    """Store a job's texts (mode 0600) until the job finishes; returns the file."""
    d = ctx.job_dir(job_id)
    d.mkdir(parents=True, exist_ok=True)
    path = d / INPUT_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(texts, fh)
    return path


def run_embedding_job(job_id: str, ctx: JobContext) -> None:
    """Embed the job's texts with the active model; write ``result.npy`` atomically.

    The input file is deleted when the job ends, whatever the outcome; the result file is
    kept until ``result_ttl_s`` after the job finished (``sweep_expired``).
    """
    from models.encoder import get_encoder

    beat = _start(ctx, job_id)
    if beat is None:
        return
    d = ctx.job_dir(job_id)
    try:
        texts = json.loads((d / INPUT_FILE).read_text(encoding="utf-8"))
        assert ctx.model_source is not None, "no model source"
        model_id, path = ctx.model_source()
        encoder = get_encoder(model_id, path, **ctx.encoder_options)
        chunk = 512
        parts = []
        for start in range(0, len(texts), chunk):
            _stop_if_cancelled(ctx.engine, job_id)
            parts.append(encoder.encode(texts[start : start + chunk]))
            set_progress(ctx.engine, job_id, min(len(texts), start + chunk) / max(1, len(texts)))
        _stop_if_cancelled(ctx.engine, job_id)  # the last chunk too: nothing written yet
        vectors = np.concatenate(parts) if parts else np.empty((0, encoder.dim), np.float32)
        tmp = d / (RESULT_FILE + ".tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, vectors.astype(np.float32, copy=False))
        os.replace(tmp, d / RESULT_FILE)
        mark_succeeded(
            ctx.engine,
            job_id,
            {
                "model_id": model_id,
                "count": int(vectors.shape[0]),
                "dimensions": int(vectors.shape[1]),
                "file": RESULT_FILE,
                "expires_at": (now() + timedelta(seconds=ctx.result_ttl_s)).isoformat(),
            },
        )
    except Exception as exc:
        (d / (RESULT_FILE + ".tmp")).unlink(missing_ok=True)
        (d / RESULT_FILE).unlink(missing_ok=True)
        if isinstance(exc, JobCancelled) and mark_cancelled(ctx.engine, job_id):
            log.info("embedding job cancelled", extra={"job_id": job_id})
            return
        log.exception("embedding job failed", extra={"job_id": job_id})
        mark_failed(ctx.engine, job_id, failure_message(exc))
        raise
    finally:
        (d / INPUT_FILE).unlink(missing_ok=True)
        beat.stop()


def _start(ctx: JobContext, job_id: str) -> leases.Heartbeat | None:
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


def _stop_if_cancelled(engine: Engine, job_id: str) -> None:
    if cancel_requested(engine, job_id):
        raise JobCancelled(job_id)


def result_path(ctx: JobContext, job: Job) -> Path | None:
    """The job's result file while it exists and has not expired."""
    if job.status != "succeeded" or not job.result or job.result.get("expired"):
        return None
    path = ctx.job_dir(job.id) / RESULT_FILE
    return path if path.is_file() else None


def sweep_expired(ctx: JobContext, *, at: datetime | None = None) -> int:
    """Delete the files of finished embedding jobs older than ``result_ttl_s``; returns how many."""
    cutoff = (at or now()) - timedelta(seconds=ctx.result_ttl_s)
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(jobs).where(
                jobs.c.kind == "embedding",
                jobs.c.status.in_(FINAL),
                jobs.c.finished_at < cutoff,
            )
        ).all()
    n = 0
    for row in rows:
        job = Job.from_row(row)
        if job.result is not None and job.result.get("expired"):
            continue
        shutil.rmtree(ctx.job_dir(job.id), ignore_errors=True)
        if job.status == "succeeded":
            update_result(ctx.engine, job.id, {**(job.result or {}), "expired": True})
        n += 1
    return n


# -- training jobs -------------------------------------------------------------------------


def run_training_job(
    job_id: str,
    ctx: JobContext,
    *,
    train: Callable[..., Any] | None = None,
) -> None:
    """Train the job's config on its snapshot and publish a model version.

    The job's reservation (made against the corpus-wide cap when the job was queued, see
    ``models.charge``) is settled by ``models.charge.settle_training`` from what ``train``
    reported in its :class:`~models.training.TrainingRun`: committed when ``train`` returned;
    refunded when it raised before its first read of the corpus (or the job's own parameters
    could not be loaded); once the corpus was read, charged in full for a failure of any kind
    (the job is ``failed`` with :data:`FAILED_AFTER_READ`) and for the steps begun for a
    cancel. ``train`` defaults to ``models.training.train``; it gets the charged event back
    and refuses if the plan no longer matches it. A ``train`` that does not fill in the run
    is taken to have read the corpus.

    A job that is not queued any more (cancelled before it started) is left as it is. A job
    asked to stop (``cancelling``) is seen by ``should_stop``; ``train`` raises
    TrainingCancelled, the job is marked ``cancelled`` (nothing raised to the queue) with
    the settlement in ``result["charge"]``. A cancel after ``train`` returned changes nothing.

    While it runs the job holds a lease (``models.job_leases``); a worker killed mid-training
    leaves it to expire, and ``models.job_recovery`` fails the job with its reservation still
    charged.
    """
    job = get_job(ctx.engine, job_id)
    if job is None:
        raise JobStateError(f"no job {job_id}")
    beat = _start(ctx, job_id)
    if beat is None:
        return
    try:
        _train(job, ctx, train)
    finally:
        beat.stop()


def _train(job: Job, ctx: JobContext, train: Callable[..., Any] | None) -> None:
    """The body of :func:`run_training_job` once the job is running and holds its lease."""
    from models.training import TrainingCancelled, TrainingConfig, TrainingRun

    job_id = job.id
    run = TrainingRun(corpus_read=False)  # until train() is called, nothing is read
    reservation = None
    try:
        event = _event(job)
        reservation = _reservation(job)
        if train is None:
            from models.training import train as train_fn
        else:
            train_fn = train
        config = TrainingConfig.from_dict(dict(job.params["config"]))
        run.corpus_read = None  # train() says when it reads; one that does not is charged
        version = train_fn(
            config,
            data_dir=ctx.data_dir,
            snapshot_id=job.params.get("snapshot_id"),
            progress=lambda f: set_progress(ctx.engine, job_id, f),
            should_stop=lambda: cancel_requested(ctx.engine, job_id),
            event=event,
            activate=bool(job.params.get("activate", False)),
            run=run,
        )
    except BaseException as exc:
        charge = _settle(ctx, job_id, reservation, run, exc)
        result = {"charge": charge} if charge is not None else None
        if isinstance(exc, TrainingCancelled) and mark_cancelled(
            ctx.engine, job_id, result=result
        ):
            log.info("training job cancelled", extra={"job_id": job_id})
            return
        log.exception("training job failed", extra={"job_id": job_id})
        message = failure_message(exc) if run.corpus_read is False else FAILED_AFTER_READ
        mark_failed(ctx.engine, job_id, message, result=result)
        raise
    _settle(ctx, job_id, reservation, run, None)  # committed: the charge the job was created with
    mark_succeeded(
        ctx.engine,
        job_id,
        {"model_id": version.id, "epsilon": version.epsilon, "delta": version.delta},
    )


def _settle(
    ctx: JobContext,
    job_id: str,
    reservation: Reservation | None,
    run: Any,
    error: BaseException | None,
) -> dict[str, Any] | None:
    """Settle the job's reservation (``models.charge.settle_training``) and point the job at
    the reservation that holds the charge; returns the settlement for the job's result. A
    ledger error is logged and leaves the reservation reserved, which the cap counts as
    spent (never refunded by accident)."""
    from models.charge import settle_training

    if reservation is None or ctx.ledger is None:
        return None
    try:
        settlement = settle_training(ctx.ledger, reservation, run, error)
    except Exception:
        if error is None:
            raise
        log.exception("could not settle the training's reservation", extra={"job_id": job_id})
        return None
    if settlement.reservation_id != reservation.id:
        with ctx.engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(reservation_id=settlement.reservation_id)
            )
    return settlement.to_dict()


def _event(job: Job) -> PrivacyEvent:
    from mechanisms.events import PrivacyEvent

    return PrivacyEvent.from_dict(job.params["event"])


def _reservation(job: Job) -> Reservation | None:
    """The training job's ledger reservation (None for a job charged to nothing)."""
    from mechanisms.ledger import Reservation

    if job.reservation_id is None:
        return None
    return Reservation(job.reservation_id, job.created_by, _event(job), job.created_at)


# -- the queue -----------------------------------------------------------------------------


def make_huey(queue_url: str, data_dir: str | os.PathLike[str]) -> Any:
    """The huey instance for ``queue_url``: "" -> SQLite at ``data_dir/jobs.db``,
    ``redis://...`` -> Redis, ``memory://`` -> in-memory and immediate (tests: tasks run
    inline when enqueued)."""
    from huey import MemoryHuey, RedisHuey, SqliteHuey

    if not queue_url:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        return SqliteHuey("privtext", filename=str(Path(data_dir) / "jobs.db"))
    if queue_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisHuey("privtext", url=queue_url)
    if queue_url == "memory://":
        return MemoryHuey("privtext", immediate=True)
    raise ValueError("queue_url must be empty, redis://... or memory://")


@dataclass
class Queue:
    """A huey instance with the two job tasks registered on it."""

    huey: Any
    training: Any
    embedding: Any

    def enqueue_training(self, job_id: str) -> None:
        self.training(job_id)

    def enqueue_embedding(self, job_id: str) -> None:
        self.embedding(job_id)


def make_queue(huey: Any, context: Callable[[], JobContext]) -> Queue:
    """Register the job tasks on ``huey``; ``context`` builds this process's JobContext.

    The tasks are thin: they call ``run_*_job`` with the context; a task that raises has
    already marked its job failed. Huey's own retries are off (a failed job stays failed).
    """

    @huey.task(name="privtext.training", retries=0)
    def training_task(job_id: str) -> None:
        run_training_job(job_id, context())

    @huey.task(name="privtext.embedding", retries=0)
    def embedding_task(job_id: str) -> None:
        run_embedding_job(job_id, context())

    return Queue(huey=huey, training=training_task, embedding=embedding_task)
