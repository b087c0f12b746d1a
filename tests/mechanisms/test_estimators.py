"""Estimates and intervals read off noisy releases (mechanisms/estimators.py).

Each box interval is checked against a brute-force search over its box, and each is checked to
cover the exact statistic when the noisy inputs lie within their half-widths.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mechanisms.estimators import (
    bootstrap_quantile_interval,
    histogram_quantile,
    interval,
    ratio_box,
    variance_box,
    vector_ratio_half_width,
)


def test_interval() -> None:
    assert interval(3.0, 0.5) == [2.5, 3.5]


def _grid(centre: float, half: float, n: int = 41) -> np.ndarray:
    return np.linspace(centre - half, centre + half, n)


@pytest.mark.parametrize(
    ("num", "h_num", "den", "h_den"),
    [(10.0, 2.0, 5.0, 1.0), (-10.0, 3.0, 4.0, 0.5), (0.5, 2.0, 7.0, 6.5), (3.0, 0.0, 2.0, 0.0)],
)
def test_ratio_box_is_the_range_over_the_box(
    num: float, h_num: float, den: float, h_den: float
) -> None:
    lo, hi = ratio_box(num, h_num, den, h_den, -100.0, 100.0)
    ratios = [a / b for a in _grid(num, h_num) for b in _grid(den, h_den)]
    assert lo == pytest.approx(min(ratios)) and hi == pytest.approx(max(ratios))
    assert lo <= num / den <= hi


def test_ratio_box_is_clipped_and_whole_when_the_denominator_can_vanish() -> None:
    assert ratio_box(10.0, 1.0, 4.0, 0.5, 0.0, 2.5) == [2.0, 2.5]
    assert ratio_box(10.0, 1.0, 1.0, 1.0, -1.0, 1.0) == [-1.0, 1.0]
    assert ratio_box(10.0, 1.0, -3.0, 1.0, -1.0, 1.0) == [-1.0, 1.0]


def test_variance_box_covers_the_exact_variance() -> None:
    """Values centred in grid units; every noisy (count, sum, sum of squares) in the box gives
    an interval that holds the exact variance."""
    rng = np.random.default_rng(7)
    values = rng.integers(-50, 51, size=200).astype(float)
    n, s, q = float(len(values)), float(values.sum()), float((values**2).sum())
    exact = values.var()
    span = 100.0**2 / 4
    h_c, h_s, h_q = 3.0, 40.0, 900.0
    for dc, ds, dq in itertools.product((-1, 0, 1), repeat=3):
        value, (lo, hi) = variance_box(
            n + dc * h_c, s + ds * h_s, q + dq * h_q,
            h_count=h_c, h_total=h_s, h_sq=h_q, unit=1.0, span=span,
        )  # fmt: skip
        assert value is not None and 0.0 <= value <= span
        assert lo <= exact <= hi, (dc, ds, dq, lo, exact, hi)
    value, _ = variance_box(n, s, q, h_count=0.0, h_total=0.0, h_sq=0.0, unit=1.0, span=span)
    assert value == pytest.approx(exact)


def test_variance_box_scales_by_the_unit_and_handles_small_counts() -> None:
    value, box = variance_box(10.0, 0.0, 40.0, h_count=1, h_total=1, h_sq=1, unit=0.5, span=9)
    assert value == pytest.approx(4.0 * 0.25)
    assert box[0] <= value <= box[1] <= 9
    assert variance_box(1.9, 0.0, 4.0, h_count=1, h_total=1, h_sq=1, unit=1, span=9) == (
        None,
        [0.0, 9],
    )
    # the count's box reaches zero: the whole range
    assert variance_box(3.0, 0.0, 4.0, h_count=3, h_total=1, h_sq=1, unit=1, span=9)[1] == [
        0.0,
        9,
    ]
    # the value is clipped to the span
    assert variance_box(4.0, 0.0, 400.0, h_count=1, h_total=1, h_sq=1, unit=1, span=9)[0] == 9


def test_vector_ratio_half_width() -> None:
    total = np.array([10.0, -4.0, 0.0])
    hw = vector_ratio_half_width(total, 2.0, 5.0, 1.0)
    brute = max(
        abs((t + a * 2.0) / (5.0 + b * 1.0) - t / 5.0)
        for t in total
        for a in (-1, 1)
        for b in (-1, 1)
    )
    assert hw == pytest.approx(brute)
    assert vector_ratio_half_width(total, 2.0, 1.0, 1.0) is None


def test_histogram_quantile_interpolates_within_a_bin() -> None:
    edges = [0.0, 1.0, 2.0, 4.0]
    hist = np.array([10.0, 10.0, 20.0])
    assert histogram_quantile(hist, edges, 0.5) == pytest.approx(2.0)
    assert histogram_quantile(hist, edges, 0.25) == pytest.approx(1.0)
    assert histogram_quantile(hist, edges, 0.75) == pytest.approx(3.0)
    # a negative noisy count does not make the running sum decrease
    assert histogram_quantile(np.array([10.0, -5.0, 5.0]), edges, 0.5) == pytest.approx(0.5)
    # no positive mass: the midpoint
    assert histogram_quantile(np.array([-1.0, -2.0, 0.0]), edges, 0.5) == 2.0


def test_bootstrap_quantile_interval() -> None:
    edges = [0.0, 1.0, 2.0, 3.0, 4.0]
    released = np.array([5.0, 10.0, 10.0, 5.0])
    rng = np.random.default_rng(3)
    sims = released + rng.normal(0, 1.0, size=(400, 4))
    lo, hi = bootstrap_quantile_interval(sims, edges, 0.5, 0.9, widen=1.0, lower=0, upper=4)
    assert 0.0 <= lo < histogram_quantile(released, edges, 0.5) < hi <= 4.0
    tight = bootstrap_quantile_interval(
        np.tile(released, (10, 1)), edges, 0.5, 0.9, widen=0.25, lower=0, upper=4
    )
    assert tight == [1.75, 2.25]
    assert bootstrap_quantile_interval(
        np.tile(released, (10, 1)), edges, 0.5, 0.9, widen=5.0, lower=0, upper=4
    ) == [0, 4]


def test_a_ratio_box_outside_the_bounds_is_never_inverted() -> None:
    """Noise beyond its half-width can put the whole box above (or below) the bounds: the
    interval is then the nearest bound, as a point, not [lower-clipped min, upper] with
    low > high."""
    assert ratio_box(500.0, 10.0, 2.0, 0.5, 0.0, 100.0) == [100.0, 100.0]
    assert ratio_box(-500.0, 10.0, 2.0, 0.5, 0.0, 100.0) == [0.0, 0.0]
    lo, hi = ratio_box(50.0, 10.0, 1.0, 0.5, 0.0, 100.0)  # straddles the upper bound
    assert lo <= hi and hi == 100.0
