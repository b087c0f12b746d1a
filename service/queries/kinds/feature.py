"""What the kinds over a per-message feature share: the feature, its bounds and their grid.

A feature's values are clamped to public bounds (declared, or the feature's defaults) and put
on a power-of-two grid, so that sums are exact integers and every sensitivity follows from the
bounds alone (``make_grid``). Sum, mean, variance, quantiles and histograms are
:class:`FeatureKind` subclasses; sentiment reads the compound score on its fixed grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from marshmallow import fields, validate

from corpus.engine import Grid, Measure
from service.errors import APIError
from service.queries.kinds.base import KindField, QueryKind, record_defaults, refuse
from service.schemas.query_fields import FEATURES, BoundsSchema

#: Public default bounds per feature (an analyst can declare others).
DEFAULT_BOUNDS = {
    "chars": (0.0, 300.0),
    "tokens": (0.0, 60.0),
    "sentiment_compound": (-1.0, 1.0),
    "sentiment_pos": (0.0, 1.0),
    "sentiment_neu": (0.0, 1.0),
    "sentiment_neg": (0.0, 1.0),
}
GRID_STEPS = 1024  # a real feature's bound range is cut into about this many grid steps
#: Public limits on the grid, checked before any data is read (see ``make_grid``): a grid step
#: is a power of two in [2**-40, 2**40] and a bound is at most 2**40 steps from zero, so every
#: clamped value converts to a BIGINT in SQL and every per-sender contribution stays exact.
MIN_GRID_STEP = 2.0**-40
MAX_GRID_STEP = 2.0**40
MAX_GRID_UNITS = 2**40

FEATURE_FIELDS = {
    "feature": KindField(
        fields.String(validate=validate.OneOf(FEATURES)), "{kind} takes no feature"
    ),
    # checked at planning, not by the schema: "bounds go with a feature"
    "bounds": KindField(fields.Nested(BoundsSchema), None),
}


def make_grid(feature: str, lower: float, upper: float, *, where: str = "bounds") -> Grid:
    """The grid for values clamped to ``[lower, upper]``.

    Raises APIError(422) when the bounds give no usable grid: a span that is not a finite
    positive float, a step outside [2**-40, 2**40], or a bound more than 2**40 steps from zero
    (its grid value would not be exact, and SQL's BIGINT conversion could overflow). Decided
    from the bounds alone, before any data is read.
    """
    span = float(upper) - float(lower)
    if not (math.isfinite(span) and span > 0):
        raise _grid_error(where, "the range upper - lower must be a finite positive number")
    if feature in ("chars", "tokens") and float(lower).is_integer() and float(upper).is_integer():
        step = 1.0
        while span / step > 4 * GRID_STEPS:
            step *= 2
    elif span / GRID_STEPS < MIN_GRID_STEP:
        step = 0.0  # too narrow (and log2 of an underflowed ratio would fail)
    else:
        step = 2.0 ** math.floor(math.log2(span / GRID_STEPS))
    if not MIN_GRID_STEP <= step <= MAX_GRID_STEP:
        raise _grid_error(
            where,
            f"the range is too {'narrow' if step < MIN_GRID_STEP else 'wide'}: its grid step "
            "must lie in [2**-40, 2**40]",
        )
    grid = Grid(lower=lower, upper=upper, step=step)
    if max(abs(grid.lower_q), abs(grid.upper_q)) > MAX_GRID_UNITS:
        raise _grid_error(
            where,
            "the bounds are too far from zero for their width: each must be within 2**40 grid "
            f"steps ({step!r} each) of zero",
        )
    return grid


def _grid_error(where: str, why: str) -> APIError:
    return APIError(422, "validation_error", f"Unusable {where}: {why}.", {where: [why]})


def declared_or_default(req: dict[str, Any], feature: str) -> tuple[float, float]:
    """The request's bounds, or the feature's public defaults."""
    b = req.get("bounds")
    return (b["lower"], b["upper"]) if b else DEFAULT_BOUNDS[feature]


def clamp_note(grid: Grid) -> str:
    return (
        f"Values are clamped to [{grid.lower}, {grid.upper}] and rounded to "
        f"multiples of {grid.step}."
    )


@dataclass(frozen=True)
class FeatureKind(QueryKind):
    """A kind over one per-message feature, clamped to its bounds on ``value_grid``."""

    request_fields = FEATURE_FIELDS

    feature: str
    value_grid: Grid

    @classmethod
    def check_field(cls, name: str, data: dict[str, Any]) -> None:
        if name == "feature" and "feature" not in data:
            raise refuse("feature", f"{cls.name} needs a feature")

    @classmethod
    def from_request(cls, req: dict[str, Any]) -> FeatureKind:
        feature = req["feature"]
        lower, upper = declared_or_default(req, feature)
        return cls(feature=feature, value_grid=make_grid(feature, lower, upper))

    @property
    def grid(self) -> Grid:
        return self.value_grid

    def measure(self) -> Measure:
        return Measure(feature=self.feature, grid=self.value_grid)

    def record(self) -> dict[str, Any]:
        g = self.value_grid
        return {**record_defaults(), "feature": self.feature, "bounds": [g.lower, g.upper]}

    def value_notes(self) -> list[str]:
        return [clamp_note(self.value_grid)]
