"""Request ids, one structured JSON log line per request, and Prometheus metrics.

The log line holds the request id, principal id, route, status and latency; never a body,
a query string or message text. Under gunicorn, metrics are aggregated across workers with
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by gunicorn.conf.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import uuid

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("request_id", "principal", "route", "method", "status", "latency_ms"):
            value = getattr(record, key, None)
            if value is not None:
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure_logging(level: str) -> None:
    root = logging.getLogger("privtext")
    if not any(getattr(h, "_privtext", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._privtext = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "privtext_http_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "privtext_http_request_seconds",
            "HTTP request latency by route template.",
            ["route"],
            registry=self.registry,
        )

    def render(self) -> Response:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            data = generate_latest(registry)
        else:
            data = generate_latest(self.registry)
        return Response(data, mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Flask, metrics: Metrics) -> None:
    """Count and time every request in ``metrics`` and write one access-log line for it."""
    access = logging.getLogger("privtext.access")

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        latency = time.perf_counter() - g.get("started", time.perf_counter())
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        principal = g.get("principal")
        response.headers["X-Request-Id"] = g.get("request_id", "")
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(latency)
        access.info(
            "request",
            extra={
                "request_id": g.get("request_id"),
                "principal": principal.id if principal is not None else None,
                "route": route,
                "method": request.method,
                "status": response.status_code,
                "latency_ms": round(latency * 1000, 3),
            },
        )
        return response
