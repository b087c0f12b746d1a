"""What the two kinds of background job do: train a model, embed an app's texts.

Each is a plain function first (``run_training_job``, ``run_embedding_job``: a job id and a
:class:`ModelJobContext`) and a queued task second: :data:`BODIES` is what the queue
(``jobs.queue.make_queue``) registers. The job table, its states, the queue, the leases and
the recovery of jobs whose worker died are the ``jobs`` package's; tests call these functions
directly or run the queue inline (``memory://``).

A job that raises is marked ``failed`` with a fixed, data-free message and publishes
nothing: an embedding job's result file is renamed into place only after it is complete; a
training job's model version is the trainer's to publish atomically. A training job's charge
is settled by ``models.charge.TrainingCharge`` (refunded only when the job never started or
stopped before its first read of the corpus; once the corpus has been read, a failure of any
kind is charged in full and reported with one message, the same for every such failure, not
even the exception's class; a cancel is charged for the steps begun), and recorded in the
job's ``result["charge"]``.

This module knows no Flask; the service passes the engine, the data directory and a ledger in.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, select

from jobs import states
from jobs.context import JobContext
from jobs.states import JobCancelled, JobStateError
from jobs.table import FINAL, Job, jobs, now
from models import encoder as encoders  # looked up when a job runs: tests replace get_encoder
from models.charge import TrainingCharge
from models.training import TrainingCancelled, TrainingConfig

log = logging.getLogger("privtext.jobs")

RESULT_FILE = "result.npy"

#: What every training job that failed after reading the corpus reports: one fixed message,
#: not even the exception's class (which kind of failure happened can depend on the data).
FAILED_AFTER_READ = (
    "the training failed after it read the corpus and was charged in full; "
    "the operator log has the details"
)


@dataclass
class ModelJobContext(JobContext):
    """A job context with what the model jobs need besides: ``ledger`` (a
    ``mechanisms.ledger.Ledger``, the service passes its SQL ledger) that training is charged
    to; ``model_source`` returning ``(model_id, path)`` of the active model, the encoder's
    options and how long an embedding job's result is kept (``result_ttl_s``)."""

    ledger: Any = None
    model_source: Callable[[], tuple[str, Path]] | None = None
    encoder_options: dict[str, Any] = field(default_factory=dict)
    result_ttl_s: int = 3600


def cancel_job(ctx: ModelJobContext, job_id: str) -> Job:
    """Ask a job to stop (``jobs.states.cancel``: ``cancelled`` at once when queued, else
    ``cancelling``). A training cancelled before it ran gets its reservation back: nothing
    was trained or read, so giving it back reveals nothing. Raises JobStateError when the job
    is final or missing."""
    job = states.cancel(ctx, job_id)
    if job.status == "cancelled" and job.kind == "training" and job.reservation_id is not None:
        TrainingCharge.of_job(ctx.ledger, job).refund()
    return job


# -- embedding jobs ------------------------------------------------------------------------


def write_embedding_input(ctx: ModelJobContext, job_id: str, texts: list[str]) -> Path:
    """Store a job's texts (mode 0600) until the job ends; returns the file."""
    return ctx.write_input(job_id, texts)


def run_embedding_job(job_id: str, ctx: ModelJobContext) -> None:
    """Embed the job's texts with the active model; write ``result.npy`` atomically.

    The input file is deleted when the job ends, whatever the outcome; the result file is
    kept until ``result_ttl_s`` after the job finished (``sweep_expired``). A cancel is seen
    between chunks: the job is marked ``cancelled`` (nothing raised to the queue).
    """
    beat = states.claim(ctx, job_id)
    if beat is None:
        return
    d = ctx.job_dir(job_id)
    try:
        result = _embed(ctx, job_id)
        states.mark_succeeded(ctx.engine, job_id, result)
    except Exception as exc:
        (d / (RESULT_FILE + ".tmp")).unlink(missing_ok=True)
        (d / RESULT_FILE).unlink(missing_ok=True)
        if isinstance(exc, JobCancelled) and states.mark_cancelled(ctx.engine, job_id):
            log.info("embedding job cancelled", extra={"job_id": job_id})
            return
        log.exception("embedding job failed", extra={"job_id": job_id})
        states.mark_failed(ctx.engine, job_id, states.failure_message(exc))
        raise
    finally:
        ctx.delete_input(job_id)
        beat.stop()


def _embed(ctx: ModelJobContext, job_id: str) -> dict[str, Any]:
    """Encode the input in chunks of 512, checking for a cancel before each and before the
    result is written; returns the job's result."""
    texts = ctx.read_input(job_id)
    assert ctx.model_source is not None, "no model source"
    model_id, path = ctx.model_source()
    encoder = encoders.get_encoder(model_id, path, **ctx.encoder_options)
    chunk = 512
    parts = []
    for start in range(0, len(texts), chunk):
        states.stop_if_cancelled(ctx.engine, job_id)
        parts.append(encoder.encode(texts[start : start + chunk]))
        states.set_progress(
            ctx.engine, job_id, min(len(texts), start + chunk) / max(1, len(texts))
        )
    states.stop_if_cancelled(ctx.engine, job_id)  # the last chunk too: nothing written yet
    vectors = np.concatenate(parts) if parts else np.empty((0, encoder.dim), np.float32)
    d = ctx.job_dir(job_id)
    tmp = d / (RESULT_FILE + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, vectors.astype(np.float32, copy=False))
    os.replace(tmp, d / RESULT_FILE)
    return {
        "model_id": model_id,
        "count": int(vectors.shape[0]),
        "dimensions": int(vectors.shape[1]),
        "file": RESULT_FILE,
        "expires_at": (now() + timedelta(seconds=ctx.result_ttl_s)).isoformat(),
    }


