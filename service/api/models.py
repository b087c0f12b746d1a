"""The model registry over HTTP (admin): ``GET /v1/models`` lists the versions and names the
active one; ``POST /v1/admin/models/<id>/activate`` makes a finished version the one that
embeddings and the embedding queries use.

Versions are published by training jobs (``service/api/jobs.py``) or are the public base
weights.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from models.registry import ModelNotFound, ModelRegistry
from service.auth import require
from service.errors import APIError
from service.services import services

bp = Blueprint("models", __name__)


@bp.get("/v1/models")
@require("admin")
def list_models() -> Response:
    registry = ModelRegistry(services().settings.data_dir)
    active = registry.active()
    return jsonify({"active": active.id, "models": [v.to_dict() for v in registry.list()]})


@bp.post("/v1/admin/models/<model_id>/activate")
@require("admin")
def activate_model(model_id: str) -> Response:
    registry = ModelRegistry(services().settings.data_dir)
    try:
        version = registry.activate(model_id)
    except ModelNotFound:
        raise APIError(404, "not_found", "No finished model version with this id.") from None
    return jsonify({"active": version.id, "model": version.to_dict()})
