"""Shared fixtures and exact probability mass functions for the mechanism tests."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

SIGNIFICANCE = 1e-4  # a correct sampler fails a goodness-of-fit test with this probability


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20260101)


def discrete_laplace_pmf(scale: float, support: np.ndarray) -> np.ndarray:
    p = np.exp(-1.0 / scale)
    return (1 - p) / (1 + p) * p ** np.abs(support)


def discrete_gaussian_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    half = int(np.ceil(40 * sigma)) + 10
    full = np.arange(-half, half + 1)
    norm = np.exp(-(full.astype(float) ** 2) / (2 * sigma**2)).sum()
    return np.exp(-(support.astype(float) ** 2) / (2 * sigma**2)) / norm


def chi_square_pvalue(samples: np.ndarray, pmf, min_expected: float = 20.0) -> float:
    """Pearson chi-square p-value of integer samples against a pmf on Z (sparse tails pooled)."""
    n = samples.size
    radius = int(np.abs(samples).max()) + 1
    support = np.arange(-radius, radius + 1)
    probs = pmf(support)
    keep = probs * n >= min_expected
    lo, hi = support[keep].min(), support[keep].max()
    inner = np.arange(lo, hi + 1)
    observed = np.array([np.sum(samples == k) for k in inner] if inner.size < 50 else
                        np.bincount(samples[(samples >= lo) & (samples <= hi)] - lo,
                                    minlength=inner.size))
    expected = pmf(inner) * n
    tail_obs = n - observed.sum()
    tail_exp = n - expected.sum()
    observed = np.append(observed, tail_obs)
    expected = np.append(expected, tail_exp)
    statistic = float(((observed - expected) ** 2 / expected).sum())
    return float(stats.chi2.sf(statistic, df=observed.size - 1))
