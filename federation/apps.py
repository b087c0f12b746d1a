"""The Flower apps: a silo's ``ClientApp`` and the coordinator's ``ServerApp`` (FedAvg).

Flower (``flwr``, the ``federation`` extra) carries the messages between processes: the
coordinator's SuperLink, one SuperNode per silo. This module only builds the apps;
``service/federation_app/`` is the Flower App that ``flwr run`` ships, and wires them to a
silo's ledger.

A round's message to a silo holds the global weights (``arrays``) and the public settings
(``config``: the training fields and ``server-round``). A silo's reply holds its trained
weights (absent when it declined the round) and public figures only (``metrics``: declined,
the averaging weight, which is its declared population size, its cumulative epsilon at its
delta, the rounds it trained). Every reply is described in the silo's ``outbox.jsonl``
(:meth:`federation.silo.Silo.record_sent`). A round whose training fails after it read the
corpus is charged and answered with one fixed error, the same for every such failure.

The coordinator's strategy (:class:`PrivtextFedAvg`) rejects, and logs, any update that
:func:`federation.updates.rejection` finds wrong (NaN, infinite, other arrays, oversized, too
far from the global model), averages the others when there are at least ``min_results``
(else the global model stays as it was), and waits at most ``round_timeout_s`` for a round's
replies. After the last round it asks every silo to publish the global model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from federation.config import FederationSettings, training_config_for_silo
from federation.silo import RoundOutcome, Silo
from federation.updates import rejection, weighted_average
from mechanisms.errors import InvalidParameterError

__all__ = ["PrivtextFedAvg", "describe", "make_client_app", "make_server_app"]

log = logging.getLogger("privtext.federation")

#: The one error a silo answers when its round failed (whatever the failure).
ROUND_FAILED = "the silo's round failed; the silo's operator log has the details"
ERROR_CODE = 1
#: A round refused from public inputs alone (the message, the settings, the silo's declared
#: population size), before anything was charged or read; its reason says why.
REFUSED_CODE = 2


def to_numpy(record: Any) -> dict[str, np.ndarray]:
    """The arrays of an ArrayRecord by name (ValueError for any other record)."""
    if not isinstance(record, ArrayRecord):
        raise ValueError("not an ArrayRecord")
    return {name: array.numpy() for name, array in record.items()}


def number(value: Any) -> float:
    """A scalar of a config or metric record as a float (ValueError for anything else)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a number: {type(value).__name__}")
    return float(value)


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in arrays.items()})


def describe(run_id: str, kind: str, content: RecordDict) -> dict[str, Any]:
    """What a message carries, for the silo's outbox log: every key and scalar value of its
    config and metric records, and each array's name, dtype, shape and SHA-256."""
    records: dict[str, Any] = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            records[name] = {
                "type": "arrays",
                "arrays": {
                    k: {
                        "dtype": str(a.numpy().dtype),
                        "shape": list(a.numpy().shape),
                        "sha256": hashlib.sha256(a.numpy().tobytes()).hexdigest(),
                    }
                    for k, a in record.items()
                },
            }
        else:
            records[name] = {"type": type(record).__name__, "values": dict(record)}
    return {"run_id": run_id, "kind": kind, "records": records}


# -- the silo -------------------------------------------------------------------------------


def _train_reply(silo: Silo, outcome: RoundOutcome) -> RecordDict:
    metrics = MetricRecord(
        {
            "declined": int(outcome.declined is not None),
            "weight": silo.population_size,
            "epsilon": outcome.epsilon,
            "delta": outcome.delta,
            "rounds-trained": outcome.rounds_trained,
        }
    )
    content = RecordDict({"metrics": metrics})
    if outcome.arrays is not None:
        content["arrays"] = to_record(outcome.arrays)
    return content


def _publish_here(silo: Silo, run_id: str, msg: Message) -> RecordDict:
    """Publish the message's global model in ``silo``; the reply's content."""
    config = dict(msg.content["config"])
    version = silo.publish(
        run_id,
        to_numpy(msg.content["arrays"]),
        config,
        rounds=int(number(config["rounds"])),
        activate=bool(config.get("activate", False)),
    )
    metrics = MetricRecord(
        {"epsilon": float(version.epsilon or 0.0), "delta": float(version.delta or 0.0)}
    )
    return RecordDict({"metrics": metrics, "model": ConfigRecord({"model-id": version.id})})


