"""Strict marshmallow fields for JSON request bodies: a value has the JSON type its field names.

marshmallow's own fields coerce: ``Float`` takes ``"1e-7"``, ``Integer`` truncates nothing
but takes ``"3"``, ``Boolean`` takes ``"yes"`` and ``1``. A request body is parsed JSON, so
there is no reason to guess: these fields accept only

* ``FiniteFloat``: a JSON number (an integer or a float, not a bool, not a string), finite;
* ``StrictInteger``: a JSON integer (not ``1.5``, not ``1.0``, not a bool, not a string);
* ``StrictBoolean``: ``true`` or ``false``;
* ``PublicDateTime``: an ISO 8601 date-time with an offset whose instant, in UTC, lies in
  ``EARLIEST`` .. ``LATEST`` (dates near year 1 or 9999 overflow once converted; the query
  planner checks the same window again where it uses the dates).

Query-string parameters are strings by nature and keep marshmallow's parsing fields.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from marshmallow import fields

#: The instants a request may name (inclusive, UTC): wide enough for any chat corpus, narrow
#: enough that every date computation on them stays in range.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


class FiniteFloat(fields.Float):
    """A finite JSON number, as a float."""

    default_error_messages = {"invalid": "Not a valid number."}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_nan=False, **kwargs)

    def _validated(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid", input=value)
        result = super()._validated(value)
        if result is not None and not math.isfinite(result):
            raise self.make_error("special")
        return result  # type: ignore[no-any-return]


class StrictInteger(fields.Integer):
    """A JSON integer."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)


class StrictBoolean(fields.Boolean):
    """``true`` or ``false``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class PublicDateTime(fields.AwareDateTime):
    """An aware ISO 8601 date-time whose UTC instant lies in EARLIEST..LATEST."""

    default_error_messages = {
        "range": f"Must lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC), inclusive.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        result = super()._deserialize(value, attr, data, **kwargs)
        try:
            utc = result.astimezone(UTC)
        except OverflowError:
            raise self.make_error("range") from None
        if not EARLIEST <= utc <= LATEST:
            raise self.make_error("range")
        return result
