"""The coordinator's strategy on replies built in process (flwr, no torch, no network; about
0.1 s): a silo that returns NaN is rejected and never averaged in, a declined or failed silo
is left out, and a round with fewer accepted updates than ``min_results`` keeps the global
model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from federation.apps import PrivtextFedAvg, describe, to_record  # noqa: E402
from federation.config import FederationSettings  # noqa: E402

GLOBAL = {"w": np.zeros(3, np.float32)}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Flower stamps messages with the running task's identity; a test has none."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0, raising=False)
    yield


def _reply(node: int, *, arrays: np.ndarray | None = None, declined: bool = False,
           weight: float = 10.0, error: bool = False) -> Message:
    sent = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}),
                   dst_node_id=node, message_type="train")
    if error:
        return Message(Error(1, "the silo's round failed"), reply_to=sent)
    metrics: dict[str, int | float | list[int] | list[float]] = {
        "declined": int(declined), "weight": weight, "epsilon": 1.0, "delta": 1e-3,
        "rounds-trained": 1,
    }
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = to_record({"w": arrays})
    return Message(content, reply_to=sent)


def _strategy(**settings: Any) -> PrivtextFedAvg:
    strategy = PrivtextFedAvg(FederationSettings(**settings).validate())
    strategy.global_arrays = GLOBAL
    return strategy


def test_a_nan_update_is_rejected_and_the_rest_averaged() -> None:
    strategy = _strategy(min_results=2)
    replies = [
        _reply(1, arrays=np.array([1.0, 1.0, 1.0], np.float32), weight=10),
        _reply(2, arrays=np.array([4.0, 4.0, 4.0], np.float32), weight=20),
        _reply(3, arrays=np.array([np.nan, 0.0, 0.0], np.float32)),
        _reply(4, declined=True),
        _reply(5, error=True),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert isinstance(arrays, ArrayRecord) and metrics is not None
    np.testing.assert_allclose(arrays["w"].numpy(), [3.0, 3.0, 3.0])  # (10*1 + 20*4) / 30
    silos = strategy.rounds[0]["silos"]
    assert {n: s["outcome"] for n, s in silos.items()} == {
        "1": "accepted", "2": "accepted", "3": "rejected", "4": "declined", "5": "failed"
    }
    assert silos["3"]["reason"] == "it holds NaN or infinite values"
    assert strategy.rounds[0]["accepted"] == 2 and strategy.rounds[0]["averaged"]


def test_fewer_accepted_updates_than_min_results_keep_the_global_model() -> None:
    strategy = _strategy(min_results=2)
    replies = [
        _reply(1, arrays=np.array([1.0, 1.0, 1.0], np.float32)),
        _reply(2, arrays=np.array([np.inf, 0.0, 0.0], np.float32)),
        _reply(3, arrays=np.array([1.0, 1.0], np.float32)),  # the wrong shape
    ]
    assert strategy.aggregate_train(1, replies) == (None, None)
    assert strategy.rounds[0]["averaged"] is False
    assert strategy.rounds[0]["silos"]["3"]["outcome"] == "rejected"


def test_the_outbox_description_holds_keys_values_and_array_hashes() -> None:
    content = _reply(1, arrays=np.array([1.0, 2.0, 3.0], np.float32)).content
    entry = describe("7", "train", content)
    assert entry["records"]["metrics"]["values"]["weight"] == 10.0
    array = entry["records"]["arrays"]["arrays"]["w"]
    assert array["dtype"] == "float32" and array["shape"] == [3] and len(array["sha256"]) == 64
