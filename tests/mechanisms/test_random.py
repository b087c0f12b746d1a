"""Uniform integers from random words: exact rejection, no modulo bias."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mechanisms._random import randbelow, uniform_below

from .conftest import SIGNIFICANCE


@pytest.mark.parametrize("bound", [1, 2, 6, 8, 1000, 3 << 61, 1 << 63])
def test_uniform_below_scalar_bound_is_uniform(bound: int, rng: np.random.Generator) -> None:
    draws = uniform_below(bound, 60_000, rng)
    assert draws.dtype == np.uint64 and int(draws.max()) < bound
    if bound == 1:
        assert not draws.any()
        return
    if bound <= 1000:
        counts = np.bincount(draws.astype(np.int64), minlength=bound)
    else:  # 6 near-equal-width buckets over [0, bound): a modulo bias would skew them
        counts = np.bincount(np.minimum((draws / bound * 6).astype(int), 5), minlength=6)
    assert stats.chisquare(counts).pvalue > SIGNIFICANCE


def test_uniform_below_array_bounds(rng: np.random.Generator) -> None:
    bounds = np.array([3, 5, 3 << 61] * 20_000, dtype=np.uint64)
    draws = uniform_below(bounds, bounds.size, rng)
    assert (draws < bounds).all()
    threes = draws[bounds == 3]
    assert stats.chisquare(np.bincount(threes.astype(int), minlength=3)).pvalue > SIGNIFICANCE


def test_randbelow_big_bounds(rng: np.random.Generator) -> None:
    bound = 3 * (1 << 100)
    draws = [randbelow(bound, rng) for _ in range(6000)]
    assert max(draws) < bound and min(draws) >= 0
    thirds = np.bincount([d // (1 << 100) for d in draws], minlength=3)
    assert stats.chisquare(thirds).pvalue > SIGNIFICANCE
