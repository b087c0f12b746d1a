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
