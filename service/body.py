"""Reading a request: one rule for every route that takes a JSON body or a query string.

A JSON body is refused before any schema, rate limit or charge sees it when it is not JSON
(415), is over the size limit (413, chunked bodies included), or is not a JSON object nested
at most ``MAX_JSON_DEPTH`` deep whose strings and keys are all valid Unicode (400): a lone
surrogate such as ``"\\ud800"`` parses in Python but cannot be stored or encoded as UTF-8.

A query string may only hold the parameters its route declares in ``QUERY_ARGS``; any other
is a 422, on every route (``init_app`` installs the check).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, request

from service.errors import APIError

#: Deepest nesting of objects and arrays a body may have (the top-level object is depth 1);
#: the deepest documented body is 4.
MAX_JSON_DEPTH = 64

#: The query parameters each route takes, by endpoint; a route not listed takes none.
QUERY_ARGS: dict[str, tuple[str, ...]] = {
    "admin.list_analysts": ("limit", "offset"),
    "admin.analyst_ledger": ("limit", "offset"),
    "admin.audit_export": ("format", "analyst", "since", "until", "limit", "after"),
    "budget.own_history": ("limit", "offset"),
    "budget_page.budget_page": ("limit", "offset"),
    "jobs.list_jobs": ("kind",),
    "embeddings.get_embedding_result": ("format",),
}


def json_body() -> dict[str, Any]:
    """The body as a JSON object, checked as the module docstring says.

    Raises APIError 415, 413 or 400 (in that order of checks).
    """
    if not request.is_json:
        raise APIError(415, "unsupported_media_type", "Send the body as application/json.")
    data = _read_body()
    try:
        body = json.loads(data)
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        raise APIError(400, "bad_request", "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise APIError(400, "bad_request", "The body must be a JSON object.")
    _check_tree(body)
    return body


def _read_body() -> bytes:
    """The raw body; 413 when it is longer than the route's ``max_content_length``.

    werkzeug checks a declared Content-Length itself, but a chunked body (no Content-Length)
    is only cut at the limit, silently: one byte more behind the cut means it was too large.
    """
    data = request.get_data(cache=True)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(data) >= limit:
        if request.environ["wsgi.input"].read(1):
            raise APIError(413, "payload_too_large", f"The body is larger than {limit} bytes.")
    return data


def _too_deep() -> APIError:
    return APIError(
        400, "bad_request", f"The body is nested deeper than {MAX_JSON_DEPTH} levels."
    )


def _check_tree(body: dict[str, Any]) -> None:
    """400 when ``body`` nests deeper than MAX_JSON_DEPTH or holds a string (or key) that is
    not valid Unicode. Iterative, so that no body can exhaust the stack."""
    stack: list[tuple[Any, int, str]] = [(body, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, str):
            _check_text(value, path)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise _too_deep()
        if isinstance(value, dict):
            for key, item in value.items():
                here = f"{path}.{key}" if path else key
                _check_text(key, here)
                stack.append((item, depth + 1, here))
        else:
            stack.extend(
                (item, depth + 1, f"{path}.{i}" if path else str(i))
                for i, item in enumerate(value)
            )


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = path.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        raise APIError(
            400,
            "bad_request",
            "The body holds a string that is not valid Unicode (a lone surrogate).",
            {shown or "_body": ["Not valid Unicode: a lone surrogate."]},
        ) from None


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


def init_app(app: Flask) -> None:
    """Refuse, on every route, query parameters that the route does not take (422)."""

    @app.before_request
    def _known_args_only() -> None:
        if request.args and request.endpoint is not None:
            reject_unknown_args(*QUERY_ARGS.get(request.endpoint, ()))
