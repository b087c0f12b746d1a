"""LaplaceMechanism: cost, accuracy, empirical privacy loss, coverage and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mechanisms.errors import InvalidParameterError
from mechanisms.laplace import LaplaceMechanism

from .privacy_tests import Z, max_log_ratio_excess

N = 300_000


def test_cost_and_scale_are_tied() -> None:
    mech = LaplaceMechanism(sensitivity=2, epsilon=0.5)
    assert mech.scale == 4.0 and mech.epsilon == 0.5
    assert mech.event().kind == "laplace" and mech.event().epsilon == 0.5
    assert LaplaceMechanism(sensitivity=1, scale=10.0).epsilon == 0.1
    grid = LaplaceMechanism(sensitivity=1.0, epsilon=0.5, granularity=0.25, coordinates=2)
    assert grid.effective_sensitivity == 1.5  # sensitivity + coordinates * g
    assert grid.scale == 3.0 and grid.epsilon == 0.5


def test_confidence_interval_is_exact_quantile() -> None:
    mech = LaplaceMechanism(sensitivity=1, scale=2.0)
    p = math.exp(-0.5)
    k = mech.confidence_interval(0.95)
    assert 2 * p ** (k + 1) / (1 + p) <= 0.05 < 2 * p**k / (1 + p)
    # near the continuous b ln 20 = 5.99
    assert k == 6


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95, 0.99])
def test_from_accuracy_is_cheapest(level: float) -> None:
    mech = LaplaceMechanism.from_accuracy(sensitivity=1, half_width=5, level=level)
    assert mech.confidence_interval(level) <= 5
    wider = LaplaceMechanism(sensitivity=1, scale=mech.scale * 1.01)
    assert wider.confidence_interval(level) > 5


def test_from_accuracy_on_grid() -> None:
    mech = LaplaceMechanism.from_accuracy(sensitivity=1, half_width=2.0, granularity=2**-6)
    assert mech.confidence_interval() <= 2.0
    assert mech.confidence_interval() > 1.9
    with pytest.raises(InvalidParameterError):
        LaplaceMechanism.from_accuracy(sensitivity=1, half_width=0.1, granularity=0.5)


def test_coverage_over_4000_trials(rng: np.random.Generator) -> None:
    mech = LaplaceMechanism(sensitivity=1, epsilon=0.05, rng=rng)
    truth = np.full(4000, 1234)
    half = mech.confidence_interval(0.95)
    covered = np.mean(np.abs(mech.randomise(truth) - truth) <= half)
    assert 0.935 <= covered <= 0.965


def test_coverage_of_real_values_on_grid(rng: np.random.Generator) -> None:
    mech = LaplaceMechanism(sensitivity=1.0, epsilon=0.1, granularity=2**-3, rng=rng)
    truth = rng.uniform(-100, 100, 4000)
    covered = np.mean(np.abs(mech.randomise(truth) - truth) <= mech.confidence_interval())
    assert 0.935 <= covered <= 0.965


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 1.0])
def test_empirical_privacy_loss_integer(epsilon: float, rng: np.random.Generator) -> None:
    mech = LaplaceMechanism(sensitivity=1, epsilon=epsilon, rng=rng)
    a, b = mech.randomise(np.zeros(N, dtype=np.int64)), mech.randomise(np.ones(N, dtype=np.int64))
    assert max_log_ratio_excess(a, b, mech.epsilon, min_count=1000) < Z


def test_empirical_privacy_loss_real_on_grid(rng: np.random.Generator) -> None:
    g = 0.25
    mech = LaplaceMechanism(sensitivity=0.6, epsilon=0.5, granularity=g, rng=rng)
    x, y = 0.37, 0.37 + 0.6  # neighbouring statistics
    a = np.rint(mech.randomise(np.full(N, x)) / g).astype(np.int64)
    b = np.rint(mech.randomise(np.full(N, y)) / g).astype(np.int64)
    assert max_log_ratio_excess(a, b, mech.epsilon, min_count=1000) < Z


def test_privacy_loss_test_catches_understated_epsilon(rng: np.random.Generator) -> None:
    """The same test flags a mechanism whose noise is 25% too small for its stated epsilon."""
    mech = LaplaceMechanism(sensitivity=1, scale=0.8 / 0.5, rng=rng)
    a, b = mech.randomise(np.zeros(N, dtype=np.int64)), mech.randomise(np.ones(N, dtype=np.int64))
    assert max_log_ratio_excess(a, b, 0.5, min_count=1000) > Z


def test_randomise_keeps_types_and_shapes(rng: np.random.Generator) -> None:
    mech = LaplaceMechanism(sensitivity=1, epsilon=1.0, rng=rng)
    assert isinstance(mech.randomise(5), int)
    out = mech.randomise(np.zeros((3, 4), dtype=np.int32))
    assert out.shape == (3, 4) and out.dtype == np.int64
    grid = LaplaceMechanism(sensitivity=1, epsilon=1.0, granularity=2**-10, rng=rng)
    value = grid.randomise(0.123)
    assert isinstance(value, float) and (value * 2**10).is_integer()


@pytest.mark.parametrize(
    "kwargs",
    [dict(sensitivity=0, epsilon=1.0), dict(sensitivity=-1, epsilon=1.0),
     dict(sensitivity=math.nan, epsilon=1.0), dict(sensitivity=1, epsilon=0.0),
     dict(sensitivity=1, epsilon=-0.5), dict(sensitivity=1, epsilon=math.inf),
     dict(sensitivity=1), dict(sensitivity=1, epsilon=1.0, scale=1.0),
     dict(sensitivity=1, epsilon=1.0, granularity=0.3),
     dict(sensitivity=1, epsilon=1.0, coordinates=0), dict(sensitivity=1, epsilon=1.0, rng=7)],
)
def test_invalid_parameters(kwargs: dict) -> None:
    with pytest.raises(InvalidParameterError):
        LaplaceMechanism(**kwargs)


@pytest.mark.parametrize("value", [1.5, np.array([1.0]), "3", math.nan])
def test_invalid_values_without_grid(value: object) -> None:
    with pytest.raises(InvalidParameterError):
        LaplaceMechanism(sensitivity=1, epsilon=1.0).randomise(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [math.nan, math.inf, 1e300])
def test_invalid_values_on_grid(value: float) -> None:
    with pytest.raises(InvalidParameterError):
        LaplaceMechanism(sensitivity=1, epsilon=1.0, granularity=1.0).randomise(value)
