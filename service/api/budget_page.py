"""``GET /v1/admin/budget-page``: a server-rendered picture of every analyst's spending.

The page shows the corpus-wide cap with a chart of everyone's cumulative spending against it
and, per analyst, the budget, the spent and remaining epsilon and a chart of cumulative spent
epsilon over time (inline SVG drawn here: no JavaScript, no external assets). Every chart
shares one time axis (from the earliest entry shown to now), so charts can be compared by
eye; analysts with at most ``NEAR_EXHAUSTION`` of their budget left are highlighted, and an
analyst's id is shown beside its name where another analyst has the same name (names are
unique since 2026-12-02; older stores may hold repeats). Its figures come from the same
ledger calls as the JSON admin API: ``Ledger.corpus_remaining(tight=False)`` as ``GET
/v1/admin/corpus-cap`` and ``Ledger.remaining(id, tight=True)`` as ``GET
/v1/admin/analysts/<id>/ledger``; the cap's chart replays ``Ledger.live_entries()``, every
entry the cap counts.

Authentication: an admin key as ``Authorization: Bearer``, or, because a browser cannot send
that header from its address bar, a session: a browser that opens the page without one gets
a sign-in form (401, HTML), which posts the admin key once to ``POST /v1/admin/session``; that
sets the cookie ``privtext_session`` to a random session token (``service.page_sessions``:
stored hashed in the state store, 30 minutes, never the key itself) and redirects to the page.
``POST /v1/admin/budget-page/sign-out`` deletes the session. The cookie is HttpOnly,
SameSite=Strict, Secure over HTTPS, and its path is the page's: it is read by the page and its
sign-out only, so the JSON API can never be driven by a request riding on it. Sign-in and
sign-out are refused (403) unless they come from this origin (``Origin`` and
``Sec-Fetch-Site``, when the browser sends them): another site cannot sign a browser in under
its own key (login CSRF).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from flask import Blueprint, Response, g, redirect, render_template, request, url_for
from marshmallow import Schema, fields, validate
from sqlalchemy import Engine
from werkzeug.wrappers import Response as BaseResponse

from mechanisms.ledger import Ledger, LedgerEntry, Remaining
from service import page_sessions
from service.accounts import Analyst
from service.auth import authenticate, public, require
from service.body import json_body
from service.budget_chart import Chart, Point, build_chart, cumulative_spend, fmt_epsilon
from service.charging import get_ledger
from service.errors import APIError
from service.schemas.admin import PageSchema
from service.services import services

bp = Blueprint("budget_page", __name__, url_prefix="/v1/admin")

COOKIE = "privtext_session"
COOKIE_MAX_AGE = int(page_sessions.SESSION_TTL.total_seconds())  # as long as the session
HISTORY_PAGE = 1000
#: The delta ``make_remaining`` reports a budget-less principal's spend at.
NO_BUDGET_DELTA = 1e-6
#: An analyst with at most this share of its budget's epsilon left is highlighted.
NEAR_EXHAUSTION = 0.1

F = TypeVar("F", bound=Callable[..., Any])

_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # not no-referrer: with it a browser sends "Origin: null" on the page's own form posts,
    # which the same-origin check of sign-in and sign-out must refuse
    "Referrer-Policy": "same-origin",
}


class SessionSchema(Schema):
    """``{"key": "ptk_..."}`` (JSON or form): the admin key that opens a page session."""

    key = fields.String(required=True, validate=validate.Length(min=1, max=512))


@dataclass(frozen=True)
class AnalystView:
    id: str
    name: str
    disabled: bool
    remaining: Remaining
    chart: Chart
    entries: int
    name_repeats: bool  # another analyst has this name: show the id beside it
    near_exhaustion: bool

    @property
    def left_share(self) -> float | None:
        """The share of the budget's epsilon left (None without a budget)."""
        budget = self.remaining.budget
        if budget is None or budget.epsilon <= 0:
            return None
        return max(0.0, self.remaining.remaining_epsilon / budget.epsilon)


def near_exhaustion(remaining: Remaining) -> bool:
    """Whether at most ``NEAR_EXHAUSTION`` of the budget's epsilon is left."""
    budget = remaining.budget
    if budget is None:
        return False
    return remaining.remaining_epsilon <= NEAR_EXHAUSTION * budget.epsilon


def _engine() -> Engine:
    return services().engine


def _wants_html() -> bool:
    """Whether the client asked for HTML before JSON (a browser's navigation does)."""
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html"


def _page_response(html: str, status: int = 200) -> Response:
    resp = Response(html, status=status, mimetype="text/html")
    resp.headers.update(_HEADERS)
    return resp


def _sign_in_page(status: int, error: str | None = None) -> Response:
    html = render_template(
        "budget_sign_in.html", action=url_for(".create_session"), error=error
    )
    resp = _page_response(html, status)
    if request.cookies.get(COOKIE):  # a stale session: forget it
        resp.delete_cookie(COOKIE, path=url_for(".budget_page"), httponly=True, samesite="Strict")
    return resp


