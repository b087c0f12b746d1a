"""gunicorn's sync worker, with its own error pages in the service's JSON error envelope.

A request gunicorn cannot parse (a malformed request line or header, a request line over
``limit_request_line``, too many or too large header fields, an unsupported transfer coding)
never reaches Flask: gunicorn answers it from ``Worker.handle_error`` with an HTML page.
``JsonErrorWorker`` keeps gunicorn's decision (status, reason, the warning it logs) and
replaces only the page: ``{"code", "status", "message", "errors"}`` as
``application/json``, with the headers every other response carries. The message is fixed
per status; nothing of the request is echoed back.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from gunicorn import util
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


class JsonErrorWorker(SyncWorker):  # type: ignore[misc]
    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        page = _StatusLine()
        super().handle_error(req, page, addr, exc)
        if not page.data:  # gunicorn could not build a page either: nothing to send
            return
        try:
            util.write_nonblock(client, error_bytes(*page.status()))
        except Exception:  # noqa: BLE001 - the client may be gone, as in gunicorn's own handler
            self.log.debug("Failed to send error message.")