def result_path(ctx: ModelJobContext, job: Job) -> Path | None:
    """The job's result file while it exists and has not expired."""
    if job.status != "succeeded" or not job.result or job.result.get("expired"):
        return None
    path = ctx.job_dir(job.id) / RESULT_FILE
    return path if path.is_file() else None


def sweep_expired(ctx: ModelJobContext, *, at: datetime | None = None) -> int:
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
            states.update_result(ctx.engine, job.id, {**(job.result or {}), "expired": True})
        n += 1
    return n


# -- training jobs -------------------------------------------------------------------------


def create_training_job(
    engine: Engine,
    charge: TrainingCharge,
    config: TrainingConfig,
    *,
    snapshot_id: str | None,
    activate: bool,
) -> Job:
    """Record a reserved training as a queued job, with what :func:`run_training_job` reads
    back: the config, the snapshot, the charged event and the reservation. The charge is
    refunded when the job cannot be recorded (nothing ran)."""
    params = {
        "config": config.to_dict(),
        "snapshot_id": snapshot_id,
        "event": charge.event.to_dict(),
        "activate": activate,
    }
    try:
        return states.create_job(
            engine,
            kind="training",
            created_by=charge.principal_id,
            params=params,
            reservation_id=charge.reserved.id,
        )
    except BaseException:
        charge.refund()
        raise


def run_training_job(
    job_id: str,
    ctx: ModelJobContext,
    *,
    train: Callable[..., Any] | None = None,
) -> None:
    """Train the job's config on its snapshot and publish a model version, charged by the
    reservation the job was queued with (``TrainingCharge.of_job(...).train``).

    ``train`` defaults to ``models.training.train``. A job that is not queued any more
    (cancelled before it started) is left as it is; a job without a reservation fails before
    anything runs. A job asked to stop (``cancelling``) is seen by ``should_stop``; ``train``
    raises TrainingCancelled, and the job is marked ``cancelled`` (nothing raised to the
    queue) with the settlement in ``result["charge"]``. A cancel after ``train`` returned
    changes nothing. Any other failure marks the job ``failed`` (:data:`FAILED_AFTER_READ`
    once the corpus was read) and is re-raised.

    While it runs the job holds a lease (``jobs.leases``); a worker killed mid-training
    leaves it to expire, and ``jobs.recovery`` fails the job with its reservation still
    charged.
    """
    job = states.get_job(ctx.engine, job_id)
    if job is None:
        raise JobStateError(f"no job {job_id}")
    beat = states.claim(ctx, job_id)
    if beat is None:
        return
    try:
        _train(job, ctx, train)
    finally:
        beat.stop()


def _train(job: Job, ctx: ModelJobContext, train: Callable[..., Any] | None) -> None:
    """The body of :func:`run_training_job` once the job is running and holds its lease."""
    charge = None
    try:
        charge = TrainingCharge.of_job(ctx.ledger, job)
        version = charge.train(
            job.params["config"],
            train=train,
            data_dir=ctx.data_dir,
            snapshot_id=job.params.get("snapshot_id"),
            progress=lambda f: states.set_progress(ctx.engine, job.id, f),
            should_stop=lambda: states.cancel_requested(ctx.engine, job.id),
            activate=bool(job.params.get("activate", False)),
        )
    except BaseException as exc:
        result = _record_charge(ctx, job, charge)
        if isinstance(exc, TrainingCancelled) and states.mark_cancelled(
            ctx.engine, job.id, result=result
        ):
            log.info("training job cancelled", extra={"job_id": job.id})
            return
        log.exception("training job failed", extra={"job_id": job.id})
        read = charge is not None and charge.run.corpus_read is not False
        message = FAILED_AFTER_READ if read else states.failure_message(exc)
        states.mark_failed(ctx.engine, job.id, message, result=result)
        raise
    _record_charge(ctx, job, charge)  # committed: the charge the job was created with
    states.mark_succeeded(
        ctx.engine,
        job.id,
        {"model_id": version.id, "epsilon": version.epsilon, "delta": version.delta},
    )


def _record_charge(
    ctx: ModelJobContext, job: Job, charge: TrainingCharge | None
) -> dict[str, Any] | None:
    """Point the job at the reservation that holds its charge (a cancel's is a new one);
    returns the settlement for the job's result (None when nothing was settled)."""
    settlement = charge.settlement if charge is not None else None
    if settlement is None:
        return None
    if settlement.reservation_id != job.reservation_id:
        states.set_reservation(ctx.engine, job.id, settlement.reservation_id)
    return {"charge": settlement.to_dict()}


#: The body of each job kind, for ``jobs.queue.make_queue``.
BODIES: dict[str, Callable[[str, ModelJobContext], None]] = {
    "training": run_training_job,
    "embedding": run_embedding_job,
}
