"""The plan of a private training matches the accountant and refuses bad privacy parameters,
from public inputs only (no torch: these run in ``make test-fast``)."""

from __future__ import annotations

import math

import pytest

from mechanisms.accountant import Accountant
from mechanisms.errors import InvalidParameterError
from models.training import TrainingConfig, default_delta, plan_training


def test_default_delta_is_below_one_over_senders() -> None:
    for n in (1, 7, 20, 999, 1000, 25_000):
        assert default_delta(n) < 1 / n
        assert math.log10(default_delta(n)).is_integer()
    assert default_delta(20) == 1e-3 and default_delta(25_000) == 1e-6


@pytest.mark.seconds
def test_plan_epsilon_matches_the_accountant() -> None:
    config = TrainingConfig(
        target_epsilon=3.0, steps=50, expected_senders_per_batch=10, population_size=1000
    )
    event = plan_training(config)
    assert event.kind == "subsampled_gaussian"
    assert event.sampling_rate == pytest.approx(0.01) and event.steps == 50
    eps = Accountant([event]).epsilon(default_delta(1000), method="pld")
    assert 0.97 * 3.0 < eps <= 3.0  # tight from below: the smallest noise that fits
    # 1% less noise would exceed the target (the search is not wastefully loose)
    looser = type(event).subsampled_gaussian(
        noise_multiplier=event.noise_multiplier * 0.99, sampling_rate=0.01, steps=50
    )
    assert Accountant([looser]).epsilon(default_delta(1000), method="pld") > 2.97


def test_plan_refuses_bad_privacy_parameters() -> None:
    with pytest.raises(InvalidParameterError, match="1/population_size"):
        plan_training(TrainingConfig(delta=0.01, population_size=200, expected_senders_per_batch=8))
    with pytest.raises(InvalidParameterError):
        plan_training(TrainingConfig(target_epsilon=0.0, population_size=200))
    with pytest.raises(InvalidParameterError, match="non-private"):
        plan_training(
            TrainingConfig(private=False, population_size=200, expected_senders_per_batch=8)
        )
    with pytest.raises(InvalidParameterError, match="population_size is required"):
        plan_training(TrainingConfig(expected_senders_per_batch=8))
    with pytest.raises(InvalidParameterError, match="at most population_size"):
        plan_training(TrainingConfig(population_size=100, expected_senders_per_batch=101))
    with pytest.raises(InvalidParameterError):
        plan_training(TrainingConfig(population_size=0))
    with pytest.raises(InvalidParameterError):
        TrainingConfig.from_dict({"target_epsilon": 1.0, "noise": 0})
