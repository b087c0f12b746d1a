"""``GET /metrics``: Prometheus metrics of the service (request counts and latencies by route).

They hold no corpus data, but they describe analysts' traffic (which routes, how often, how
fast), so a key is needed: a ``metrics`` key for a scraper, or an admin key.
"""

from __future__ import annotations

from flask import Blueprint, Response

from service.auth import require
from service.services import services

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
@require("admin", "metrics")
def metrics() -> Response:
    """Prometheus metrics (request counts and latencies by route; no corpus data)."""
    return services().metrics.render()
