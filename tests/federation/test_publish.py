"""A federated model published in a silo is served like a centrally trained one: one charged
round (its training stubbed, its weights the public initial ones nudged), then
``Silo.publish`` into the app's data directory; ``GET /v1/models`` lists it with the silo's
epsilon, delta and statement, and, activated, ``POST /v1/embeddings`` answers from it. Loads
the base model three times (12 s of call, 20 s with the imports, on 2 shared cores): ``slow``
and ``torch``, to spare the default run, which is at CI's limit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

import federation.silo as silo_module
from federation.config import training_config_for_silo
from federation.silo import LocalResult, Silo
from federation.weights import initial_arrays
from mechanisms.accountant import Accountant
from mechanisms.budget import Budget
from mechanisms.ledger_memory import InMemoryLedger
from models.training import plan_training
from service.auth import create_principal, issue_key
from tests.fixtures.app import bearer

pytestmark = [pytest.mark.slow, pytest.mark.torch]

TRAINING = {"steps": 2, "expected_senders_per_batch": 3, "target_epsilon": 2.0,
            "max_seq_len": 8, "max_messages_per_sender": 2, "trainable_layers": 1, "seed": 1}


def test_a_published_federated_model_is_listed_and_serves_embeddings(
    app: Flask, client: FlaskClient, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = app.extensions["privtext"].settings.data_dir
    config = training_config_for_silo(TRAINING, population_size=20)
    start = initial_arrays(config)
    nudged = {k: v + np.float32(0.01) for k, v in start.items()}

    def local_train(config: Any, *, run: Any, **_: Any) -> LocalResult:
        run.corpus_read = True
        return LocalResult(nudged, "snap-1")

    monkeypatch.setattr(silo_module, "local_train", local_train)
    ledger = InMemoryLedger()
    ledger.set_corpus_cap(Budget(50.0, 1e-3))
    silo = Silo(data_dir, ledger, 20)
    assert silo.local_round("9", 1, TRAINING, start).declined is None
    version = silo.publish("9", nudged, TRAINING, rounds=1, activate=True)

    admin = bearer(admin_token)
    body = client.get("/v1/models", headers=admin).get_json()
    assert isinstance(body, dict)
    assert body["active"] == version.id
    (listed,) = [m for m in body["models"] if m["id"] == version.id]
    expected = Accountant([plan_training(config)]).epsilon(listed["delta"])
    assert listed["epsilon"] == pytest.approx(expected) and listed["delta"] == 0.001
    assert listed["privacy_statement"].startswith("Federated training")
    engine = app.extensions["privtext"].engine
    app_key = bearer(issue_key(engine, create_principal(engine, name="app", role="app")))
    emb = client.post("/v1/embeddings", json={"texts": ["hello"]}, headers=app_key).get_json()
    assert isinstance(emb, dict)
    assert emb["model_id"] == version.id and emb["dimensions"] == 384
