"""Embeddings of texts the caller supplies, with the active model version.

No budget is charged: a model's outputs are post-processing of its (DP-trained or public)
weights, and the texts are the caller's own. Corpus messages are never embedded one by one
for anyone: these routes take texts in the body only.

* ``POST /v1/embeddings``: 1..64 texts (each <= 2,000 characters), answered synchronously.
* ``POST /v1/embedding-jobs``: 1..20,000 texts, queued; body up to
  ``Settings.embedding_job_max_bytes`` (16 MiB by default) on this route alone, while every
  other route keeps ``max_request_bytes``.
* ``GET /v1/embedding-jobs/<id>`` and ``GET /v1/embedding-jobs/<id>/result?format=json|npy``.

Rate limit: per API key, shared by every worker (``service.store.ratelimit``), one bucket for both
routes counting requests and texts. Texts are never logged; a job's texts are stored only in
its input file (mode 0600), deleted when the job ends; its result file is deleted
``embedding_result_ttl_s`` after the job finished (expired jobs are swept whenever a job is
created or a result is asked for), not on download, so a failed download can be retried.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request, send_file

from jobs import states as jobstore
from models import job_bodies as bodies
from models.encoder import get_encoder
from service.api.jobs import job_view, visible_job
from service.auth import current_principal, require
from service.body import json_body, reject_unknown_args
from service.errors import APIError
from service.job_queue import active_model, encoder_options, get_context, get_queue
from service.schemas.jobs import EmbeddingJobRequest, EmbeddingsRequest
from service.services import services
from service.store import ratelimit

bp = Blueprint("embeddings", __name__)
_sync_schema = EmbeddingsRequest()
_job_schema = EmbeddingJobRequest()

BUCKET = "embeddings"
ROLES = ("app", "analyst", "admin")


def _limit() -> ratelimit.Limit:
    s = services().settings
    return ratelimit.Limit(
        requests=s.embedding_rate_requests,
        units=s.embedding_rate_texts,
        window_s=s.embedding_rate_window_s,
    )


def _charge_rate(units: int) -> None:
    principal = current_principal()
    ratelimit.hit(
        services().engine, principal.key_id, BUCKET, _limit(), units=units
    )


@bp.post("/v1/embeddings")
@require(*ROLES)
def embed() -> Response:
    req = _sync_schema.load(json_body())
    texts: list[str] = req["texts"]
    _charge_rate(len(texts))
    settings = services().settings
    model_id, path = active_model(settings.data_dir)
    encoder = get_encoder(model_id, path, **encoder_options(settings))
    vectors = encoder.encode(texts)
    return jsonify(
        {
            "model_id": model_id,
            "dimensions": int(vectors.shape[1]),
            "count": int(vectors.shape[0]),
            "normalized": encoder.normalize,
            "embeddings": vectors.tolist(),
        }
    )


@bp.post("/v1/embedding-jobs")
@require(*ROLES)
def create_embedding_job() -> tuple[Response, int]:
    settings = services().settings
    request.max_content_length = settings.embedding_job_max_bytes  # this route only
    req = _job_schema.load(json_body())
    texts: list[str] = req["texts"]
    _charge_rate(len(texts))
    principal = current_principal()
    ctx = get_context()
    bodies.sweep_expired(ctx)
    job = jobstore.create_job(
        ctx.engine, kind="embedding", created_by=principal.id, params={"count": len(texts)}
    )
    try:
        bodies.write_embedding_input(ctx, job.id, texts)
        get_queue().enqueue("embedding", job.id)
    except Exception as exc:
        current_app.logger.exception("could not queue embedding job %s", job.id)
        ctx.delete_input(job.id)
        try:
            jobstore.mark_failed(ctx.engine, job.id, jobstore.failure_message(exc))
        except jobstore.JobStateError:
            pass
        raise APIError(503, "queue_unavailable", "The job queue is unavailable.") from exc
    job = jobstore.get_job(ctx.engine, job.id) or job
    return jsonify(job_view(job)), 201


@bp.get("/v1/embedding-jobs/<job_id>")
@require(*ROLES)
def get_embedding_job(job_id: str) -> Response:
    return jsonify(job_view(visible_job(job_id, kind="embedding")))


@bp.get("/v1/embedding-jobs/<job_id>/result")
@require(*ROLES)
def get_embedding_result(job_id: str) -> Any:
    reject_unknown_args("format")
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "npy"):
        raise APIError(
            422,
            "validation_error",
            "The request is not valid.",
            {"format": ["must be json or npy"]},
        )
    job = visible_job(job_id, kind="embedding")
    ctx = get_context()
    bodies.sweep_expired(ctx)
    job = jobstore.get_job(ctx.engine, job.id) or job
    if job.status != "succeeded":
        raise APIError(
            409, "job_not_finished", f"The job is {job.status}; its result is not available."
        )
    path = bodies.result_path(ctx, job)
    if path is None:
        raise APIError(410, "result_expired", "The job's result has expired and was deleted.")
    if fmt == "npy":
        return send_file(
            path,
            mimetype="application/octet-stream",
            as_attachment=True,
            download_name=f"{job.id}.npy",
            max_age=0,
        )
    vectors = np.load(path)
    result = job.result or {}
    return jsonify(
        {
            "id": job.id,
            "model_id": result.get("model_id"),
            "dimensions": int(vectors.shape[1]),
            "count": int(vectors.shape[0]),
            "expires_at": result.get("expires_at"),
            "embeddings": vectors.tolist(),
        }
    )
