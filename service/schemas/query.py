"""The request schema of ``POST /v1/queries``: ``kind`` is one of the registered kinds, and
each kind brings its own fields (marshmallow; unknown fields are rejected).

The schema is assembled from the registry (``kinds/``): the fields every kind shares
(``fields.py``: filters, group-by, privacy, cap, confidence level, dry run) and the fields each
kind declares. A field of one kind sent with another is refused with the owning kind's message,
and each kind checks its own fields (``QueryKind.check_field``). Validation happens here, before
any data is touched, and again in ``mechanisms/`` where the parameters are used.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from service.queries.kinds import KINDS, QueryKind, kind_fields, kind_named
from service.schemas.fields import FiniteFloat, StrictBoolean
from service.schemas.query_fields import (
    FEATURES,
    TIME_KEYS,
    FiltersSchema,
    GroupBySchema,
    PrivacySchema,
    StrictSchema,
)

__all__ = ["FEATURES", "KINDS", "TIME_KEYS", "QuerySchema"]

#: The order in which kind-specific fields are checked; the first problem found is the one
#: reported (the order these errors have always had). Fields of kinds added later follow.
_CHECKED_FIRST = (
    "feature",
    "bins",
    "quantiles",
    "k",
    "terms",
    "max_terms_per_sender",
    "bigrams",
    "clusters",
    "iterations",
    "of",
)
KIND_FIELDS = kind_fields()
CHECK_ORDER = (
    *(n for n in _CHECKED_FIRST if n in KIND_FIELDS),
    *(n for n in KIND_FIELDS if n not in _CHECKED_FIRST),
)
MAX_CAP = 10_000


def _check_field(kind: type[QueryKind], name: str, data: dict[str, Any]) -> None:
    """The kind's own checks on field ``name``, or the owner's refusal if it is not the
    kind's."""
    if name in kind.request_fields:
        kind.check_field(name, data)
        return
    owned = KIND_FIELDS[name]
    if owned.elsewhere is not None and owned.given(data, name):
        raise ValidationError(owned.elsewhere.format(kind=kind.name), name)


def _check_cap(cap: Any) -> None:
    if cap is None or cap == "auto":
        return
    if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= MAX_CAP:
        raise ValidationError('an integer from 1 to 10000, or "auto"', "max_messages_per_sender")


class _KindChecks(StrictSchema):
    @validates_schema
    def _check_kind_fields(self, data: dict[str, Any], **_: Any) -> None:
        kind = kind_named(data["kind"])
        for name in CHECK_ORDER:
            _check_field(kind, name, data)
            if name == kind.group_by_checked_after and not kind.takes_group_by:
                if "group_by" in data:
                    raise ValidationError(f"{kind.name} does not take group_by", "group_by")
        _check_cap(data.get("max_messages_per_sender"))


def _all_fields() -> dict[str, fields.Field]:
    """``kind``, then every kind's fields (registry order), then the shared ones."""
    return {
        "kind": fields.String(required=True, validate=validate.OneOf(list(KINDS))),
        **{name: kf.field for name, kf in KIND_FIELDS.items()},
        "group_by": fields.Nested(GroupBySchema),
        "filters": fields.Nested(FiltersSchema, load_default=dict),
        "privacy": fields.Nested(PrivacySchema, load_default=dict),
        "max_messages_per_sender": fields.Raw(load_default=None),
        "confidence_level": FiniteFloat(
            load_default=0.95, validate=validate.Range(min=0.5, max=0.9999)
        ),
        "dry_run": StrictBoolean(load_default=False),
    }


QuerySchema: type[Schema] = _KindChecks.from_dict(_all_fields(), name="QuerySchema")
