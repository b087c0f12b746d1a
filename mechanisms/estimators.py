"""Estimates and intervals read off noisy releases: post-processing, which costs no privacy.

Everything here takes values that have already been noised (and the half-widths of their noise
at the wanted confidence level) and only combines them, so none of it can weaken a guarantee.
The intervals are conservative boxes: each noisy input is assumed to lie within its half-width
(which holds with the level's probability for each input separately, not jointly), and the
estimate's range over that box is reported. They are approximate and are labelled so in the
answers that use them.

Pure functions of floats and numpy arrays: no service, no I/O, no randomness of their own (the
bootstrap takes its simulated noise as an argument).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "interval",
    "ratio_box",
    "variance_box",
    "vector_ratio_half_width",
    "histogram_quantile",
    "bootstrap_quantile_interval",
]


def interval(value: float, half_width: float) -> list[float]:
    """``[value - half_width, value + half_width]``."""
    return [value - half_width, value + half_width]


def ratio_box(
    num: float, h_num: float, den: float, h_den: float, lower: float, upper: float
) -> list[float]:
    """The range of ``num / den`` over the box ``[num +/- h_num] x [den +/- h_den]``, clipped to
    ``[lower, upper]``; the whole ``[lower, upper]`` when the box reaches a denominator <= 0.
    Each end is clipped into ``[lower, upper]``, so that a box wholly outside it (noise beyond
    its half-width) gives the nearest bound as a point, never an interval whose low end is
    above its high end."""
    if den - h_den <= 0:
        return [lower, upper]
    corners = [(num + a * h_num) / (den + b * h_den) for a in (-1, 1) for b in (-1, 1)]
    return [min(upper, max(lower, min(corners))), max(lower, min(upper, max(corners)))]


def variance_box(
    count: float,
    total: float,
    total_sq: float,
    *,
    h_count: float,
    h_total: float,
    h_sq: float,
    unit: float,
    span: float,
) -> tuple[float | None, list[float]]:
    """The population variance ``total_sq / count - (total / count)**2`` and its box interval.

    ``count``, ``total`` and ``total_sq`` are a noisy count, sum and sum of squares in grid
    units (values centred, so that the squares stay small), with half-widths ``h_*``; ``unit``
    is the grid step (the answer is in the values' units squared) and ``span`` the largest
    variance the bounds allow (``(upper - lower)**2 / 4``), which clips both. The value is None
    below a noisy count of 2; the interval is ``[0, span]`` when the count's box reaches 0.
    """
    if count < 2:
        return None, [0.0, span]
    var = max(0.0, (total_sq / count - (total / count) ** 2)) * unit * unit
    cmin, cmax = count - h_count, count + h_count
    if cmin <= 0:
        box = [0.0, span]
    else:
        smax2 = max((total - h_total) ** 2, (total + h_total) ** 2)
        low, high = total - h_total, total + h_total
        smin2 = 0.0 if low <= 0 <= high else min(low**2, high**2)
        lo = (total_sq - h_sq) / cmax - smax2 / cmin**2
        hi = (total_sq + h_sq) / cmin - smin2 / cmax**2
        box = [max(0.0, lo * unit * unit), min(span, hi * unit * unit)]
    return min(var, span), box


def vector_ratio_half_width(
    total: np.ndarray, h_total: float, count: float, h_count: float
) -> float | None:
    """Per-coordinate half-width of the mean ``total / count`` over the box ``[total +/-
    h_total] x [count +/- h_count]`` (the largest coordinate's); None when the count's box
    reaches 0 (the mean is then unbounded)."""
    if count - h_count <= 0:
        return None
    mean = total / count
    corners = [(total + a * h_total) / (count + b * h_count) for a in (-1, 1) for b in (-1, 1)]
    return float(np.max(np.abs(np.stack(corners) - mean)))


def histogram_quantile(hist: np.ndarray, edges: Sequence[float], q: float) -> float:
    """The ``q`` quantile (``0 < q < 1``) read off a noisy histogram with bin ``edges``,
    interpolating within a bin.

    The noisy counts are kept as they are (clipping each at zero would push mass into empty
    bins and bias quantiles toward the middle); their running sum is made non-decreasing. With
    no positive mass the midpoint of the edges is returned.
    """
    cum = np.maximum.accumulate(np.cumsum(hist, dtype=np.float64))
    cum = np.maximum(cum, 0.0)
    total = float(cum[-1])
    if total <= 0:
        return float((edges[0] + edges[-1]) / 2)
    target = q * total
    i = min(int(np.searchsorted(cum, target)), len(cum) - 1)
    prev = cum[i - 1] if i > 0 else 0.0
    frac = 0.0 if cum[i] <= prev else (target - prev) / (cum[i] - prev)
    return float(edges[i] + min(1.0, max(0.0, frac)) * (edges[i + 1] - edges[i]))


def bootstrap_quantile_interval(
    simulated: np.ndarray,
    edges: Sequence[float],
    q: float,
    level: float,
    *,
    widen: float,
    lower: float,
    upper: float,
) -> list[float]:
    """A parametric-bootstrap interval for ``histogram_quantile(hist, edges, q)``.

    ``simulated`` holds re-noised copies of the released histogram (one per row: the released
    counts plus fresh draws of the same noise). The interval runs between the copies' quantile
    estimates at ``(1 - level) / 2`` and ``(1 + level) / 2``, widened by ``widen`` on each side
    (a histogram cannot place a quantile more finely than a bin) and clipped to ``[lower,
    upper]``.
    """
    alpha = (1.0 - level) / 2.0
    boot = [histogram_quantile(sim, edges, q) for sim in simulated]
    return [
        max(lower, float(np.quantile(boot, alpha)) - widen),
        min(upper, float(np.quantile(boot, 1.0 - alpha)) + widen),
    ]
