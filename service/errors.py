"""One JSON error envelope for every error: ``{"code", "status", "message", "errors"}``.

Only this module turns exceptions into HTTP statuses. A 500 says nothing about the data:
its message is fixed and the request id lets an operator find the logged traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, jsonify
from marshmallow import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from mechanisms.errors import BudgetExhaustedError, InvalidParameterError, PrivacyError

log = logging.getLogger("privtext.errors")


class APIError(Exception):
    """An error with a status, a stable machine-readable code and a safe message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or {}
        self.headers = headers or {}


def error_response(
    status: int,
    code: str,
    message: str,
    errors: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "code": code,
        "status": status,
        "message": message,
        "errors": errors or {},
    }
    request_id = g.get("request_id") if g else None
    if request_id:
        body["request_id"] = request_id
    resp = jsonify(body)
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


#: The answer to a state store that cannot be reached, times out or cannot write (a full or
#: read-only disk): no answer left, and the message says nothing about the request.
STORE_UNAVAILABLE = (
    503,
    "store_unavailable",
    "The service's state store is unavailable right now; no answer was released. Retry later.",
)
STORE_RETRY_AFTER_S = 5


def is_store_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the state store is down rather than that the request is wrong.

    ``OperationalError`` covers a refused or lost connection, a connect or statement timeout
    (PostgreSQL ``QueryCanceled``, the client's own limit in ``service/store/db.py``), a SQLite
    busy timeout ("database is locked"), "disk I/O error", "database or disk is full" and
    "attempt to write a readonly database"; any driver error that invalidated its connection
    and a pool that hands out no connection in time count too.
    """
    if isinstance(exc, OperationalError | PoolTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "too_many_requests",
    503: "service_unavailable",
}


def register_error_handlers(app: Flask) -> None:  # noqa: C901 - one small nested handler per error type
    @app.errorhandler(APIError)
    def _api_error(exc: APIError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.errors, exc.headers)

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Response:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        return error_response(422, "validation_error", "The request is not valid.", messages)

    @app.errorhandler(BudgetExhaustedError)
    def _budget(exc: BudgetExhaustedError) -> Response:
        errors = {
            "remaining_epsilon": getattr(exc, "remaining_epsilon", None),
            "remaining_delta": getattr(exc, "remaining_delta", None),
        }
        return error_response(409, "budget_exhausted", str(exc), errors)

    @app.errorhandler(InvalidParameterError)
    def _invalid(exc: InvalidParameterError) -> Response:
        return error_response(422, "invalid_privacy_parameter", str(exc))

    @app.errorhandler(PrivacyError)
    def _privacy(exc: PrivacyError) -> Response:
        return error_response(422, "privacy_error", str(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        headers: dict[str, str] = {}
        if status == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return error_response(
            status, code, exc.description or code.replace("_", " "), None, headers
        )

    @app.errorhandler(Exception)
    def _unhandled(exc: Exception) -> Response:
        # The traceback goes to the operator's log only; the client gets a fixed message.
        log.exception("unhandled error", extra={"request_id": g.get("request_id")})
        return error_response(500, "internal_error", "Internal server error.")

    # A store outage before the corpus is read (authentication, rate limit, replay lookup,
    # reservation): nothing was released, so the client may retry. A failure after the read
    # never gets here: ``service/charging.py`` charges it and answers ``500 query_failed``.
    @app.errorhandler(DBAPIError)
    @app.errorhandler(PoolTimeoutError)
    def _store(exc: Exception) -> Response:
        if not is_store_outage(exc):
            return _unhandled(exc)
        # The driver's own error (class and message), not SQLAlchemy's text: that one carries
        # the statement's parameters, which can hold analysts' query terms or answers.
        cause = getattr(exc, "orig", None) or exc
        log.error(
            "state store unavailable: %s: %s",
            type(cause).__name__,
            str(cause).strip().splitlines()[0] if str(cause).strip() else "",
            extra={"request_id": g.get("request_id")},
        )
        return error_response(*STORE_UNAVAILABLE, headers={"Retry-After": str(STORE_RETRY_AFTER_S)})
