"""Contribution bounding, sensitivities, noisy mean and partition selection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mechanisms.bounding import (
    cap_contributions,
    cap_keys,
    clamp,
    count_sensitivity,
    distinct_sender_counts,
    histogram_sensitivity,
    noisy_mean,
    partition_selection_event,
    partition_threshold,
    select_partitions,
    sum_sensitivity,
)
from mechanisms.errors import InvalidParameterError, PrivacyError


def test_clamp() -> None:
    out = clamp([-5.0, 0.5, 7.0, math.nan, math.inf], 0.0, 1.0)
    assert out.tolist() == [0.0, 0.5, 1.0, 0.0, 1.0]
    with pytest.raises(InvalidParameterError, match="greater than upper"):
        clamp([1.0], 2.0, 1.0)
    with pytest.raises(InvalidParameterError):
        clamp([1.0], -math.inf, 1.0)


def test_sensitivities_from_bounds() -> None:
    assert count_sensitivity(3) == 3
    assert sum_sensitivity(-2.0, 5.0, 4) == 20.0
    assert sum_sensitivity(-7.0, 5.0) == 7.0
    assert histogram_sensitivity(4, 2.0) == (8.0, 4.0)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidParameterError):
            count_sensitivity(bad)  # type: ignore[arg-type]


def test_cap_contributions_bounds_each_sender(rng: np.random.Generator) -> None:
    senders = np.repeat(np.arange(50), np.arange(1, 51))
    keep = cap_contributions(senders, 5, rng=rng)
    kept = np.bincount(senders[keep], minlength=50)
    assert np.array_equal(kept, np.minimum(np.arange(1, 51), 5))


def test_cap_contributions_chooses_uniformly(rng: np.random.Generator) -> None:
    senders = np.array(["a", "a", "a", "b"])
    hits = np.zeros(4)
    trials = 6000
    for _ in range(trials):
        hits += cap_contributions(senders, 1, rng=rng)
    assert hits[3] == trials
    # each of a's three rows kept with probability 1/3: 5 standard deviations
    sd = math.sqrt(trials * (1 / 3) * (2 / 3))
    assert np.all(np.abs(hits[:3] - trials / 3) < 5 * sd)


def test_cap_keys_and_distinct_counts(rng: np.random.Generator) -> None:
    senders = np.array([1, 1, 1, 1, 2, 2, 3])
    keys = np.array(["x", "x", "y", "z", "x", "y", "x"])
    s, k = cap_keys(senders, keys, 2, rng=rng)
    assert len(set(zip(s.tolist(), k.tolist(), strict=True))) == len(s)  # distinct pairs
    assert np.bincount(s).max() <= 2
    counts = distinct_sender_counts(senders, keys, 10, rng=rng)
    assert counts == {"x": 3, "y": 2, "z": 1}
    with pytest.raises(InvalidParameterError):
        cap_keys(senders, keys[:3], 2)


def test_partition_threshold_hand_value() -> None:
    # Laplace scale 1/epsilon: smallest t with P(X >= t - 1) = e^{-eps (t-1)} / (1 + e^-eps)
    # <= delta / (1 + delta)
    eps, delta = 1.0, 1e-6
    p = math.exp(-eps)
    m = math.ceil(math.log(delta / (1 + delta) * (1 + p)) / math.log(p))
    assert partition_threshold(epsilon=eps, delta=delta, max_keys=1) == m + 1
    assert partition_threshold(epsilon=eps, delta=delta, max_keys=5) > m + 1
    assert partition_threshold(epsilon=eps, delta=1e-9, max_keys=1) > m + 1
    assert partition_threshold(epsilon=1.0, delta=1e-6, max_keys=1, mechanism="gaussian") > 1


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_single_sender_key_is_rarely_released(mechanism: str, rng: np.random.Generator) -> None:
    delta, trials = 0.05, 20_000
    counts = {f"k{i}": 1 for i in range(trials)}
    released = select_partitions(
        counts, epsilon=1.0, delta=delta, max_keys=1, mechanism=mechanism, rng=rng
    )
    rate = len(released) / trials
    assert rate <= delta + 5 * math.sqrt(delta / trials)


def test_popular_keys_are_released_with_noisy_counts(rng: np.random.Generator) -> None:
    released = select_partitions(
        {"big": 1000, "small": 1}, epsilon=1.0, delta=1e-6, max_keys=1, rng=rng
    )
    assert "big" in released and abs(released["big"] - 1000) < 30
    assert "small" not in released
    event = partition_selection_event(epsilon=1.0, delta=1e-6)
    assert event.kind == "approx_dp" and event.delta == 1e-6


@pytest.mark.parametrize(
    "kwargs",
    [dict(epsilon=1.0, delta=0.0, max_keys=1), dict(epsilon=0.0, delta=1e-6, max_keys=1),
     dict(epsilon=1.0, delta=1.0, max_keys=1), dict(epsilon=1.0, delta=1e-6, max_keys=0),
     dict(epsilon=1.0, delta=1e-6, max_keys=1, mechanism="exponential")],
)
def test_partition_parameters_are_checked(kwargs: dict) -> None:
    with pytest.raises(PrivacyError):
        partition_threshold(**kwargs)


def test_noisy_mean_interval_and_cost(rng: np.random.Generator) -> None:
    values = rng.uniform(0, 10, 2000)
    truth = values.mean()
    covered = 0
    for _ in range(300):
        result = noisy_mean(values, lower=0, upper=10, epsilon=0.5, rng=rng)
        covered += abs(result.mean - truth) <= result.approx_half_width
    assert covered / 300 >= 0.9
    assert sum(e.epsilon for e in result.events) == pytest.approx(0.5)
    empty = noisy_mean([], lower=0, upper=10, epsilon=0.5, rng=rng)
    assert 0 <= empty.mean <= 10
