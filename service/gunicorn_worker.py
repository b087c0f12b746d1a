"""gunicorn's workers, with their own error pages in the service's JSON error envelope.

A request gunicorn cannot parse (a malformed request line or header, a request line over
``limit_request_line``, too many or too large header fields, an unsupported transfer coding)
never reaches Flask: gunicorn answers it from ``Worker.handle_error`` with an HTML page.
``JsonErrorWorker`` (sync) and ``JsonErrorThreadWorker`` (gthread, chosen by
``service.gunicorn_conf`` when ``PRIVTEXT_THREADS`` > 1, as gunicorn itself would for ``sync``)
keep gunicorn's decision (status, reason, the warning it logs) and replace only the page:
``{"code", "status", "message", "errors"}`` as ``application/json``, with the headers every
other response carries. The message is fixed per status; nothing of the request is echoed back.

Stopping is graceful on every signal. gunicorn's workers exit at once on SIGINT and SIGQUIT
(``sys.exit`` inside the signal handler), which cuts the request in flight short with a 500,
and Ctrl-C in a terminal sends SIGINT to the master and to every worker.
:func:`graceful_signals` (``post_worker_init``) makes them stop like SIGTERM: the request in
flight is finished, then the worker exits. The master has stopped listening by then, and
kills a worker still busy after ``graceful_timeout``.

Recycling (``max_requests``): the workers of one generation reach the same request count at
about the same time under even load, and while a recycled worker's successor boots the
others carry its load (the issue measured 1.6-5 s latency spikes). :func:`recycle_after`
staggers them (``post_fork``): the worker forked into slot ``i`` of ``n`` recycles after
``max_requests * (1 + i / n)`` requests plus a random jitter, and a replacement (forked while
the other ``n - 1`` are alive) after ``max_requests * (2n - 1) / n``, so that under even load
the workers' recycles stay about ``max_requests / n`` requests apart.
"""

from __future__ import annotations

import json
import random
import signal
import socket
from typing import Any

from gunicorn import util
from gunicorn.workers.base import Worker
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

#: status -> (code, message) of the JSON envelope.
ERRORS = {
    400: ("bad_request", "The request is not valid HTTP."),
    403: ("forbidden", "The request is forbidden."),
    414: ("uri_too_long", "The request line is too long."),
    417: ("expectation_failed", "The Expect header cannot be met."),
    431: ("request_header_fields_too_large", "The request has too many or too large headers."),
    500: ("internal_error", "Internal server error."),
    501: ("not_implemented", "The request's transfer coding is not supported."),
}


class _StatusLine:
    """Stands in for the client socket while gunicorn writes its HTML page: keeps the status
    line, sends nothing."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.data += data

    def status(self) -> tuple[int, str]:
        line = self.data.split(b"\r\n", 1)[0].decode("latin-1")
        _, status, reason = (line.split(" ", 2) + ["", ""])[:3]
        return (int(status), reason) if status.isdigit() else (500, "Internal Server Error")


def error_bytes(status: int, reason: str) -> bytes:
    """The whole HTTP/1.1 response for ``status``: a JSON envelope, then the connection closes."""
    code, message = ERRORS.get(status, ERRORS[500] if status >= 500 else ERRORS[400])
    body = json.dumps({"code": code, "status": status, "message": message, "errors": {}})
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "\r\n"
    )
    return (head + body).encode("latin-1")


def graceful_signals(worker: Any) -> None:
    """gunicorn ``post_worker_init`` hook: SIGINT and SIGQUIT stop the worker after the
    request in flight, as SIGTERM does (gunicorn's own handler exits mid-request)."""
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, worker.handle_exit)


def recycle_after(
    slot: int, workers: int, max_requests: int, jitter: int, rng: random.Random | None = None
) -> int:
    """The request count after which the worker forked into ``slot`` (the number of workers
    alive when it was forked, modulo ``workers``) recycles; 0 (never) when ``max_requests``
    is 0."""
    if max_requests <= 0:
        return 0
    n = max(1, workers)
    offset = (slot % n) * max_requests // n
    return max_requests + offset + (rng or random).randint(0, max(0, jitter))


def stagger_recycling(server: Any, worker: Any) -> None:
    """gunicorn ``post_fork`` hook: the new worker's ``max_requests`` by :func:`recycle_after`
    (gunicorn draws ``max_requests + randint(0, max_requests_jitter)`` for every worker)."""
    limit = recycle_after(
        len(server.WORKERS),
        server.num_workers,
        server.cfg.max_requests,
        server.cfg.max_requests_jitter,
    )
    if limit > 0:
        worker.max_requests = limit


class _JsonErrors(Worker):  # type: ignore[misc]
    """Mixed in before a gunicorn worker class: its error pages become JSON."""

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        page = _StatusLine()
        super().handle_error(req, page, addr, exc)
        if not page.data:  # gunicorn could not build a page either: nothing to send
            return
        try:
            util.write_nonblock(client, error_bytes(*page.status()))
        except Exception:  # noqa: BLE001 - the client may be gone, as in gunicorn's own handler
            self.log.debug("Failed to send error message.")


class JsonErrorWorker(_JsonErrors, SyncWorker):  # type: ignore[misc]
    """gunicorn's sync worker with JSON error pages."""


class JsonErrorThreadWorker(_JsonErrors, ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker with JSON error pages."""
