"""``/v1/budget``: an analyst's own budget and ledger history (never anyone else's)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from service.auth import current_principal, require
from service.charging import get_ledger
from service.schemas.admin import PageSchema

bp = Blueprint("budget", __name__, url_prefix="/v1/budget")


@bp.get("")
@require("analyst")
def own_budget() -> Response:
    """The caller's budget, the admission bound spent (RDP) and the tight PLD figure."""
    return jsonify(get_ledger().remaining(current_principal().id, tight=True).to_dict())


@bp.get("/history")
@require("analyst")
def own_history() -> Response:
    """The caller's ledger entries, newest first (``?limit=&offset=``)."""
    page = PageSchema().load(request.args.to_dict())
    entries = get_ledger().history(
        current_principal().id, limit=page["limit"], offset=page["offset"]
    )
    return jsonify({"entries": [e.to_dict() for e in entries], **page})
