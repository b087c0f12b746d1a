"""The run settings as Flower carries them, the Flower App's declared defaults, and the
commands' refusals that need no process (milliseconds)."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
from click.testing import CliRunner

from federation.config import TRAINING_FIELDS, FederationSettings, training_config_for_silo
from mechanisms.errors import InvalidParameterError
from models.training_config import TrainingConfig
from service.cli import main

APP = Path(__file__).resolve().parents[2] / "service" / "federation_app" / "pyproject.toml"


def test_the_app_declares_every_setting_with_the_code_defaults() -> None:
    """``flwr run --run-config`` may override only keys the app declares."""
    config = tomllib.loads(APP.read_text())["tool"]["flwr"]["app"]["config"]
    train = config.pop("train")
    settings = FederationSettings()
    assert set(config) == {f.name for f in fields(FederationSettings)} - {"training"}
    assert all(config[k] == getattr(settings, k) for k in config)
    assert set(train) == set(TRAINING_FIELDS)
    defaults = TrainingConfig()
    # "no value" is 0.0 for delta and -1 for seed (run configs hold no None)
    assert train.pop("delta") == 0.0 and train.pop("seed") == -1
    assert all(train[k] == getattr(defaults, k) for k in train)


def test_run_config_round_trip_and_the_silo_population() -> None:
    settings = FederationSettings(rounds=3, min_silos=3, training={"steps": 4, "seed": 2})
    back = FederationSettings.from_run_config(settings.to_run_config())
    assert back == settings.validate()
    config = training_config_for_silo(
        {"train.steps": 4.0, "train.delta": 0.0, "train.seed": -1}, population_size=500
    )
    assert (config.steps, config.delta, config.seed, config.population_size) == (4, None, None, 500)


@pytest.mark.parametrize(
    "bad",
    [{"rounds": 0}, {"round_timeout_s": 0.0}, {"training": {"steps": 0}},
     {"training": {"private": False}}, {"training": {"nope": 1}}],
)
def test_bad_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidParameterError):
        FederationSettings(**bad).validate()  # type: ignore[arg-type]


def test_no_tls_is_refused_off_loopback(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path)]
    joined = runner.invoke(main, [*data, "federation", "join", "--superlink", "10.0.0.1:9093",
                                  "--population-size", "5", "--insecure"])
    assert joined.exit_code == 2 and "loopback address only" in joined.output
    served = runner.invoke(main, [*data, "federation", "serve", "--host", "0.0.0.0"])
    assert served.exit_code == 2 and "TLS files" in served.output
