"""Reading a JSON request body: one rule for every route that takes one."""

from __future__ import annotations

from typing import Any

from flask import request

from service.errors import APIError


def json_body() -> dict[str, Any]:
    """The body as a JSON object: 415 unless it is sent as JSON, 400 unless it is an object."""
    if not request.is_json:
        raise APIError(415, "unsupported_media_type", "Send the body as application/json.")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise APIError(400, "bad_request", "The body must be a JSON object.")
    return body


def reject_unknown_args(*allowed: str) -> None:
    """422 when the query string has a parameter the route does not take."""
    unknown = sorted(set(request.args) - set(allowed))
    if unknown:
        raise APIError(
            422,
            "validation_error",
            "The request is not valid.",
            {name: ["Unknown field."] for name in unknown},
        )
