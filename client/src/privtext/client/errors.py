"""The service's JSON error envelope (``code``, ``status``, ``message``, ``errors``,
``request_id``) as exceptions, one class per kind of failure an analyst acts on differently.

Every exception is a :class:`PrivtextError` and carries the envelope's fields. The class is
chosen by ``code`` first, then by the HTTP status, so a code the client does not know still
gets the right family (a new 422 code is still a :class:`InvalidRequest`).
"""

from __future__ import annotations

from typing import Any


class PrivtextError(Exception):
    """An error answered by the service (or a response that is not its JSON envelope)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: dict[str, Any] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or {}
        self.request_id = request_id
        self.retry_after = retry_after


class InvalidRequest(PrivtextError):
    """400, 413, 415, 422: the request is malformed or invalid; nothing was charged.
    ``errors`` maps each offending field to its messages."""


class AuthenticationError(PrivtextError):
    """401: the key is missing, unknown or revoked (or its analyst is disabled)."""


class PermissionDenied(PrivtextError):
    """403: the key's role may not call this route."""


class NotFound(PrivtextError):
    """404: no such resource (or not yours)."""


class BudgetExhausted(PrivtextError):
    """409 ``budget_exhausted``: the budget (or the corpus-wide cap) cannot afford the query;
    nothing was read or charged. ``remaining_epsilon`` and ``remaining_delta`` are what is
    left."""

    @property
    def remaining_epsilon(self) -> float | None:
        value = self.errors.get("remaining_epsilon")
        return None if value is None else float(value)

    @property
    def remaining_delta(self) -> float | None:
        value = self.errors.get("remaining_delta")
        return None if value is None else float(value)


class Conflict(PrivtextError):
    """Another 409: ``query_in_progress`` (retry), ``name_taken``, ``embeddings_not_ready``,
    a job already finished."""


class RateLimited(PrivtextError):
    """429: too many requests; ``retry_after`` says how many seconds to wait. Nothing was
    charged."""


class QueryFailed(PrivtextError):
    """500 ``query_failed``: the query failed after the corpus was read. It was charged (a
    failure there could depend on the data), and the message is the same whatever failed."""


class ServerError(PrivtextError):
    """Another 5xx: ``store_unavailable`` (503, retry after ``retry_after``), an internal
    error, or a response that is not the service's JSON."""


_BY_CODE: dict[str, type[PrivtextError]] = {
    "budget_exhausted": BudgetExhausted,
    "query_failed": QueryFailed,
    "rate_limited": RateLimited,
}
_BY_STATUS: dict[int, type[PrivtextError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
}


def error_from(status: int, body: Any, retry_after: str | None = None) -> PrivtextError:
    """The exception for an HTTP error ``status`` whose decoded JSON body is ``body``."""
    if not isinstance(body, dict) or "code" not in body:
        return ServerError(status, "unexpected_response", f"HTTP {status} without a JSON envelope")
    code = str(body["code"])
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else PrivtextError
    errors = body.get("errors") if isinstance(body.get("errors"), dict) else {}
    wait = errors.get("retry_after", retry_after) if errors else retry_after
    return cls(
        status,
        code,
        str(body.get("message", "")),
        errors,
        body.get("request_id"),
        float(wait) if wait is not None else None,
    )
