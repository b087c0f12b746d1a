"""The settings of a federated training, and how Flower's flat run config carries them.

A federation's settings are public: the coordinator sends the training fields of
:class:`models.training_config.TrainingConfig` to every silo in each round's ``ConfigRecord``;
each silo adds its own declared ``population_size`` (a public figure of its corpus, from its
node config) and validates the result before anything is read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mechanisms.errors import InvalidParameterError
from models.training_config import TrainingConfig

__all__ = ["FederationSettings", "TRAINING_FIELDS", "training_config_for_silo"]

#: The TrainingConfig fields a coordinator sets for every silo (``population_size`` is the
#: silo's own; ``seed`` fixes only the head's initialisation and masking, as centrally).
TRAINING_FIELDS = tuple(f.name for f in fields(TrainingConfig) if f.name != "population_size")

#: Run-config keys are ``train.<field>`` for the training fields, the rest as below.
PREFIX = "train."


@dataclass
class FederationSettings:
    """``rounds`` >= 1; ``min_silos``: silos connected before a round starts (Flower waits
    for them without a time limit; all connected silos are asked); ``min_results``: accepted
    updates a round needs to be averaged in (else the global model stays as it was);
    ``round_timeout_s``: how long a round waits for replies; ``max_update_norm``: an update
    whose L2 distance from the global weights exceeds it is rejected (0: no bound);
    ``max_update_bytes``: the most bytes an update may hold; ``activate``: whether each silo
    activates the published model; ``training``: the local rounds' config (without population
    size); ``summary_path``: where the coordinator writes its summary (JSON), "" for
    nowhere."""

    rounds: int = 2
    min_silos: int = 2
    min_results: int = 2
    round_timeout_s: float = 600.0
    max_update_norm: float = 0.0
    max_update_bytes: int = 256 * 1024 * 1024
    activate: bool = False
    summary_path: str = ""
    training: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> FederationSettings:
        for name in ("rounds", "min_silos", "min_results", "max_update_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidParameterError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("round_timeout_s", "max_update_norm"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0 or (name == "round_timeout_s" and value == 0):
                raise InvalidParameterError(f"{name} must be finite and positive")
        unknown = set(self.training) - set(TRAINING_FIELDS)
        if unknown:
            raise InvalidParameterError(f"unknown training fields {sorted(unknown)}")
        # a silo adds its population; any valid one will do to check the rest now
        training_config_for_silo(self.training, population_size=10**9)
        return self

    def to_run_config(self) -> dict[str, Any]:
        """Flat ``key -> scalar`` (Flower's run config and ConfigRecord hold no nesting or
        None): training fields under ``train.``; a None field is left out."""
        flat: dict[str, Any] = {k: v for k, v in asdict(self).items() if k != "training"}
        flat.update({PREFIX + k: v for k, v in self.training.items() if v is not None})
        return flat

    @classmethod
    def from_run_config(cls, flat: Mapping[str, Any]) -> FederationSettings:
        names = {f.name for f in fields(cls)} - {"training"}
        training = {k[len(PREFIX) :]: v for k, v in flat.items() if k.startswith(PREFIX)}
        unknown = {k for k in flat if not k.startswith(PREFIX)} - names
        if unknown:
            raise InvalidParameterError(f"unknown federation settings {sorted(unknown)}")
        known = {k: v for k, v in flat.items() if k in names}
        for name in ("rounds", "min_silos", "min_results", "max_update_bytes"):
            if name in known and isinstance(known[name], float) and known[name].is_integer():
                known[name] = int(known[name])
        return cls(**known, training=training).validate()

    def training_wire(self) -> dict[str, Any]:
        """The training fields as a round's ConfigRecord carries them (``train.<field>``)."""
        return {PREFIX + k: v for k, v in self.training.items() if v is not None}


def training_config_for_silo(
    training: Mapping[str, Any], *, population_size: int
) -> TrainingConfig:
    """The coordinator's training fields (with or without the ``train.`` prefix) plus the
    silo's declared population size, validated (InvalidParameterError). Always private."""
    data = {(k[len(PREFIX) :] if k.startswith(PREFIX) else k): v for k, v in training.items()}
    data = {k: v for k, v in data.items() if k in TRAINING_FIELDS}
    # Flower's run config holds no None: the app's defaults say 0.0 and -1 for "none"
    if data.get("delta") == 0:
        data["delta"] = None
    if data.get("seed") == -1:
        data["seed"] = None
    if data.get("private") is False:
        raise InvalidParameterError("a federated training is always private")
    ints = {f.name for f in fields(TrainingConfig) if f.type in ("int", "int | None")}
    for k, v in list(data.items()):
        if k in ints and isinstance(v, float) and v.is_integer():
            data[k] = int(v)
    return TrainingConfig.from_dict({**data, "population_size": population_size})
