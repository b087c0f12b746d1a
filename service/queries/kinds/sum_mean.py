"""``sum`` and ``mean`` of a per-message feature, clamped to public bounds on a grid.

Sensitivities in grid units for a per-sender cap ``m``: the sum of raw grid values moves by at
most ``m * max(|lower_q|, |upper_q|)``; the mean is a noisy sum of values centred on the grid's
middle (``m * max_dev_q``, half the range) over a noisy count (``m``), at half the cost each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mechanisms.estimators import interval, ratio_box
from service.queries.kinds.base import PlanFacts, Release
from service.queries.kinds.feature import FeatureKind
from service.queries.parts import Part


@dataclass(frozen=True)
class Sum(FeatureKind):
    name = "sum"
    takes_accuracy = True

    @property
    def accuracy_unit(self) -> float:
        """A sum's half-width is asked for in the feature's units: one grid step each."""
        return self.value_grid.step

    def parts(self, plan: PlanFacts, cap: int) -> list[Part]:
        g = self.value_grid
        return [Part("sum", float(cap * max(abs(g.lower_q), abs(g.upper_q))), 1.0)]

    def release(self, r: Release) -> dict[str, Any]:
        step = self.value_grid.step
        raw = r.keyed(r.engine.moments(r.cap), (0, 0, 0, 0))
        vals = r.noisy("sum", [v[3] for _, v in raw])
        hw = r.half_width("sum") * step
        rows = [
            (k, {"value": float(v) * step, "interval": interval(float(v) * step, hw)})
            for (k, _), v in zip(raw, vals, strict=True)
        ]
        return r.pack(rows)


@dataclass(frozen=True)
class Mean(FeatureKind):
    name = "mean"

    def parts(self, plan: PlanFacts, cap: int) -> list[Part]:
        dev = float(self.value_grid.max_dev_q)
        return [Part("count", float(cap), 0.5), Part("sum", cap * dev, 0.5)]

    def release(self, r: Release) -> dict[str, Any]:
        grid = self.value_grid
        step, off = grid.step, grid.offset_q
        raw = r.keyed(r.engine.moments(r.cap), (0, 0, 0, 0))
        counts = r.noisy("count", [v[0] for _, v in raw])
        sums = r.noisy("sum", [v[1] for _, v in raw])
        hc, hs = r.half_width("count"), r.half_width("sum")
        rows = []
        for (k, _), c, s in zip(raw, counts, sums, strict=True):
            value = (off + s / c) * step if c >= 1 else None
            lo_hi = ratio_box(float(s), hs, float(c), hc, grid.lower_q - off, grid.upper_q - off)
            value = None if value is None else min(grid.upper, max(grid.lower, value))
            rows.append(
                (
                    k,
                    {
                        "value": value,
                        "interval": [(off + lo_hi[0]) * step, (off + lo_hi[1]) * step],
                    },
                )
            )
        r.bias.append(
            "The mean is a noisy sum over a noisy count; its interval is a conservative "
            "box over both (approximate)."
        )
        return r.pack(rows)
