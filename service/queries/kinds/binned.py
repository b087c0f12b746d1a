"""Kinds read off a noisy histogram of a feature: ``histogram`` and ``quantiles`` (the median
by default).

Each capped message falls in one bin, so for a per-sender cap ``m`` the bin counts move by
``m`` in L1 and L2. A histogram releases the counts of its declared bins (values outside the
edges go to the first or last bin). Quantiles are read off a noisy histogram of
``QUANTILE_BINS`` equal bins over the bounds, their intervals a parametric bootstrap
(``mechanisms.estimators``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from marshmallow import fields, validate

from mechanisms.estimators import bootstrap_quantile_interval, histogram_quantile, interval
from service.queries.kinds.base import KindField, PlanFacts, Release, refuse
from service.queries.kinds.feature import (
    FEATURE_FIELDS,
    FeatureKind,
    declared_or_default,
    make_grid,
)
from service.queries.parts import Part, simulate_noise
from service.schemas.fields import FiniteFloat

MAX_BINS = 200
QUANTILE_BINS = 32  # coarse enough that bins are not swamped by noise
BOOTSTRAP = 200


@dataclass(frozen=True)
class _Binned(FeatureKind):
    """Counts of capped messages per bin: one part, sensitivity ``m``."""

    def parts(self, plan: PlanFacts, cap: int) -> list[Part]:
        return [Part("bins", float(cap), 1.0)]

    def edges(self) -> tuple[float, ...]:
        raise NotImplementedError

    def _noisy_bins(self, r: Release) -> tuple[list[tuple[Any, Any]], np.ndarray]:
        edges = self.edges()
        nb = len(edges) - 1
        raw = r.keyed(r.engine.bin_counts(edges, r.cap), [0] * nb)
        return raw, r.noisy("bins", [v for _, v in raw]).reshape(len(raw), nb)


@dataclass(frozen=True)
class Histogram(_Binned):
    name = "histogram"
    request_fields = {
        **FEATURE_FIELDS,
        "bins": KindField(
            fields.List(FiniteFloat(), validate=validate.Length(min=2, max=MAX_BINS + 1)),
            "bins go with histogram",
        ),
    }
    takes_accuracy = True

    bins: tuple[float, ...] = ()

    @classmethod
    def check_field(cls, name: str, data: dict[str, Any]) -> None:
        super().check_field(name, data)
        if name != "bins":
            return
        if "bins" not in data:
            raise refuse("bins", "histogram needs bins (ascending edges)")
        edges = data["bins"]
        if any(hi <= lo for lo, hi in zip(edges, edges[1:], strict=False)):
            raise refuse("bins", "bin edges must be strictly ascending")

    @classmethod
    def from_request(cls, req: dict[str, Any]) -> Histogram:
        feature = req["feature"]
        bins = tuple(req.get("bins") or ())
        if bins and not req.get("bounds"):
            # the bins' outer edges are the bounds
            grid = make_grid(feature, bins[0], bins[-1], where="bins")
        else:
            grid = make_grid(feature, *declared_or_default(req, feature))
        return cls(feature=feature, value_grid=grid, bins=bins)

    def edges(self) -> tuple[float, ...]:
        return self.bins

    def record(self) -> dict[str, Any]:
        return {**super().record(), "bins": list(self.bins)}

    def value_notes(self) -> list[str]:
        return []  # values are binned, not clamped

    def release(self, r: Release) -> dict[str, Any]:
        edges = self.edges()
        raw, vals = self._noisy_bins(r)
        hw = r.half_width("bins")
        rows = [
            (
                k,
                {
                    "bins": [
                        {
                            "lower": edges[i],
                            "upper": edges[i + 1],
                            "value": float(v[i]),
                            "interval": interval(float(v[i]), hw),
                        }
                        for i in range(len(edges) - 1)
                    ]
                },
            )
            for (k, _), v in zip(raw, vals, strict=True)
        ]
        return r.pack(rows)


@dataclass(frozen=True)
class Quantiles(_Binned):
    name = "quantiles"
    request_fields = {
        **FEATURE_FIELDS,
        "quantiles": KindField(
            fields.List(
                FiniteFloat(
                    validate=validate.Range(
                        min=0, max=1, min_inclusive=False, max_inclusive=False
                    )
                ),
                validate=validate.Length(min=1, max=20),
            ),
            "quantiles go with kind quantiles",
        ),
    }
    takes_group_by = False

    quantiles: tuple[float, ...] = ()

    @classmethod
    def check_field(cls, name: str, data: dict[str, Any]) -> None:
        super().check_field(name, data)
        if name == "quantiles" and "quantiles" not in data:
            data["quantiles"] = [0.5]

    @classmethod
    def from_request(cls, req: dict[str, Any]) -> Quantiles:
        feature = req["feature"]
        grid = make_grid(feature, *declared_or_default(req, feature))
        return cls(feature=feature, value_grid=grid, quantiles=tuple(req.get("quantiles") or ()))

    def edges(self) -> tuple[float, ...]:
        g = self.value_grid
        return tuple(np.linspace(g.lower, g.upper, QUANTILE_BINS + 1).tolist())

    def record(self) -> dict[str, Any]:
        return {**super().record(), "quantiles": list(self.quantiles)}

    def release(self, r: Release) -> dict[str, Any]:
        grid = self.value_grid
        edges = self.edges()
        nb = len(edges) - 1
        _, vals = self._noisy_bins(r)
        v = vals[0]
        width = (grid.upper - grid.lower) / nb
        sims = v + simulate_noise(r.parts["bins"], (BOOTSTRAP, nb))
        out = [
            {
                "quantile": qv,
                "value": histogram_quantile(v, edges, qv),
                # widened by one bin: the histogram cannot place a quantile more finely
                "interval": bootstrap_quantile_interval(
                    sims, edges, qv, r.level, widen=width, lower=grid.lower, upper=grid.upper
                ),
            }
            for qv in self.quantiles
        ]
        return {
            "result": {"quantiles": out},
            "interval_note": f"Quantiles are read off a noisy {nb}-bin histogram; their "
            f"intervals are a parametric bootstrap ({BOOTSTRAP} re-noised copies of it) "
            "widened by one bin width: approximate, not exact.",
        }
