"""GaussianMechanism: cost, accuracy, empirical (epsilon, delta) test, coverage, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mechanisms.errors import InvalidParameterError
from mechanisms.gaussian import GaussianMechanism

from .privacy_tests import Z, max_event_excess

N = 300_000


def test_rho_and_sigma_are_tied() -> None:
    mech = GaussianMechanism(sensitivity=1, sigma=10.0)
    assert mech.sigma == pytest.approx(10.0) and mech.rho == 0.005
    assert mech.noise_multiplier <= 10.0 and mech.noise_multiplier == pytest.approx(10.0)
    assert mech.event().kind == "gaussian"
    by_rho = GaussianMechanism(sensitivity=3, rho=0.5)
    assert by_rho.rho <= 0.5 and by_rho.rho == pytest.approx(0.5, rel=1e-5)
    assert by_rho.sigma == pytest.approx(3.0, rel=1e-6)
    grid = GaussianMechanism(sensitivity=1.0, rho=0.5, granularity=0.25, coordinates=4)
    assert grid.effective_sensitivity == pytest.approx(1.5)  # + sqrt(4) * g


def test_epsilon_delta_construction() -> None:
    mech = GaussianMechanism(sensitivity=1, epsilon=1.0, delta=1e-6)
    assert mech.epsilon_at(1e-6) <= 1.0
    assert mech.epsilon_at(1e-6) == pytest.approx(1.0, rel=0.01)
    with pytest.raises(InvalidParameterError):
        GaussianMechanism(sensitivity=1, epsilon=1.0)
    with pytest.raises(InvalidParameterError):
        GaussianMechanism(sensitivity=1, epsilon=1.0, delta=0.0)


def test_confidence_interval_is_exact_quantile() -> None:
    sigma = 4.0
    mech = GaussianMechanism(sensitivity=1, sigma=sigma)
    k = mech.confidence_interval(0.95)
    ks = np.arange(-200, 201)
    pmf = np.exp(-(ks**2) / (2 * sigma**2))
    pmf /= pmf.sum()
    assert pmf[np.abs(ks) <= k].sum() >= 0.95 > pmf[np.abs(ks) <= k - 1].sum()


@pytest.mark.parametrize("level", [0.5, 0.95, 0.99])
def test_from_accuracy_is_cheapest(level: float) -> None:
    mech = GaussianMechanism.from_accuracy(sensitivity=1, half_width=5, level=level)
    assert mech.confidence_interval(level) <= 5
    assert GaussianMechanism(sensitivity=1, sigma=mech.sigma * 1.01).confidence_interval(level) > 5


def test_coverage_over_4000_trials(rng: np.random.Generator) -> None:
    mech = GaussianMechanism(sensitivity=1, sigma=30.0, rng=rng)
    truth = np.full(4000, -77)
    covered = np.mean(np.abs(mech.randomise(truth) - truth) <= mech.confidence_interval())
    assert 0.935 <= covered <= 0.965


def test_coverage_of_real_values_on_grid(rng: np.random.Generator) -> None:
    mech = GaussianMechanism(sensitivity=1.0, sigma=5.0, granularity=2**-4, rng=rng)
    truth = rng.uniform(-100, 100, 4000)
    covered = np.mean(np.abs(mech.randomise(truth) - truth) <= mech.confidence_interval())
    assert 0.935 <= covered <= 0.965


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_empirical_epsilon_delta(sigma: float, rng: np.random.Generator) -> None:
    mech = GaussianMechanism(sensitivity=1, sigma=sigma, rng=rng)
    delta = 1e-3
    eps = mech.epsilon_at(delta)
    a = mech.randomise(np.zeros(N, dtype=np.int64))
    b = mech.randomise(np.ones(N, dtype=np.int64))
    thresholds = np.arange(-4 * sigma, 5 * sigma + 1)
    assert max_event_excess(a, b, eps, delta, thresholds) < Z


def test_empirical_test_catches_understated_cost(rng: np.random.Generator) -> None:
    """Claiming sigma 3's guarantee for sigma 1.5 noise is flagged."""
    claimed = GaussianMechanism(sensitivity=1, sigma=3.0).epsilon_at(1e-3)
    mech = GaussianMechanism(sensitivity=1, sigma=1.5, rng=rng)
    a = mech.randomise(np.zeros(N, dtype=np.int64))
    b = mech.randomise(np.ones(N, dtype=np.int64))
    assert max_event_excess(a, b, claimed, 1e-3, np.arange(-6.0, 8.0)) > Z


def test_randomise_keeps_types_and_shapes(rng: np.random.Generator) -> None:
    mech = GaussianMechanism(sensitivity=1, rho=0.1, rng=rng)
    assert isinstance(mech.randomise(5), int)
    assert mech.randomise(np.zeros((2, 5), dtype=np.int64)).shape == (2, 5)
    grid = GaussianMechanism(sensitivity=1, rho=0.1, granularity=2**-8, rng=rng)
    value = grid.randomise(0.3)
    assert isinstance(value, float) and (value * 2**8).is_integer()


@pytest.mark.parametrize(
    "kwargs",
    [dict(sensitivity=0, rho=1.0), dict(sensitivity=1, rho=0.0), dict(sensitivity=1, rho=-1.0),
     dict(sensitivity=1, rho=math.nan), dict(sensitivity=1, sigma=math.inf),
     dict(sensitivity=1), dict(sensitivity=1, rho=1.0, sigma=2.0),
     dict(sensitivity=1, epsilon=1.0, delta=1.0), dict(sensitivity=1, epsilon=0.0, delta=1e-6),
     dict(sensitivity=1, rho=1.0, granularity=3.0)],
)
def test_invalid_parameters(kwargs: dict) -> None:
    with pytest.raises(InvalidParameterError):
        GaussianMechanism(**kwargs)


def test_invalid_values() -> None:
    with pytest.raises(InvalidParameterError):
        GaussianMechanism(sensitivity=1, rho=1.0).randomise(0.5)
    with pytest.raises(InvalidParameterError):
        GaussianMechanism(sensitivity=1, rho=1.0, granularity=1.0).randomise(math.nan)


def test_reported_cost_never_exceeds_requested() -> None:
    from mechanisms.laplace import LaplaceMechanism

    gen = np.random.default_rng(11)
    for _ in range(500):
        budget = float(gen.uniform(1e-4, 10))
        sens = float(gen.choice([1.0, 2.0, 3.0, 0.5, 7.3]))
        g = [None, 2.0**-6][int(gen.integers(2))]
        assert GaussianMechanism(sensitivity=sens, rho=budget, granularity=g).rho <= budget
        assert LaplaceMechanism(sensitivity=sens, epsilon=budget, granularity=g).epsilon <= budget