def accept_session_cookie(view: F) -> F:
    """Let the page's GET authenticate from the ``privtext_session`` cookie.

    Only when no Authorization header is sent. Without a live session a browser (one that
    prefers HTML) gets the sign-in form with status 401; any other client gets ``require``'s
    JSON 401. Never use this on a JSON or state-changing route.
    """

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "Authorization" not in request.headers:
            principal = page_sessions.session_principal(_engine(), request.cookies.get(COOKIE))
            if principal is not None:
                g.principal = principal
                g.page_session = True
            elif _wants_html():
                return _sign_in_page(401)
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _same_origin() -> bool:
    """False when the browser says the request comes from another site or origin."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    return origin is None or origin == request.host_url.rstrip("/")


def _analysts(limit: int, offset: int) -> list[Analyst]:
    # The same selection and order as GET /v1/admin/analysts.
    return services().accounts.analysts(limit=limit, offset=offset)


def _history(ledger: Ledger, principal_id: str) -> list[LedgerEntry]:
    entries: list[LedgerEntry] = []
    while True:
        page = ledger.history(principal_id, limit=HISTORY_PAGE, offset=len(entries))
        entries += page
        if len(page) < HISTORY_PAGE:
            return entries


@dataclass(frozen=True)
class _Series:
    analyst: Analyst
    remaining: Remaining
    points: list[Point]
    entries: int


def _series(ledger: Ledger, analyst: Analyst) -> _Series:
    remaining = ledger.remaining(analyst.id, tight=True)
    budget = remaining.budget
    entries = _history(ledger, analyst.id)
    delta = budget.delta if budget is not None else NO_BUDGET_DELTA
    return _Series(analyst, remaining, cumulative_spend(entries, delta), len(entries))


def _axis(series: list[list[Point]], now: datetime) -> tuple[datetime, datetime]:
    """The shared time axis: the earliest point shown to now (or the latest point, if a
    worker's clock ran ahead)."""
    firsts = [s[0].at for s in series if s]
    lasts = [s[-1].at for s in series if s]
    start = min(firsts) if firsts else now - timedelta(hours=1)
    return start, max([now, *lasts])


def _repeated_names() -> set[str]:
    counts = Counter(a.name for a in services().accounts.analysts())
    return {name for name, n in counts.items() if n > 1}


@bp.get("/budget-page")
@accept_session_cookie
@require("admin")
def budget_page() -> Response:
    """The HTML page (``?limit=&offset=`` page through analysts, as the admin list does)."""
    page = PageSchema().load(request.args.to_dict())
    ledger = get_ledger()
    now = datetime.now(UTC)
    cap = ledger.corpus_remaining(tight=False)
    cap_delta = cap.budget.delta if cap.budget is not None else NO_BUDGET_DELTA
    cap_points = cumulative_spend(ledger.live_entries(), cap_delta)
    series = [_series(ledger, a) for a in _analysts(page["limit"], page["offset"])]
    start, end = _axis([cap_points, *(s.points for s in series)], now)
    repeated = _repeated_names()
    analysts = [
        AnalystView(
            s.analyst.id,
            s.analyst.name,
            s.analyst.disabled,
            s.remaining,
            build_chart(
                s.points,
                budget_epsilon=s.remaining.budget.epsilon if s.remaining.budget else None,
                start=start,
                end=end,
            ),
            s.entries,
            s.analyst.name in repeated,
            near_exhaustion(s.remaining),
        )
        for s in series
    ]
    cap_chart = build_chart(
        cap_points,
        budget_epsilon=cap.budget.epsilon if cap.budget else None,
        start=start,
        end=end,
    )
    html = render_template(
        "budget_page.html",
        cap=cap,
        cap_chart=cap_chart,
        analysts=analysts,
        near_exhaustion=NEAR_EXHAUSTION,
        page=page,
        generated_at=now,
        fmt=fmt_epsilon,
        accounting=cap.to_dict(),
        sign_out=url_for(".sign_out") if g.get("page_session") else None,
    )
    return _page_response(html)


def _refuse(status: int, code: str, message: str) -> Response:
    """A failed sign-in: the form again (with the message) for a browser, else the JSON error."""
    if not request.is_json and _wants_html():
        return _sign_in_page(status, message)
    raise APIError(status, code, message)


@bp.post("/session")
@public
def create_session() -> BaseResponse:
    """Check an admin key (JSON or form ``key``), open a session, set its cookie, 303 to the page.

    The cookie holds the session token (30 minutes), never the key.
    """
    if not _same_origin():
        # Another site's form must not sign this browser in (login CSRF) under its own key.
        return _refuse(403, "forbidden", "Sign in from this service's own pages only.")
    body = json_body() if request.is_json else request.form.to_dict()
    key = SessionSchema().load(body)["key"]
    principal = authenticate(_engine(), key)
    if principal is None:
        return _refuse(401, "unauthorized", "The API key is unknown, revoked or disabled.")
    if principal.role != "admin":
        return _refuse(403, "forbidden", "Only an admin key may open the budget page.")
    token = page_sessions.open_session(_engine(), principal)
    target = url_for(".budget_page")
    resp = redirect(target, code=303)
    resp.set_cookie(
        COOKIE,
        token,
        max_age=COOKIE_MAX_AGE,
        path=target,
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.post("/budget-page/sign-out")
@public
def sign_out() -> BaseResponse:
    """Delete the browser's session (if any), clear its cookie, 303 to the page (its form)."""
    if not _same_origin():
        raise APIError(403, "forbidden", "Sign out from this service's own pages only.")
    page_sessions.close_session(_engine(), request.cookies.get(COOKIE))
    target = url_for(".budget_page")
    resp = redirect(target, code=303)
    resp.delete_cookie(
        COOKIE, path=target, secure=request.is_secure, httponly=True, samesite="Strict"
    )
    resp.headers["Cache-Control"] = "no-store"
    return resp
