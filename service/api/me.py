"""``GET /v1/me``: who the presented key belongs to."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service.auth import current_principal, require

bp = Blueprint("me", __name__)


@bp.get("/v1/me")
@require("admin", "analyst")
def me() -> Response:
    p = current_principal()
    return jsonify({"id": p.id, "name": p.name, "role": p.role, "key_id": p.key_id})
