"""The request schema of ``POST /v1/queries`` (marshmallow; unknown fields are rejected).

Validation happens here, before any data is touched, and again in ``mechanisms/`` where the
parameters are used.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from service.schema_fields import FiniteFloat, PublicDateTime, StrictBoolean, StrictInteger

KINDS = (
    "count",
    "sum",
    "mean",
    "variance",
    "quantiles",
    "histogram",
    "top_terms",
    "sentiment",
    "mean_embedding",
    "topics",
)
FEATURES = (
    "chars",
    "tokens",
    "sentiment_compound",
    "sentiment_pos",
    "sentiment_neu",
    "sentiment_neg",
)
TIME_KEYS = ("hour_of_day", "weekday", "day", "week", "month")
MAX_TERMS = 1000
MAX_GROUPS = 1000
MAX_BINS = 200


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


class QuerySchema(StrictSchema):
    kind = fields.String(required=True, validate=validate.OneOf(KINDS))
    # count
    of = fields.String(
        load_default="messages", validate=validate.OneOf(["messages", "senders", "conversations"])
    )
    # sum / mean / variance / quantiles / histogram
    feature = fields.String(validate=validate.OneOf(FEATURES))
    bounds = fields.Nested(BoundsSchema)
    quantiles = fields.List(
        FiniteFloat(
            validate=validate.Range(min=0, max=1, min_inclusive=False, max_inclusive=False)
        ),
        validate=validate.Length(min=1, max=20),
    )
    bins = fields.List(FiniteFloat(), validate=validate.Length(min=2, max=MAX_BINS + 1))
    # top_terms
    k = StrictInteger(validate=validate.Range(min=1, max=100))
    terms = fields.List(
        fields.String(validate=validate.Length(min=1, max=64)),
        validate=validate.Length(min=1, max=MAX_TERMS),
    )
    bigrams = StrictBoolean(load_default=False)
    max_terms_per_sender = StrictInteger(validate=validate.Range(min=1, max=100))
    # topics (DP k-means over message embeddings)
    clusters = StrictInteger(validate=validate.Range(min=2, max=20))
    iterations = StrictInteger(validate=validate.Range(min=1, max=20))
    # common
    group_by = fields.Nested(GroupBySchema)
    filters = fields.Nested(FiltersSchema, load_default=dict)
    privacy = fields.Nested(PrivacySchema, load_default=dict)
    max_messages_per_sender = fields.Raw(load_default=None)
    confidence_level = FiniteFloat(load_default=0.95, validate=validate.Range(min=0.5, max=0.9999))
    dry_run = StrictBoolean(load_default=False)

    @validates_schema
    def _per_kind(self, data: dict[str, Any], **_: Any) -> None:
        kind = data["kind"]
        needs_feature = kind in ("sum", "mean", "variance", "quantiles", "histogram")
        if needs_feature and "feature" not in data:
            raise ValidationError(f"{kind} needs a feature", "feature")
        if not needs_feature and "feature" in data:
            raise ValidationError(f"{kind} takes no feature", "feature")
        if kind == "histogram" and "bins" not in data:
            raise ValidationError("histogram needs bins (ascending edges)", "bins")
        if "bins" in data:
            if kind != "histogram":
                raise ValidationError("bins go with histogram", "bins")
            edges = data["bins"]
            if any(hi <= lo for lo, hi in zip(edges, edges[1:], strict=False)):
                raise ValidationError("bin edges must be strictly ascending", "bins")
        if kind == "quantiles" and "quantiles" not in data:
            data["quantiles"] = [0.5]
        if kind != "quantiles" and "quantiles" in data:
            raise ValidationError("quantiles go with kind quantiles", "quantiles")
        if kind != "top_terms":
            for name in ("k", "terms", "max_terms_per_sender"):
                if name in data:
                    raise ValidationError(f"{name} goes with top_terms", name)
            if data.get("bigrams"):
                raise ValidationError("bigrams goes with top_terms", "bigrams")
        if kind in ("top_terms", "quantiles") and "group_by" in data:
            raise ValidationError(f"{kind} does not take group_by", "group_by")
        if kind != "topics":
            for name in ("clusters", "iterations"):
                if name in data:
                    raise ValidationError(f"{name} goes with topics", name)
        if kind in ("mean_embedding", "topics") and "group_by" in data:
            raise ValidationError(f"{kind} does not take group_by", "group_by")
        if kind != "count" and data.get("of", "messages") != "messages":
            raise ValidationError("of goes with count", "of")
        cap = data.get("max_messages_per_sender")
        if cap is not None and cap != "auto":
            if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= 10_000:
                raise ValidationError(
                    'an integer from 1 to 10000, or "auto"', "max_messages_per_sender"
                )
