"""``GET /v1/snapshots/live``: which corpus snapshot answers are computed on.

Only public facts of the snapshot are shown (its id, when it was made, the declared metadata
columns and per-message features); never a count, a sender or a message.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service.auth import require
from service.errors import APIError
from service.schemas.query import FEATURES as QUERY_FEATURES
from service.services import services

bp = Blueprint("snapshots", __name__)

FEATURES = list(QUERY_FEATURES)


@bp.get("/v1/snapshots/live")
@require("admin", "analyst")
def live() -> Response:
    snap = services().corpus.live()
    if snap is None:
        raise APIError(404, "no_snapshot", "No corpus snapshot has been ingested yet.")
    return jsonify(
        {
            "id": snap.id,
            "created_at": snap.to_dict()["created_at"],
            "metadata_columns": list(snap.metadata_columns),
            "features": FEATURES,
        }
    )
