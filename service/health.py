"""Operations: liveness, readiness, metrics (with a key) and the API contract."""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text

from service.auth import public, require
from service.errors import error_response

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@public
def healthz() -> Response:
    """The process is up."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
@public
def readyz() -> Response:
    """The state store answers and a corpus snapshot is live and readable."""
    svc = current_app.extensions["privtext"]
    checks = {"state_store": False, "corpus": False}
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["state_store"] = True
    except Exception:  # noqa: BLE001 - readiness reports, it does not raise
        current_app.logger.warning("readiness: state store unreachable")
    checks["corpus"] = svc.corpus.is_reachable()
    if all(checks.values()):
        return jsonify({"status": "ready", "checks": checks})
    return error_response(503, "not_ready", "The service is not ready.", {"checks": checks})


@bp.get("/metrics")
@require("admin", "metrics")
def metrics() -> Response:
    """Prometheus metrics (request counts and latencies by route; no corpus data).

    They describe analysts' traffic (which routes, how often, how fast), so a key is needed:
    a ``metrics`` key for a scraper, or an admin key.
    """
    return current_app.extensions["privtext_metrics"].render()  # type: ignore[no-any-return]


def spec_text() -> str:
    return resources.files("service").joinpath("openapi.yaml").read_text(encoding="utf-8")


@bp.get("/openapi.yaml")
@public
def openapi() -> Response:
    """The OpenAPI 3.1 contract of this service."""
    return Response(spec_text(), mimetype="application/yaml")
