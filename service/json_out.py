"""JSON out of the service: never a non-finite number.

Python's ``json`` writes ``inf`` and ``nan`` as the bare tokens ``Infinity`` and ``NaN``, which
are not JSON (RFC 8259) and which strict parsers reject. Some figures are legitimately
infinite: the spent epsilon of a history at a delta at which no finite epsilon holds (a budget
stored with delta 0 before the delta limit, holding a Gaussian event). So every response body
maps a non-finite float to ``null`` (openapi.yaml marks such figures nullable) and is written
with ``allow_nan=False``: anything that slips past the mapping (a non-finite number inside an
object the encoder converts itself) becomes a logged 500 with the fixed message, never
invalid JSON.
"""

from __future__ import annotations

import math
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

__all__ = ["FiniteJSONProvider", "finite", "init_app"]


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


class FiniteJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, with non-finite floats written as null and ``allow_nan=False``."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(finite(obj), **kwargs)


def init_app(app: Flask) -> None:
    """Install :class:`FiniteJSONProvider` as ``app.json`` (call before configuring it)."""
    app.json = FiniteJSONProvider(app)
