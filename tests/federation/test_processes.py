"""A federation on loopback, as real processes: ``privtext federation serve`` (SuperLink and
the ServerApp) and three ``privtext federation join`` (SuperNodes whose ClientApps train),
each silo with its own data directory, snapshot, ledger and cap.

The corpus of ``tests.factories.make_messages`` (20 senders) is split by a hash of the sender
into three silos. A tiny config (2 DP-SGD steps per round, 8 tokens, 2 messages per sender,
top layer only), two rounds. Silo 2's cap affords one round only, so it declines the second.
Measured: about 60-90 s on 2 shared cores (so it is marked ``slow``: ``make test-slow``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corpus.ingest import ingest_file
from federation.config import training_config_for_silo
from federation.silo import PRINCIPAL
from mechanisms.accountant import Accountant
from mechanisms.budget import Budget
from mechanisms.spend import Spend
from models.registry import ModelRegistry
from models.training import plan_training
from service.config import Settings
from service.store.db import engine_for, init_db
from service.store.ledger import SqlLedger
from tests.factories import make_messages, write_jsonl

pytest.importorskip("flwr")

pytestmark = [pytest.mark.slow, pytest.mark.torch]

ROOT = Path(__file__).resolve().parents[2]
POPULATION = 10  # each silo's declared number of senders (public; ~7 in each really)
TRAINING = {
    "steps": 2,
    "expected_senders_per_batch": 3,
    "target_epsilon": 2.0,
    "max_seq_len": 8,
    "max_messages_per_sender": 2,
    "trainable_layers": 1,
    "seed": 5,
}
ROUNDS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _silo_of(sender: str) -> int:
    """The silo of a sender: a hash of the sender, modulo 3."""
    return int(hashlib.sha256(sender.encode()).hexdigest(), 16) % 3


def _ledger(data_dir: Path) -> SqlLedger:
    engine = engine_for(Settings.load({"data_dir": str(data_dir)}))
    init_db(engine)
    return SqlLedger(engine)


def _privtext(data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", "from service.cli import main; main()",
            "--data-dir", str(data_dir), *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def federation_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("federation")
    rows = make_messages()
    silos = [root / f"silo{i}" for i in range(3)]
    for i, silo in enumerate(silos):
        mine = [r for r in rows if _silo_of(r["sender"]) == i]
        (silo / "data").mkdir(parents=True)
        ingest_file(write_jsonl(silo / "corpus.jsonl", mine), silo / "data", workers=1)
    config = training_config_for_silo(TRAINING, population_size=POPULATION)
    event = plan_training(config)
    delta = 1e-3
    one_round = Spend.total([event]).epsilon(delta)  # the ledger's admission bound
    two_rounds = Spend.total([event, event]).epsilon(delta)
    caps = [two_rounds * 1.01, two_rounds * 1.01, one_round * 1.01]  # silo 2: one round only
    for silo, cap in zip(silos, caps, strict=True):
        _ledger(silo / "data").set_corpus_cap(Budget(cap, delta))
    port = _free_port()
    logs = {name: open(root / f"{name}.log", "wb") for name in ("serve", "silo0", "silo1", "silo2")}
    summary = root / "summary.json"
    serve = subprocess.Popen(
        _privtext(root / "coordinator", "federation", "serve", "--insecure", "--port", str(port),
                  "--rounds", str(ROUNDS), "--min-silos", "3", "--min-results", "2",
                  "--round-timeout", "240", "--summary", str(summary),
                  *[a for k, v in TRAINING.items() for a in (f"--{k.replace('_', '-')}", str(v))]),
        env=_env(), stdout=logs["serve"], stderr=subprocess.STDOUT, start_new_session=True,
    )
    nodes = [
        subprocess.Popen(
            _privtext(silo / "data", "federation", "join", "--insecure",
                      "--superlink", f"127.0.0.1:{port}", "--population-size", str(POPULATION),
                      "--port", str(_free_port())),
            env=_env(), stdout=logs[f"silo{i}"], stderr=subprocess.STDOUT, start_new_session=True,
        )
        for i, silo in enumerate(silos)
    ]
    try:
        rc = serve.wait(timeout=600)
    finally:
        for proc in (serve, *nodes):
            _stop(proc)
        for fh in logs.values():
            fh.close()
    if rc != 0:
        pytest.fail(f"serve exited {rc}:\n" + (root / "serve.log").read_text()[-4000:])
    yield {"root": root, "silos": silos, "rows": rows, "event": event,
           "summary": json.loads(summary.read_text())}


def test_two_rounds_average_three_silos_and_every_silo_publishes(
    federation_run: dict[str, Any],
) -> None:
    summary = federation_run["summary"]
    assert summary["trained"] is True
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert [r["accepted"] for r in rounds] == [3, 2]  # silo 2 declined round 2
    assert all(r["averaged"] for r in rounds)
    outcomes = sorted(s["outcome"] for s in rounds[1]["silos"].values())
    assert outcomes == ["accepted", "accepted", "declined"]
    assert len(summary["published"]) == 3
    for silo in federation_run["silos"]:
        versions = ModelRegistry(silo / "data").list()
        assert len(versions) == 2  # base and the federated model
        model = versions[-1]
        assert model.id in {p["model_id"] for p in summary["published"].values()}
        assert model.manifest["federation"]["rounds"] == ROUNDS
        assert (model.path / "modules.json").is_file()
        assert "several silos" in model.manifest["privacy_statement"]


def test_each_silo_is_charged_once_per_round_it_trained(federation_run: dict[str, Any]) -> None:
    event = federation_run["event"]
    for i, silo in enumerate(federation_run["silos"]):
        ledger = _ledger(silo / "data")
        entries = [e for e in ledger.history(PRINCIPAL) if e.scope == "corpus"]
        trained = 1 if i == 2 else 2
        assert [e.status for e in entries] == ["committed"] * trained
        assert all(e.event == event for e in entries)
        model = ModelRegistry(silo / "data").list()[-1]
        assert model.manifest["federation"]["rounds_trained_here"] == trained
        assert model.delta is not None
        expected = Accountant([event] * trained).epsilon(model.delta)
        assert model.epsilon == pytest.approx(expected)


def test_what_silos_sent_holds_no_text_and_no_sender_id(federation_run: dict[str, Any]) -> None:
    """Every message each silo sent (its outbox log: every key, every config and metric value,
    each array's dtype, shape and hash) holds weights and public figures only: no sender name,
    no message text, and no scalar but the public ones, each with its expected value (the
    snapshots' sender ids are small integers, so they are excluded by the values' check, not
    by a substring search)."""
    private = {r["sender"] for r in federation_run["rows"]}
    private |= {r["text"] for r in federation_run["rows"] if len(r["text"]) > 12}
    for i, silo in enumerate(federation_run["silos"]):
        model = ModelRegistry(silo / "data").list()[-1]
        sent = (silo / "data" / "federation" / "outbox.jsonl").read_text().splitlines()
        entries = [json.loads(line) for line in sent]
        assert [e["kind"] for e in entries] == ["train"] * ROUNDS + ["publish"]
        for line, entry in zip(sent, entries, strict=True):
            assert "error" not in entry
            assert not [s for s in private if s in line], "a silo sent private data"
            records = entry["records"]
            if entry["kind"] == "publish":
                assert set(records) == {"metrics", "model"}
                assert records["model"]["values"] == {"model-id": model.id}
                assert records["metrics"]["values"] == {"epsilon": model.epsilon,
                                                        "delta": model.delta}
                continue
            declined = i == 2 and entry is entries[1]
            assert set(records) == ({"metrics"} if declined else {"metrics", "arrays"})
            values = records["metrics"]["values"]
            assert set(values) == {"declined", "weight", "epsilon", "delta", "rounds-trained"}
            assert values["declined"] == int(declined)
            assert values["weight"] == POPULATION
            assert values["delta"] == model.delta
            assert values["rounds-trained"] in (1, 2)
            if not declined:
                arrays = records["arrays"]["arrays"]
                assert all(a["dtype"] == "float32" for a in arrays.values())
                assert any(".encoder.layer.5." in name for name in arrays)  # the top layer
                assert not any("embeddings" in name for name in arrays)
