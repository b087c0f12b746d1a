"""``/v1/admin/*``: analysts, their keys and budgets, the corpus-wide cap, ledgers, the audit log.

Every route requires an admin key (``@require("admin")``); an analyst key gets 403 on all of
them. Analysts are principals with role ``analyst``; an unknown id (or an admin's id) is 404.
Analysts, keys, budgets and the cap go through ``service/accounts.py``, as the ``privtext``
command's do; this module only reads requests and writes responses.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from mechanisms.ledger import Budget
from service.accounts import Accounts, Analyst, NameTaken, UnknownAnalyst, UnknownKey
from service.auth import require
from service.body import json_body
from service.errors import APIError
from service.schemas.admin import (
    AnalystCreateSchema,
    AuditQuerySchema,
    BudgetRaiseSchema,
    BudgetSchema,
    PageSchema,
)
from service.services import services
from service.store import audit

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


def _accounts() -> Accounts:
    return services().accounts


def _analyst(analyst_id: str) -> Analyst:
    try:
        return _accounts().analyst(analyst_id)
    except UnknownAnalyst:
        raise APIError(404, "not_found", "No analyst with this id.") from None


def _unknown_key() -> APIError:
    return APIError(404, "not_found", "No active key with this id for this analyst.")


# -- analysts ---------------------------------------------------------------------------


@bp.post("/analysts")
@require("admin")
def create_analyst() -> tuple[Response, int]:
    data = AnalystCreateSchema().load(json_body())
    budget = None if data["budget"] is None else Budget(**data["budget"])
    try:
        analyst = _accounts().create_analyst(data["name"], budget)
    except NameTaken:
        raise APIError(
            409,
            "name_taken",
            "An analyst with this name exists already; names are unique.",
            errors={"name": ["An analyst with this name exists already."]},
        ) from None
    return jsonify(analyst.to_dict()), 201


@bp.get("/analysts")
@require("admin")
def list_analysts() -> Response:
    page = PageSchema().load(request.args.to_dict())
    analysts = _accounts().analysts(limit=page["limit"], offset=page["offset"])
    return jsonify({"analysts": [a.to_dict() for a in analysts], **page})


@bp.get("/analysts/<analyst_id>")
@require("admin")
def get_analyst(analyst_id: str) -> Response:
    analyst = _analyst(analyst_id)
    accounts = _accounts()
    view = analyst.to_dict()
    view["keys"] = [
        {
            "key_id": k.id,
            "created_at": k.created_at.isoformat(),
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        }
        for k in accounts.keys(analyst)
    ]
    view["remaining"] = accounts.remaining(analyst, tight=False).to_dict()
    return jsonify(view)


@bp.post("/analysts/<analyst_id>/disable")
@require("admin")
def disable_analyst(analyst_id: str) -> Response:
    return jsonify(_accounts().disable(_analyst(analyst_id)).to_dict())


# -- keys -------------------------------------------------------------------------------


@bp.post("/analysts/<analyst_id>/keys")
@require("admin")
def issue_analyst_key(analyst_id: str) -> tuple[Response, int]:
    issued = _accounts().issue_key(_analyst(analyst_id))
    return jsonify({"key_id": issued.key_id, "token": issued.token}), 201


@bp.post("/analysts/<analyst_id>/keys/<key_id>/rotate")
@require("admin")
def rotate_analyst_key(analyst_id: str, key_id: str) -> tuple[Response, int]:
    analyst = _analyst(analyst_id)
    try:
        issued = _accounts().rotate_key(analyst, key_id)
    except UnknownKey:
        raise _unknown_key() from None
    return jsonify(
        {"key_id": issued.key_id, "token": issued.token, "revoked_key_id": issued.revoked_key_id}
    ), 201


@bp.delete("/analysts/<analyst_id>/keys/<key_id>")
@require("admin")
def revoke_analyst_key(analyst_id: str, key_id: str) -> tuple[str, int]:
    analyst = _analyst(analyst_id)
    try:
        _accounts().revoke_key(analyst, key_id)
    except UnknownKey:
        raise _unknown_key() from None
    return "", 204


# -- budgets, cap, ledgers --------------------------------------------------------------


@bp.put("/analysts/<analyst_id>/budget")
@require("admin")
def set_budget(analyst_id: str) -> Response:
    analyst = _analyst(analyst_id)
    data = BudgetSchema().load(json_body())
    accounts = _accounts()
    accounts.set_budget(analyst, Budget(**data))
    return jsonify(accounts.remaining(analyst, tight=False).to_dict())


@bp.post("/analysts/<analyst_id>/budget/raise")
@require("admin")
def raise_budget(analyst_id: str) -> Response:
    analyst = _analyst(analyst_id)
    data = BudgetRaiseSchema().load(json_body())
    accounts = _accounts()
    accounts.raise_budget(analyst, epsilon=data["epsilon"], delta=data["delta"])
    return jsonify(accounts.remaining(analyst, tight=False).to_dict())


@bp.get("/corpus-cap")
@require("admin")
def get_cap() -> Response:
    return jsonify(_accounts().cap_view())


@bp.put("/corpus-cap")
@require("admin")
def set_cap() -> Response:
    data = BudgetSchema().load(json_body())
    accounts = _accounts()
    accounts.set_cap(Budget(**data))
    return jsonify(accounts.cap_view())


@bp.get("/analysts/<analyst_id>/ledger")
@require("admin")
def analyst_ledger(analyst_id: str) -> Response:
    analyst = _analyst(analyst_id)
    page = PageSchema().load(request.args.to_dict())
    accounts = _accounts()
    entries = accounts.history(analyst, limit=page["limit"], offset=page["offset"])
    return jsonify(
        {
            "analyst_id": analyst_id,
            "remaining": accounts.remaining(analyst, tight=True).to_dict(),
            "entries": [e.to_dict() for e in entries],
            **page,
        }
    )


@bp.get("/audit")
@require("admin")
def audit_export() -> Response:
    args = AuditQuerySchema().load(request.args.to_dict())
    rows = audit.entries(
        services().engine,
        principal_id=args["analyst"],
        since=args["since"],
        until=args["until"],
        limit=args["limit"],
        after_id=args["after"],
    )
    next_after = rows[-1]["id"] if len(rows) == args["limit"] else None
    if args["format"] == "csv":
        resp = Response(audit.to_csv(rows), mimetype="text/csv")
        resp.headers["Content-Disposition"] = 'attachment; filename="privtext-audit.csv"'
        if next_after is not None:
            resp.headers["X-Next-After"] = str(next_after)
        return resp
    return jsonify({"entries": rows, "next_after": next_after})
