"""``GET /v1/admin/budget-page``: a server-rendered picture of every analyst's spending.

The page shows the corpus-wide cap and, per analyst, the budget, the spent and remaining
epsilon and a chart of cumulative spent epsilon over time (inline SVG drawn here: no
JavaScript, no external assets). Its figures come from the same ledger calls as the JSON admin
API: ``Ledger.corpus_remaining(tight=False)`` as ``GET /v1/admin/corpus-cap`` and
``Ledger.remaining(id, tight=True)`` as ``GET /v1/admin/analysts/<id>/ledger``.

Authentication: an admin key as ``Authorization: Bearer``, or, because a browser cannot send
that header from its address bar, the same key in the HttpOnly, SameSite=Strict cookie
``privtext_admin`` that ``POST /v1/admin/session`` sets. The cookie is read by this page's
GET route only (its path is the page's path, and no other view looks at it), so the JSON API
can never be driven by a cross-site request riding on it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, g, redirect, render_template, request, url_for
from marshmallow import Schema, fields, validate
from sqlalchemy import Engine, select
from werkzeug.wrappers import Response as BaseResponse

from mechanisms.ledger import Ledger, LedgerEntry, Remaining
from service.auth import authenticate, public, require
from service.budget_chart import Chart, build_chart, cumulative_spend, fmt_epsilon
from service.charging import get_ledger
from service.db import principals
from service.errors import APIError
from service.schemas_admin import PageSchema

bp = Blueprint("budget_page", __name__, url_prefix="/v1/admin")

COOKIE = "privtext_admin"
COOKIE_MAX_AGE = 8 * 3600  # seconds; the admin signs in again after a working day
HISTORY_PAGE = 1000
#: The delta ``make_remaining`` reports a budget-less principal's spend at.
NO_BUDGET_DELTA = 1e-6

F = TypeVar("F", bound=Callable[..., Any])

_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class SessionSchema(Schema):
    """``{"key": "ptk_..."}`` (JSON or form): the admin key the page cookie will carry."""

    key = fields.String(required=True, validate=validate.Length(min=1, max=512))


@dataclass(frozen=True)
class AnalystView:
    id: str
    name: str
    disabled: bool
    remaining: Remaining
    chart: Chart
    entries: int


def _engine() -> Engine:
    return current_app.extensions["privtext"].engine  # type: ignore[no-any-return]


def accept_session_cookie(view: F) -> F:
    """Let the page's GET authenticate from the ``privtext_admin`` cookie.

    Only when no Authorization header is sent; an unknown or revoked key in the cookie is
    simply ignored, so ``require`` answers 401 as for a missing key. Never use this on a JSON
    or state-changing route.
    """

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = request.cookies.get(COOKIE)
        if token and "Authorization" not in request.headers:
            principal = authenticate(_engine(), token)
            if principal is not None:
                g.principal = principal
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _analysts(limit: int, offset: int) -> list[Any]:
    # The same selection and order as GET /v1/admin/analysts.
    with _engine().connect() as conn:
        return list(
            conn.execute(
                select(principals.c.id, principals.c.name, principals.c.disabled)
                .where(principals.c.role == "analyst")
                .order_by(principals.c.created_at, principals.c.id)
                .limit(limit)
                .offset(offset)
            ).all()
        )


def _history(ledger: Ledger, principal_id: str) -> list[LedgerEntry]:
    entries: list[LedgerEntry] = []
    while True:
        page = ledger.history(principal_id, limit=HISTORY_PAGE, offset=len(entries))
        entries += page
        if len(page) < HISTORY_PAGE:
            return entries


def _analyst_view(ledger: Ledger, row: Any, now: datetime) -> AnalystView:
    remaining = ledger.remaining(row.id, tight=True)
    budget = remaining.budget
    entries = _history(ledger, row.id)
    delta = budget.delta if budget is not None else NO_BUDGET_DELTA
    series = cumulative_spend(entries, delta)
    chart = build_chart(series, budget_epsilon=budget.epsilon if budget else None, end=now)
    return AnalystView(row.id, row.name, bool(row.disabled), remaining, chart, len(entries))


@bp.get("/budget-page")
@accept_session_cookie
@require("admin")
def budget_page() -> Response:
    """The HTML page (``?limit=&offset=`` page through analysts, as the admin list does)."""
    page = PageSchema().load(request.args.to_dict())
    ledger = get_ledger()
    now = datetime.now(UTC)
    cap = ledger.corpus_remaining(tight=False)
    analysts = [_analyst_view(ledger, r, now) for r in _analysts(page["limit"], page["offset"])]
    html = render_template(
        "budget_page.html",
        cap=cap,
        analysts=analysts,
        page=page,
        generated_at=now,
        fmt=fmt_epsilon,
        accounting=cap.to_dict(),
    )
    resp = Response(html, status=200, mimetype="text/html")
    resp.headers.update(_HEADERS)
    return resp


@bp.post("/session")
@public
def create_session() -> BaseResponse:
    """Check an admin key (JSON or form ``key``), set the page cookie, 303 to the page."""
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        # Another site's form must not sign this browser in (login CSRF) under its own key.
        raise APIError(403, "forbidden", "Sign in from this service's own pages only.")
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise APIError(400, "bad_request", "The body must be a JSON object.")
    else:
        body = request.form.to_dict()
    key = SessionSchema().load(body)["key"]
    principal = authenticate(_engine(), key)
    if principal is None:
        raise APIError(401, "unauthorized", "The API key is unknown, revoked or disabled.")
    if principal.role != "admin":
        raise APIError(403, "forbidden", "Only an admin key may open the budget page.")
    target = url_for(".budget_page")
    resp = redirect(target, code=303)
    resp.set_cookie(
        COOKIE,
        key,
        max_age=COOKIE_MAX_AGE,
        path=target,
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )
    resp.headers["Cache-Control"] = "no-store"
    return resp
