"""``/v1/admin/*``: analysts, their keys and budgets, the corpus-wide cap, ledgers, the audit log.

Every route requires an admin key (``@require("admin")``); an analyst key gets 403 on all of
them. Analysts are principals with role ``analyst``; an unknown id (or an admin's id) is 404.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import Engine, select, update

from mechanisms.ledger import Budget
from service.auth import create_principal, issue_key, require, revoke_key
from service.body import json_body
from service.charging import get_ledger
from service.errors import APIError
from service.ledger import audit
from service.ledger.tables import budgets
from service.schemas_admin import (
    AnalystCreateSchema,
    AuditQuerySchema,
    BudgetRaiseSchema,
    BudgetSchema,
    PageSchema,
)
from service.tables import api_keys, principals

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


def _engine() -> Engine:
    return current_app.extensions["privtext"].engine  # type: ignore[no-any-return]


def _analyst_row(analyst_id: str) -> Any:
    with _engine().connect() as conn:
        row = conn.execute(
            select(principals, budgets.c.epsilon, budgets.c.delta)
            .outerjoin(budgets, budgets.c.principal_id == principals.c.id)
            .where(principals.c.id == analyst_id, principals.c.role == "analyst")
        ).first()
    if row is None:
        raise APIError(404, "not_found", "No analyst with this id.")
    return row


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "role": row.role,
        "disabled": bool(row.disabled),
        "created_at": row.created_at.isoformat(),
        "budget": None if row.epsilon is None else {"epsilon": row.epsilon, "delta": row.delta},
    }


def _keys(analyst_id: str) -> list[dict[str, Any]]:
    with _engine().connect() as conn:
        rows = conn.execute(
            select(api_keys.c.id, api_keys.c.created_at, api_keys.c.revoked_at)
            .where(api_keys.c.principal_id == analyst_id)
            .order_by(api_keys.c.created_at)
        ).all()
    return [
        {
            "key_id": r.id,
            "created_at": r.created_at.isoformat(),
            "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
        }
        for r in rows
    ]


# -- analysts ---------------------------------------------------------------------------


@bp.post("/analysts")
@require("admin")
def create_analyst() -> tuple[Response, int]:
    data = AnalystCreateSchema().load(json_body())
    pid = create_principal(_engine(), name=data["name"], role="analyst")
    if data["budget"] is not None:
        get_ledger().set_budget(pid, Budget(**data["budget"]))
    return jsonify(_view(_analyst_row(pid))), 201


@bp.get("/analysts")
@require("admin")
def list_analysts() -> Response:
    page = PageSchema().load(request.args.to_dict())
    with _engine().connect() as conn:
        rows = conn.execute(
            select(principals, budgets.c.epsilon, budgets.c.delta)
            .outerjoin(budgets, budgets.c.principal_id == principals.c.id)
            .where(principals.c.role == "analyst")
            .order_by(principals.c.created_at, principals.c.id)
            .limit(page["limit"])
            .offset(page["offset"])
        ).all()
    return jsonify({"analysts": [_view(r) for r in rows], **page})


@bp.get("/analysts/<analyst_id>")
@require("admin")
def get_analyst(analyst_id: str) -> Response:
    view = _view(_analyst_row(analyst_id))
    view["keys"] = _keys(analyst_id)
    view["remaining"] = get_ledger().remaining(analyst_id, tight=False).to_dict()
    return jsonify(view)


@bp.post("/analysts/<analyst_id>/disable")
@require("admin")
def disable_analyst(analyst_id: str) -> Response:
    _analyst_row(analyst_id)
    with _engine().begin() as conn:
        conn.execute(update(principals).where(principals.c.id == analyst_id).values(disabled=True))
    return jsonify(_view(_analyst_row(analyst_id)))


# -- keys -------------------------------------------------------------------------------


def _active_key(analyst_id: str, key_id: str) -> None:
    with _engine().connect() as conn:
        row = conn.execute(
            select(api_keys.c.id).where(
                api_keys.c.id == key_id,
                api_keys.c.principal_id == analyst_id,
                api_keys.c.revoked_at.is_(None),
            )
        ).first()
    if row is None:
        raise APIError(404, "not_found", "No active key with this id for this analyst.")


@bp.post("/analysts/<analyst_id>/keys")
@require("admin")
def issue_analyst_key(analyst_id: str) -> tuple[Response, int]:
    _analyst_row(analyst_id)
    token = issue_key(_engine(), analyst_id)
    return jsonify({"key_id": token.split("_", 2)[1], "token": token}), 201


@bp.post("/analysts/<analyst_id>/keys/<key_id>/rotate")
@require("admin")
def rotate_analyst_key(analyst_id: str, key_id: str) -> tuple[Response, int]:
    _analyst_row(analyst_id)
    _active_key(analyst_id, key_id)
    token = issue_key(_engine(), analyst_id)
    revoke_key(_engine(), key_id)
    return jsonify(
        {"key_id": token.split("_", 2)[1], "token": token, "revoked_key_id": key_id}
    ), 201


@bp.delete("/analysts/<analyst_id>/keys/<key_id>")
@require("admin")
def revoke_analyst_key(analyst_id: str, key_id: str) -> tuple[str, int]:
    _analyst_row(analyst_id)
    _active_key(analyst_id, key_id)
    revoke_key(_engine(), key_id)
    return "", 204


# -- budgets, cap, ledgers --------------------------------------------------------------


@bp.put("/analysts/<analyst_id>/budget")
@require("admin")
def set_budget(analyst_id: str) -> Response:
    _analyst_row(analyst_id)
    data = BudgetSchema().load(json_body())
    ledger = get_ledger()
    ledger.set_budget(analyst_id, Budget(**data))
    return jsonify(ledger.remaining(analyst_id, tight=False).to_dict())


@bp.post("/analysts/<analyst_id>/budget/raise")
@require("admin")
def raise_budget(analyst_id: str) -> Response:
    _analyst_row(analyst_id)
    data = BudgetRaiseSchema().load(json_body())
    ledger = get_ledger()
    ledger.raise_budget(analyst_id, epsilon=data["epsilon"], delta=data["delta"])
    return jsonify(ledger.remaining(analyst_id, tight=False).to_dict())


@bp.get("/corpus-cap")
@require("admin")
def get_cap() -> Response:
    return jsonify(get_ledger().corpus_remaining(tight=False).to_dict())


@bp.put("/corpus-cap")
@require("admin")
def set_cap() -> Response:
    data = BudgetSchema().load(json_body())
    ledger = get_ledger()
    ledger.set_corpus_cap(Budget(**data))
    return jsonify(ledger.corpus_remaining(tight=False).to_dict())


@bp.get("/analysts/<analyst_id>/ledger")
@require("admin")
def analyst_ledger(analyst_id: str) -> Response:
    _analyst_row(analyst_id)
    page = PageSchema().load(request.args.to_dict())
    ledger = get_ledger()
    entries = ledger.history(analyst_id, limit=page["limit"], offset=page["offset"])
    return jsonify(
        {
            "analyst_id": analyst_id,
            "remaining": ledger.remaining(analyst_id, tight=True).to_dict(),
            "entries": [e.to_dict() for e in entries],
            **page,
        }
    )


@bp.get("/audit")
@require("admin")
def audit_export() -> Response:
    args = AuditQuerySchema().load(request.args.to_dict())
    rows = audit.entries(
        _engine(),
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
