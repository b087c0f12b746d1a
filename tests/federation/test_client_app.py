"""A silo's ClientApp called in process with a Flower message (flwr, no torch, no network;
the training replaced by a stub, as in ``test_silo.py``; about a second for the accountant's
noise calibration): what it answers and logs for a trained, a declined, a refused and a
failed round."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

import federation.silo as silo_module  # noqa: E402
from federation.apps import (  # noqa: E402
    ERROR_CODE,
    REFUSED_CODE,
    ROUND_FAILED,
    make_client_app,
    to_numpy,
    to_record,
)
from federation.config import training_config_for_silo  # noqa: E402
from federation.silo import PRINCIPAL, LocalResult, Silo  # noqa: E402
from mechanisms.budget import Budget  # noqa: E402
from mechanisms.ledger_memory import InMemoryLedger  # noqa: E402
from mechanisms.spend import Spend  # noqa: E402
from models.training import plan_training  # noqa: E402

pytestmark = pytest.mark.seconds

TRAINING = {"train.steps": 2, "train.expected_senders_per_batch": 3,
            "train.target_epsilon": 2.0, "train.trainable_layers": 1}
GLOBAL = {"w": np.zeros(2, np.float32)}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0, raising=False)
    yield


def _round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, population: int = 10,
           cap_rounds: int = 1, fail: bool = False) -> tuple[Message, Silo]:
    ledger = InMemoryLedger()
    if cap_rounds:
        event = plan_training(training_config_for_silo(TRAINING, population_size=10))
        epsilon = Spend.total([event] * cap_rounds).epsilon(1e-3) * 1.001
        ledger.set_corpus_cap(Budget(epsilon, 1e-3))

    def local_train(config: Any, *, run: Any, **_: Any) -> LocalResult:
        run.corpus_read = True
        if fail:
            raise MemoryError("a failure after the read")
        return LocalResult({"w": np.ones(2, np.float32)}, "snap")

    monkeypatch.setattr(silo_module, "local_train", local_train)
    silo = Silo(tmp_path, ledger, population)
    app = make_client_app(lambda context: silo)
    sent = Message(
        RecordDict({"arrays": to_record(GLOBAL),
                    "config": ConfigRecord({**TRAINING, "server-round": 1})}),
        dst_node_id=7, message_type="train",
    )
    context = Context(run_id=5, node_id=7, node_config={}, state=RecordDict(), run_config={})
    return app(sent, context), silo


def _outbox(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "federation" / "outbox.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_trained_round_answers_weights_and_public_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reply, silo = _round(tmp_path, monkeypatch)
    assert not reply.has_error()
    assert to_numpy(reply.content["arrays"])["w"].tolist() == [1.0, 1.0]
    metrics = dict(reply.content["metrics"])
    assert metrics["declined"] == 0 and metrics["weight"] == 10 and metrics["rounds-trained"] == 1
    assert [e.status for e in silo.ledger.live_entries(PRINCIPAL)] == ["committed"]
    (logged,) = _outbox(tmp_path)
    assert logged["records"]["metrics"]["values"] == metrics


def test_a_round_the_cap_cannot_afford_is_declined_without_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reply, silo = _round(tmp_path, monkeypatch, cap_rounds=0)
    assert not reply.has_error() and "arrays" not in reply.content
    assert reply.content["metrics"]["declined"] == 1
    assert silo.ledger.live_entries(PRINCIPAL) == []


def test_a_round_refused_from_public_inputs_says_why_and_charges_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reply, silo = _round(tmp_path, monkeypatch, population=2)  # 3 expected of 2 declared
    assert reply.has_error() and reply.error.code == REFUSED_CODE
    assert "expected_senders_per_batch must be at most population_size" in str(reply.error.reason)
    assert silo.ledger.live_entries(PRINCIPAL) == []


def test_a_failure_after_the_read_is_charged_and_answered_with_one_fixed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reply, silo = _round(tmp_path, monkeypatch, fail=True)
    assert reply.has_error() and reply.error.code == ERROR_CODE
    assert reply.error.reason == ROUND_FAILED  # not the exception, not its class
    assert [e.status for e in silo.ledger.live_entries(PRINCIPAL)] == ["committed"]
    assert _outbox(tmp_path) == [{"run_id": "5", "kind": "train", "error": ROUND_FAILED}]
