"""``sentiment``: the shares of positive, neutral and negative messages and the mean compound
score (VADER), per group or overall.

The compound score is read on its fixed range [-1, 1] (bounds in the request are accepted and
ignored). For a per-sender cap ``m``: the three class counts move by ``m`` in all (each message
in one class), the centred sum of scores by ``m * max_dev_q``, at half the cost each. Shares
and the mean are ratios over the noisy total, their intervals conservative boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from corpus.engine import Grid, Measure
from mechanisms.estimators import ratio_box
from service.queries.kinds.base import PlanFacts, QueryKind, Release, record_defaults
from service.queries.kinds.feature import (
    DEFAULT_BOUNDS,
    FEATURE_FIELDS,
    clamp_note,
    make_grid,
)
from service.queries.parts import Part

FEATURE = "sentiment_compound"
CLASSES = ("positive", "neutral", "negative")


def _compound_grid() -> Grid:
    return make_grid(FEATURE, *DEFAULT_BOUNDS[FEATURE])


@dataclass(frozen=True)
class Sentiment(QueryKind):
    name = "sentiment"
    request_fields = {"bounds": FEATURE_FIELDS["bounds"]}  # accepted, ignored

    value_grid: Grid = field(default_factory=_compound_grid)

    @property
    def grid(self) -> Grid:
        return self.value_grid

    def measure(self) -> Measure:
        return Measure(feature=FEATURE, grid=self.value_grid)

    def record(self) -> dict[str, Any]:
        g = self.value_grid
        return {**record_defaults(), "feature": FEATURE, "bounds": [g.lower, g.upper]}

    def value_notes(self) -> list[str]:
        return [clamp_note(self.value_grid)]

    def parts(self, plan: PlanFacts, cap: int) -> list[Part]:
        dev = float(self.value_grid.max_dev_q)
        return [Part("classes", float(cap), 0.5), Part("sum", cap * dev, 0.5)]

    def release(self, r: Release) -> dict[str, Any]:
        step = self.value_grid.step
        raw = r.keyed(r.engine.sentiment(r.cap), (0, 0, 0, 0))
        classes = r.noisy("classes", [list(v[:3]) for _, v in raw]).reshape(len(raw), 3)
        sums = r.noisy("sum", [v[3] for _, v in raw])
        hc, hs = r.half_width("classes"), r.half_width("sum")
        rows = [
            (k, _row(np.maximum(c, 0.0), s, hc, hs, step))
            for (k, _), c, s in zip(raw, classes, sums, strict=True)
        ]
        r.bias.append(
            "Intervals of means and shares are conservative boxes over the noisy sums "
            "and counts (approximate, not exact)."
        )
        return r.pack(rows)


def _row(c: np.ndarray, s: float, hc: float, hs: float, step: float) -> dict[str, Any]:
    """One group's shares and mean score from its noisy class counts ``c`` (clipped at 0) and
    noisy centred sum ``s``."""
    total = float(c.sum())
    htot = 3 * hc
    shares = {
        name: {
            "value": float(c[i] / total) if total > 0 else None,
            "interval": ratio_box(float(c[i]), hc, total, htot, 0.0, 1.0),
        }
        for i, name in enumerate(CLASSES)
    }
    mean = float(s) / total * step if total > 0 else None
    return {
        "mean_compound": {
            "value": None if mean is None else max(-1.0, min(1.0, mean)),
            "interval": ratio_box(float(s) * step, hs * step, total, htot, -1.0, 1.0),
        },
        "shares": shares,
    }
