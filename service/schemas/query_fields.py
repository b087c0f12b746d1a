"""The parts of a query request that every kind shares: filters, group-by, privacy.

``schemas.QuerySchema`` puts these together with the fields each kind declares in its own
module (``kinds/``). Validation happens here, before any data is touched, and again in
``mechanisms/`` where the parameters are used. Unknown fields are rejected everywhere.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from service.schemas.fields import FiniteFloat, PublicDateTime

FEATURES = (
    "chars",
    "tokens",
    "sentiment_compound",
    "sentiment_pos",
    "sentiment_neu",
    "sentiment_neg",
)
TIME_KEYS = ("hour_of_day", "weekday", "day", "week", "month")
MAX_GROUPS = 1000


class StrictSchema(Schema):
    """Reject unknown fields (marshmallow's default, made explicit)."""

    class Meta:
        unknown = "raise"


class TimeRangeSchema(StrictSchema):
    start = PublicDateTime(required=True, default_timezone=None)
    end = PublicDateTime(required=True, default_timezone=None)

    @validates_schema
    def _order(self, data: dict[str, Any], **_: Any) -> None:
        if data["start"] >= data["end"]:
            raise ValidationError("start must be before end", "end")


class KeywordsSchema(StrictSchema):
    terms = fields.List(
        fields.String(validate=validate.Length(min=1, max=64)),
        required=True,
        validate=validate.Length(min=1, max=20),
    )
    match = fields.String(load_default="any", validate=validate.OneOf(["any", "all"]))


class FiltersSchema(StrictSchema):
    time_range = fields.Nested(TimeRangeSchema)
    keywords = fields.Nested(KeywordsSchema)
    metadata = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=64)),
        values=fields.List(
            fields.String(validate=validate.Length(max=200)),
            validate=validate.Length(min=1, max=100),
        ),
        validate=validate.Length(max=10),
    )


class BoundsSchema(StrictSchema):
    lower = FiniteFloat(required=True)
    upper = FiniteFloat(required=True)

    @validates_schema
    def _order(self, data: dict[str, Any], **_: Any) -> None:
        if data["lower"] >= data["upper"]:
            raise ValidationError("lower must be less than upper", "upper")


class AccuracySchema(StrictSchema):
    half_width = FiniteFloat(required=True, validate=validate.Range(min=0, min_inclusive=False))
    level = FiniteFloat(load_default=0.95, validate=validate.Range(min=0.5, max=0.9999))


class PrivacySchema(StrictSchema):
    mechanism = fields.String(
        load_default="laplace", validate=validate.OneOf(["laplace", "gaussian"])
    )
    epsilon = FiniteFloat(validate=validate.Range(min=0, max=10, min_inclusive=False))
    delta = FiniteFloat(validate=validate.Range(min=0, max=1e-3, min_inclusive=False))
    accuracy = fields.Nested(AccuracySchema)

    @validates_schema
    def _cost_or_accuracy(self, data: dict[str, Any], **_: Any) -> None:
        if "epsilon" in data and "accuracy" in data:
            raise ValidationError("give either epsilon or accuracy, not both", "accuracy")


class GroupBySchema(StrictSchema):
    time = fields.String(validate=validate.OneOf(TIME_KEYS))
    metadata = fields.String(validate=validate.Length(min=1, max=64))
    values = fields.List(
        fields.String(validate=validate.Length(max=200)),
        validate=validate.Length(min=1, max=MAX_GROUPS),
    )
    range = fields.Nested(TimeRangeSchema)

    @validates_schema
    def _one_key(self, data: dict[str, Any], **_: Any) -> None:
        if ("time" in data) == ("metadata" in data):
            raise ValidationError("group by exactly one of time or metadata", "_schema")
        if "time" in data and "values" in data:
            raise ValidationError("values go with a metadata key", "values")
        if data.get("time") in ("day", "week", "month") and "range" not in data:
            raise ValidationError(f"grouping by {data['time']} needs a declared range", "range")
        if "metadata" in data and "range" in data:
            raise ValidationError("range goes with a time key", "range")
