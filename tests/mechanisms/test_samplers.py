"""Goodness of fit of the exact samplers against their probability mass functions.

Each test draws from a seeded generator and runs a Pearson chi-square test at significance
1e-4 (SIGNIFICANCE); the same statistic must reject draws whose scale is 10% off, so the tests
can fail.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from mechanisms import _exact_scalar
from mechanisms.errors import InvalidParameterError, PrivacyError
from mechanisms.samplers import (
    discrete_gaussian,
    discrete_laplace,
    exact_laplace_scale,
    exact_sigma_squared,
)

from .conftest import SIGNIFICANCE, chi_square_pvalue, discrete_gaussian_pmf, discrete_laplace_pmf

N = 200_000


@pytest.mark.parametrize("scale", [0.3, 1.0, 10 / 3, 25.0, 1000.0])
def test_discrete_laplace_matches_pmf(scale: float, rng: np.random.Generator) -> None:
    samples = discrete_laplace(scale, N, rng=rng)
    assert samples.dtype == np.int64
    assert chi_square_pvalue(samples, lambda k: discrete_laplace_pmf(scale, k)) > SIGNIFICANCE


@pytest.mark.parametrize("scale", [1.0, 25.0])
def test_discrete_laplace_test_rejects_wrong_scale(scale: float, rng: np.random.Generator) -> None:
    samples = discrete_laplace(1.1 * scale, N, rng=rng)
    assert chi_square_pvalue(samples, lambda k: discrete_laplace_pmf(scale, k)) < SIGNIFICANCE


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.7, 10.0, 300.0])
def test_discrete_gaussian_matches_pmf(sigma: float, rng: np.random.Generator) -> None:
    samples = discrete_gaussian(sigma, N, rng=rng)
    assert samples.dtype == np.int64
    assert chi_square_pvalue(samples, lambda k: discrete_gaussian_pmf(sigma, k)) > SIGNIFICANCE


@pytest.mark.parametrize("sigma", [1.0, 10.0])
def test_discrete_gaussian_test_rejects_wrong_scale(sigma: float, rng: np.random.Generator) -> None:
    samples = discrete_gaussian(1.1 * sigma, N, rng=rng)
    assert chi_square_pvalue(samples, lambda k: discrete_gaussian_pmf(sigma, k)) < SIGNIFICANCE


def test_gaussian_is_not_laplace(rng: np.random.Generator) -> None:
    """Same variance, other shape: the test tells the two distributions apart."""
    samples = discrete_laplace(10.0 / np.sqrt(2), N, rng=rng)
    assert chi_square_pvalue(samples, lambda k: discrete_gaussian_pmf(10.0, k)) < SIGNIFICANCE


def test_large_sigma_python_path_matches_moments(rng: np.random.Generator) -> None:
    sigma = 50_000.0  # beyond the 64-bit fast path
    samples = discrete_gaussian(sigma, 3000, rng=rng)
    # sd of the sample variance is about sqrt(2/n) * sigma**2: allow 5 of them
    assert abs(samples.var() / sigma**2 - 1) < 5 * np.sqrt(2 / 3000)
    assert abs(samples.mean()) < 5 * sigma / np.sqrt(3000)


@pytest.mark.seconds
@pytest.mark.parametrize("scale", [0.7, 4.0])
def test_scalar_reference_laplace_matches_pmf(scale: float, rng: np.random.Generator) -> None:
    exact = Fraction(scale)
    samples = np.array([_exact_scalar.discrete_laplace(exact, rng) for _ in range(20_000)])
    assert chi_square_pvalue(samples, lambda k: discrete_laplace_pmf(scale, k)) > SIGNIFICANCE


@pytest.mark.seconds
def test_scalar_reference_gaussian_matches_pmf(rng: np.random.Generator) -> None:
    samples = np.array(
        [_exact_scalar.discrete_gaussian(Fraction(9), rng) for _ in range(20_000)]
    )
    assert chi_square_pvalue(samples, lambda k: discrete_gaussian_pmf(3.0, k)) > SIGNIFICANCE


def test_scalar_and_csprng_defaults() -> None:
    assert isinstance(discrete_laplace(2.0), int)
    assert isinstance(discrete_gaussian(2.0), int)
    draws = discrete_laplace(5.0, 1000)
    assert draws.shape == (1000,) and len(set(draws.tolist())) > 10
    assert discrete_gaussian(5.0, 0).shape == (0,)


def test_seeded_generator_is_reproducible() -> None:
    a = discrete_gaussian(7.0, 100, rng=np.random.default_rng(3))
    b = discrete_gaussian(7.0, 100, rng=np.random.default_rng(3))
    assert np.array_equal(a, b)


def test_exact_parameters_round_up() -> None:
    assert exact_laplace_scale(2.5) == Fraction(5, 2)
    assert exact_laplace_scale(0.1) == Fraction(0.1)
    assert exact_sigma_squared(10.0) == 100
    assert exact_sigma_squared(3.7) >= Fraction(3.7) ** 2
    assert float(exact_sigma_squared(3.7)) == pytest.approx(3.7**2, rel=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), 2.0**50, "1", True])
def test_invalid_scale_raises(bad: object) -> None:
    with pytest.raises(InvalidParameterError):
        discrete_laplace(bad)  # type: ignore[arg-type]
    with pytest.raises(PrivacyError):
        discrete_gaussian(bad)  # type: ignore[arg-type]


def test_invalid_size_and_rng_raise() -> None:
    with pytest.raises(InvalidParameterError):
        discrete_laplace(1.0, -1)
    with pytest.raises(InvalidParameterError):
        discrete_laplace(1.0, 3, rng=42)  # type: ignore[arg-type]


@pytest.mark.seconds
@pytest.mark.parametrize("sampler, param, pmf", [
    (discrete_laplace, 3.0, discrete_laplace_pmf), (discrete_gaussian, 3.0, discrete_gaussian_pmf)
])
def test_small_batches_use_exact_path_and_match_pmf(sampler, param, pmf, rng) -> None:
    """Requests of <= 32 draws take the Python-integer path; it must fit the pmf too."""
    samples = np.concatenate([sampler(param, 10, rng=rng) for _ in range(2000)])
    assert samples.dtype == np.int64 and samples.size == 20_000
    assert chi_square_pvalue(samples, lambda k: pmf(param, k)) > SIGNIFICANCE


def test_mechanisms_import_no_web_or_ml_frameworks() -> None:
    import subprocess
    import sys

    code = (
        "import sys, mechanisms.samplers, mechanisms.laplace, mechanisms.gaussian, "
        "mechanisms.bounding, mechanisms.accountant\n"
        "bad = {'flask', 'marshmallow', 'werkzeug', 'torch', 'opacus'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.seconds
def test_overflow_lanes_are_finished_without_bias(monkeypatch, rng) -> None:
    """Lower the 64-bit limit so ~5% of lanes take the Python-integer path in place."""
    from mechanisms import samplers

    # Laplace scale 3 (t=3, s=1): lanes with v > 2 are "unsafe" (probability e^-3)
    monkeypatch.setattr(samplers, "_I63", 9)
    lap = discrete_laplace(3.0, 100_000, rng=rng)
    assert chi_square_pvalue(lap, lambda k: discrete_laplace_pmf(3.0, k)) > SIGNIFICANCE
    # Gaussian sigma 3 (a=9, b=1, t=4): candidates with |y| >= 8 do not "fit"
    monkeypatch.setattr(samplers, "_I63", 9 + 4 * 8)
    gauss = discrete_gaussian(3.0, 100_000, rng=rng)
    assert np.abs(gauss).max() >= 8  # the slow lanes did produce values
    assert chi_square_pvalue(gauss, lambda k: discrete_gaussian_pmf(3.0, k)) > SIGNIFICANCE


@pytest.mark.parametrize("scale", [2.0**-40, 1e-9, 1e9, 2.0**40])
def test_extreme_laplace_scales(scale: float, rng: np.random.Generator) -> None:
    draws = discrete_laplace(scale, 50_000, rng=rng)
    if scale < 1e-3:
        assert not draws.any()  # P(X != 0) = 2p / (1 + p) with p = exp(-1/scale) = 0
    else:
        # E|X| ~= scale for large scales; the standard error is about 0.45%
        assert abs(np.abs(draws).mean() / scale - 1) < 0.03


@pytest.mark.parametrize("sigma", [2.0**-20, 0.1, 35_000.0])
def test_extreme_gaussian_sigmas(sigma: float, rng: np.random.Generator) -> None:
    draws = discrete_gaussian(sigma, 20_000, rng=rng)
    if sigma < 0.2:
        assert np.abs(draws).max() <= 1
        assert draws.mean() == pytest.approx(0.0, abs=0.01)
    else:
        assert abs(draws.std() / sigma - 1) < 0.03
