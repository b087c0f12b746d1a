"""Request schemas of the admin and budget APIs (marshmallow 4 rejects unknown fields).

Privacy parameters are validated here, where they enter, and again by ``mechanisms.ledger``
where they are used: epsilon finite and > 0, delta finite and in (0, 1e-3] (``MAX_DELTA``).
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from mechanisms.ledger import MAX_DELTA
from service.schemas.fields import FiniteFloat, PublicDateTime

_EPSILON = validate.Range(min=0, min_inclusive=False, error="epsilon must be > 0")
_DELTA = validate.Range(
    min=0, max=MAX_DELTA, min_inclusive=False, error=f"delta must be in (0, {MAX_DELTA:g}]"
)
_DELTA_INCREMENT = validate.Range(min=0, max=MAX_DELTA, error=f"must be in [0, {MAX_DELTA:g}]")
_NONNEG = validate.Range(min=0, error="must be >= 0")
MAX_OFFSET = 10**9
MAX_ID = 2**53 - 1  # fits every backend's 64-bit integer and a JSON number


class BudgetSchema(Schema):
    """An (epsilon, delta) budget: ``{"epsilon": 1.0, "delta": 1e-6}``."""

    epsilon = FiniteFloat(required=True, validate=_EPSILON)
    delta = FiniteFloat(required=True, validate=_DELTA)


class BudgetRaiseSchema(Schema):
    """Increments to add to a budget; at least one must be > 0."""

    epsilon = FiniteFloat(load_default=0.0, validate=_NONNEG)
    delta = FiniteFloat(load_default=0.0, validate=_DELTA_INCREMENT)

    @validates_schema
    def _some_increase(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("epsilon", 0.0) == 0 and data.get("delta", 0.0) == 0:
            raise ValidationError("a raise must increase epsilon or delta", "_schema")


class AnalystCreateSchema(Schema):
    """``{"name": "...", "budget": {"epsilon": .., "delta": ..}}`` (budget optional)."""

    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    budget = fields.Nested(BudgetSchema, load_default=None, allow_none=False)


class PageSchema(Schema):
    """``?limit=&offset=`` for lists."""

    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_OFFSET))


class AuditQuerySchema(Schema):
    """``GET /v1/admin/audit``: ``format``, filters and a keyset page (``after`` an id)."""

    format = fields.String(load_default="json", validate=validate.OneOf(["json", "csv"]))
    analyst = fields.String(
        load_default=None, allow_none=False, validate=validate.Length(min=1, max=64)
    )
    since = PublicDateTime(load_default=None, allow_none=False)
    until = PublicDateTime(load_default=None, allow_none=False)
    limit = fields.Integer(load_default=1000, validate=validate.Range(min=1, max=10000))
    after = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_ID))