def make_client_app(open_silo: Callable[[Context], Silo]) -> ClientApp:
    """The silo's ClientApp; ``open_silo(context)`` gives the silo (its data directory,
    ledger and declared population size, from the SuperNode's node config)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        silo = open_silo(context)
        run_id = str(context.run_id)
        try:  # public inputs only: a refusal here can say why
            config = dict(msg.content["config"])
            server_round = int(number(config["server-round"]))
            global_arrays = to_numpy(msg.content["arrays"])
            silo.config(config)
        except (InvalidParameterError, KeyError, ValueError) as exc:
            reason = f"refused before anything was charged or read: {exc}"
            silo.record_sent({"run_id": run_id, "kind": "train", "error": reason})
            return Message(Error(REFUSED_CODE, reason), reply_to=msg)
        try:
            outcome = silo.local_round(run_id, server_round, config, global_arrays)
            content = _train_reply(silo, outcome)
        except Exception:
            log.exception("federated round failed", extra={"run_id": run_id})
            silo.record_sent({"run_id": run_id, "kind": "train", "error": ROUND_FAILED})
            return Message(Error(ERROR_CODE, ROUND_FAILED), reply_to=msg)
        silo.record_sent(describe(run_id, "train", content))
        return Message(content, reply_to=msg)

    @app.query()
    def publish(msg: Message, context: Context) -> Message:
        silo = open_silo(context)
        run_id = str(context.run_id)
        try:
            content = _publish_here(silo, run_id, msg)
        except Exception:
            log.exception("publishing the federated model failed", extra={"run_id": run_id})
            silo.record_sent({"run_id": run_id, "kind": "publish", "error": ROUND_FAILED})
            return Message(Error(ERROR_CODE, ROUND_FAILED), reply_to=msg)
        silo.record_sent(describe(run_id, "publish", content))
        return Message(content, reply_to=msg)

    return app


# -- the coordinator --------------------------------------------------------------------------


class PrivtextFedAvg(FedAvg):
    """FedAvg over the silos' accepted updates, weighted by their declared population
    sizes; see the module docstring for what is rejected. ``rounds`` records, per round, the
    silos (Flower node ids) that were accepted, declined, rejected (with why) or failed."""

    def __init__(self, settings: FederationSettings) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=settings.min_silos,
            min_available_nodes=settings.min_silos,
            weighted_by_key="weight",
        )
        self.settings = settings
        self.global_arrays: dict[str, np.ndarray] = {}
        self.rounds: list[dict[str, Any]] = []
        self.silos: dict[str, dict[str, float]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.global_arrays = to_numpy(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def _judge(self, msg: Message) -> tuple[str, str | None, float]:
        """(outcome, reason, weight) of one reply: accepted, declined, failed or rejected."""
        if msg.has_error():
            return "failed", msg.error.reason, 0.0
        metrics = msg.content.get("metrics")
        if not isinstance(metrics, MetricRecord):
            return "rejected", "no metrics", 0.0
        node = str(msg.metadata.src_node_id)
        self.silos[node] = {k: number(metrics[k]) for k in ("epsilon", "delta") if k in metrics}
        if metrics.get("declined"):
            return "declined", None, 0.0
        weight = number(metrics.get("weight", 0))
        record = msg.content.get("arrays")
        if not isinstance(record, ArrayRecord):
            return "rejected", "no arrays", 0.0
        if not weight > 0:
            return "rejected", "no positive weight", 0.0
        reason = rejection(
            to_numpy(record),
            self.global_arrays,
            max_bytes=self.settings.max_update_bytes,
            max_norm=self.settings.max_update_norm,
        )
        return ("rejected", reason, 0.0) if reason else ("accepted", None, weight)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted, weights = [], []
        entry: dict[str, Any] = {"round": server_round, "silos": {}}
        for msg in replies:
            outcome, reason, weight = self._judge(msg)
            node = str(msg.metadata.src_node_id)
            entry["silos"][node] = {"outcome": outcome, "reason": reason}
            if outcome == "accepted":
                accepted.append(to_numpy(msg.content["arrays"]))
                weights.append(weight)
            elif outcome != "declined":
                log.warning("round %s: silo %s %s (%s)", server_round, node, outcome, reason)
        entry["accepted"] = len(accepted)
        entry["averaged"] = len(accepted) >= self.settings.min_results
        self.rounds.append(entry)
        if not entry["averaged"]:
            log.warning(
                "round %s: %s accepted updates, fewer than %s: the global model is unchanged",
                server_round, len(accepted), self.settings.min_results,
            )
            return None, None
        return to_record(weighted_average(accepted, weights)), MetricRecord(
            {"accepted": len(accepted)}
        )


def _publish(grid: Grid, settings: FederationSettings, arrays: ArrayRecord) -> dict[str, Any]:
    """Ask every connected silo to publish ``arrays``; returns each silo's answer."""
    config = ConfigRecord(
        {"rounds": settings.rounds, "activate": settings.activate, **settings.training_wire()}
    )
    messages = [
        Message(
            RecordDict({"arrays": arrays, "config": config}),
            dst_node_id=node,
            message_type="query",
        )
        for node in grid.get_node_ids()
    ]
    published: dict[str, Any] = {}
    for reply in grid.send_and_receive(messages, timeout=settings.round_timeout_s):
        node = str(reply.metadata.src_node_id)
        if reply.has_error():
            published[node] = {"error": reply.error.reason}
            continue
        published[node] = {
            "model_id": reply.content["model"]["model-id"],
            **{k: number(v) for k, v in reply.content["metrics"].items()},
        }
    return published


def make_server_app() -> ServerApp:
    """The coordinator's ServerApp: settings from the run config, FedAvg for ``rounds``
    rounds from the public initial weights, then publication in every silo, and a summary
    (JSON, no private figure) at ``summary_path``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from federation.weights import initial_arrays  # lazy: torch, only when a run starts

        settings = FederationSettings.from_run_config(dict(context.run_config))
        config = training_config_for_silo(settings.training, population_size=10**9)
        strategy = PrivtextFedAvg(settings)
        result = strategy.start(
            grid=grid,
            initial_arrays=to_record(initial_arrays(config)),
            num_rounds=settings.rounds,
            timeout=settings.round_timeout_s,
            train_config=ConfigRecord(settings.training_wire()),
        )
        trained = any(r["averaged"] for r in strategy.rounds)
        published = _publish(grid, settings, result.arrays) if trained else {}
        summary = {
            "run_id": str(context.run_id),
            "rounds": strategy.rounds,
            "silos": strategy.silos,
            "published": published,
            "trained": trained,
        }
        log.info("federation finished: %s", json.dumps(summary, sort_keys=True))
        if settings.summary_path:
            Path(settings.summary_path).write_text(json.dumps(summary, indent=2), "utf-8")

    return app
