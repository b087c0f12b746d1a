"""Jobs over HTTP: training jobs (admin), job status and cancellation.

* ``POST /v1/admin/training-jobs``: validate -> price (``models.charge.TrainingCharge``:
  the privacy event, from public inputs only: the sampling rate is
  expected_senders_per_batch / the declared ``population_size``; the corpus is not read, not
  even counted) -> reserve it against the corpus-wide cap (409 ``budget_exhausted`` when the
  cap cannot afford it or none is set) -> record the job -> queue it. The worker settles the
  same charge (``models.job_bodies``): committed once the model is published, refunded only
  when training stopped before its first read of the corpus, otherwise charged (in full for a
  failure, for the steps begun for a cancel).
* ``GET /v1/jobs`` and ``GET /v1/jobs/<id>``: an admin sees every job, anyone else only their
  own (someone else's job is a 404, like a missing one).
* ``POST /v1/jobs/<id>/cancel``: the same visibility; a queued job is cancelled at once (200;
  a training job's reservation refunded), a running one is asked to stop (202 ``cancelling``;
  the worker stops within seconds, settles the charge and marks it ``cancelled``), a finished
  one is a 409.

Jobs are queued on the app's job queue (``service/job_queue.py``); the model versions they
publish are ``service/api/models.py``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState

from corpus.store import SnapshotNotFound
from jobs import states as jobstore
from jobs.table import KINDS, Job, create_tables
from models import job_bodies as bodies
from models.charge import TrainingCharge
from models.training import TrainingConfig, planned_delta
from service.auth import current_principal, require
from service.body import json_body, reject_unknown_args
from service.charging import get_ledger
from service.errors import APIError
from service.job_queue import get_context, get_queue
from service.schemas.jobs import TrainingJobRequest
from service.services import services
from service.store import ratelimit

bp = Blueprint("jobs", __name__)
_training_schema = TrainingJobRequest()


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    engine = services(state.app).engine
    create_tables(engine)
    ratelimit.create_tables(engine)


# -- representation ----------------------------------------------------------------------


def _iso(ts: Any) -> str | None:
    return ts.isoformat() if ts is not None else None


def job_view(job: Job) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "progress": job.progress,
        "error": job.error,
        "created_by": job.created_by,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "params": job.params,
        "result": job.result,
    }
    if (
        job.kind == "embedding"
        and job.status == "succeeded"
        and not (job.result or {}).get("expired")
    ):
        view["result_url"] = f"/v1/embedding-jobs/{job.id}/result"
    return view


def visible_job(job_id: str, kind: str | None = None) -> Job:
    """The job, when the caller may see it (admin: any; others: their own); else 404."""
    principal = current_principal()
    job = jobstore.get_job(services().engine, job_id)
    if (
        job is None
        or (kind is not None and job.kind != kind)
        or (principal.role != "admin" and job.created_by != principal.id)
    ):
        raise APIError(404, "not_found", "No job with this id.")
    return job


# -- training jobs -----------------------------------------------------------------------


@bp.post("/v1/admin/training-jobs")
@require("admin")
def create_training_job() -> tuple[Response, int]:
    principal = current_principal()
    req = _training_schema.load(json_body())
    config = TrainingConfig.from_dict(TrainingJobRequest.config_of(req))  # 422 if invalid
    # priced from public inputs only: 422 before anything is read or charged
    charge = TrainingCharge.price(get_ledger(), config, principal_id=principal.id)
    svc = services()
    try:
        info = svc.corpus.get(req["snapshot_id"]) if req["snapshot_id"] else svc.corpus.live()
    except SnapshotNotFound:
        info = None
    if info is None:
        status = 404 if req["snapshot_id"] else 503
        raise APIError(status, "no_snapshot", "No such corpus snapshot.")
    charge.reserve()  # 409 if refused
    # refunded by create_training_job when the job cannot be recorded
    job = bodies.create_training_job(
        svc.engine, charge, config, snapshot_id=info.id, activate=req["activate"]
    )
    try:
        get_queue().enqueue("training", job.id)
    except Exception as exc:
        current_app.logger.exception("could not queue training job %s", job.id)
        # Refunded only when the job is still queued (claimed here atomically): a worker that
        # has already taken it settles the charge itself.
        if jobstore.fail_if_queued(svc.engine, job.id, jobstore.failure_message(exc)):
            charge.refund()
        raise APIError(503, "queue_unavailable", "The job queue is unavailable.") from exc
    job = jobstore.get_job(svc.engine, job.id) or job
    body = {
        **job_view(job),
        "cost": {
            "event": charge.event.to_dict(),
            "target_epsilon": config.target_epsilon,
            "delta": planned_delta(config),
            "charged_to": "corpus-wide cap",
            "reservation_id": charge.reserved.id,
        },
    }
    return jsonify(body), 201


# -- any job -----------------------------------------------------------------------------


@bp.get("/v1/jobs")
@require("admin", "analyst", "app")
def list_jobs() -> Response:
    principal = current_principal()
    reject_unknown_args("kind")
    kind = request.args.get("kind")
    if kind is not None and kind not in KINDS:
        raise APIError(
            422,
            "validation_error",
            "The request is not valid.",
            {"kind": [f"must be one of {list(KINDS)}"]},
        )
    found = jobstore.list_jobs(
        services().engine,
        kind=kind,
        created_by=None if principal.role == "admin" else principal.id,
    )
    return jsonify({"jobs": [job_view(j) for j in found]})


@bp.get("/v1/jobs/<job_id>")
@require("admin", "analyst", "app")
def get_job(job_id: str) -> Response:
    return jsonify(job_view(visible_job(job_id)))


@bp.post("/v1/jobs/<job_id>/cancel")
@require("admin", "analyst", "app")
def cancel_job(job_id: str) -> tuple[Response, int]:
    """Takes no body (one sent is ignored, as on the other body-less POSTs) and no query."""
    reject_unknown_args()
    job = visible_job(job_id)
    try:
        job = bodies.cancel_job(get_context(), job.id)
    except jobstore.JobStateError:
        job = jobstore.get_job(services().engine, job.id) or job
        raise APIError(
            409, "job_finished", f"The job is {job.status}; it can no longer be cancelled."
        ) from None
    return jsonify(job_view(job)), 200 if job.status == "cancelled" else 202
