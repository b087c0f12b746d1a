"""``variance`` of a per-message feature: a noisy count, sum and sum of squares.

Values are centred on the grid's middle, so for a per-sender cap ``m`` the sensitivities in
grid units are ``m`` (count), ``m * max_dev_q`` (sum) and ``m * max_dev_q**2`` (sum of squares),
each at a third of the cost. The variance and its interval are post-processing
(``mechanisms.estimators.variance_box``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mechanisms.estimators import variance_box
from service.queries.kinds.base import PlanFacts, Release
from service.queries.kinds.feature import FeatureKind
from service.queries.parts import Part


@dataclass(frozen=True)
class Variance(FeatureKind):
    name = "variance"

    def parts(self, plan: PlanFacts, cap: int) -> list[Part]:
        dev = float(self.value_grid.max_dev_q)
        third = 1.0 / 3.0
        return [
            Part("count", float(cap), third),
            Part("sum", cap * dev, third),
            Part("sumsq", cap * dev * dev, third),
        ]

    def release(self, r: Release) -> dict[str, Any]:
        grid = self.value_grid
        raw = r.keyed(r.engine.moments(r.cap), (0, 0, 0, 0))
        counts = r.noisy("count", [v[0] for _, v in raw])
        sums = r.noisy("sum", [v[1] for _, v in raw])
        sq = r.noisy("sumsq", [v[2] for _, v in raw])
        hc, hs, hq = r.half_width("count"), r.half_width("sum"), r.half_width("sumsq")
        span = (grid.upper - grid.lower) ** 2 / 4
        rows = []
        for (k, _), c, s, qq in zip(raw, counts, sums, sq, strict=True):
            value, box = variance_box(
                c, s, qq, h_count=hc, h_total=hs, h_sq=hq, unit=grid.step, span=span
            )
            rows.append((k, {"value": value, "interval": box}))
        r.bias.append(
            "The variance comes from a noisy count, sum and sum of squares; its interval is a "
            "conservative box over them (approximate)."
        )
        return r.pack(rows)
