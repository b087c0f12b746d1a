"""Training jobs over HTTP: planned from public inputs only (the declared population size,
never a count of the corpus), charged to the corpus-wide cap before they are queued, refused
without budget, committed when the model is published, refunded only when training stopped
before reading the corpus, charged in full for a failure after the read and for the steps
begun for a cancel; job status, progress and errors; the model registry routes. The queue runs
inline (memory://)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from mechanisms.ledger import Budget
from service.app import create_app
from service.auth import create_principal, issue_key
from service.store.ledger import SqlLedger
from tests.fixtures.app import bearer

TINY = {
    "population_size": 20,  # declared by the admin; the tiny corpus does hold 20 senders
    "target_epsilon": 8.0,
    "steps": 2,
    "expected_senders_per_batch": 4,
    "max_messages_per_sender": 4,
    "max_seq_len": 16,
    "trainable_layers": 1,
    "seed": 3,
}


@pytest.fixture
def jobs_app(data_dir: Path, ingested: Any) -> Iterator[Flask]:
    app = create_app({"data_dir": str(data_dir), "testing": True, "queue_url": "memory://"})
    yield app
    app.extensions["privtext"].engine.dispose()


@pytest.fixture
def client(jobs_app: Flask) -> FlaskClient:
    return jobs_app.test_client()


@pytest.fixture
def ledger(jobs_app: Flask) -> SqlLedger:
    return SqlLedger(jobs_app.extensions["privtext"].engine)


def _key(app: Flask, role: str) -> str:
    engine = app.extensions["privtext"].engine
    name = f"{role}-{uuid.uuid4().hex[:8]}"  # analysts' names are unique
    return issue_key(engine, create_principal(engine, name=name, role=role))


@pytest.fixture
def admin(jobs_app: Flask) -> dict[str, str]:
    return bearer(_key(jobs_app, "admin"))


def _fake_train(
    monkeypatch: pytest.MonkeyPatch, *, fail: bool = False, read: bool = True
) -> list[dict[str, Any]]:
    """Replace the trainer (its own tests train for real) with one that reports progress;
    ``fail``: it raises, after its read of the corpus (``read``) or before."""
    import models.training
    from models.registry import ModelRegistry

    calls: list[dict[str, Any]] = []

    def train(config: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        kwargs["run"].corpus_read = read
        kwargs["progress"](0.5)
        if fail:
            raise RuntimeError("sender user3 wrote something unparseable")
        return ModelRegistry(kwargs["data_dir"]).get("base")

    monkeypatch.setattr(models.training, "train", train)
    return calls


@pytest.mark.seconds  # plans the training: noise calibrated on the PLD accountant
def test_training_is_refused_without_a_cap(client: FlaskClient, admin: dict[str, str]) -> None:
    r = client.post("/v1/admin/training-jobs", json=TINY, headers=admin)
    assert r.status_code == 409 and r.json["code"] == "budget_exhausted"
    assert client.get("/v1/jobs", headers=admin).json["jobs"] == []


@pytest.mark.seconds  # plans the training: noise calibrated on the PLD accountant
def test_training_is_refused_when_the_cap_cannot_afford_it(
    client: FlaskClient, admin: dict[str, str], ledger: SqlLedger
) -> None:
    ledger.set_corpus_cap(Budget(epsilon=1.0, delta=1e-3))
    r = client.post("/v1/admin/training-jobs", json=TINY, headers=admin)
    assert r.status_code == 409 and r.json["code"] == "budget_exhausted"
    assert ledger.corpus_remaining().spent_epsilon == 0.0
    assert client.get("/v1/jobs", headers=admin).json["jobs"] == []


def test_training_on_a_missing_snapshot_is_refused_before_any_charge(
    client: FlaskClient, admin: dict[str, str], ledger: SqlLedger
) -> None:
    ledger.set_corpus_cap(Budget(epsilon=20.0, delta=1e-3))
    r = client.post("/v1/admin/training-jobs", json={**TINY, "snapshot_id": "snap-missing"},
                    headers=admin)
    assert r.status_code == 404 and r.json["code"] == "no_snapshot"
    assert ledger.corpus_remaining().spent_epsilon == 0.0
    assert ledger.corpus_remaining().reserved == 0
    assert client.get("/v1/jobs", headers=admin).json["jobs"] == []


def test_training_job_is_charged_and_succeeds(
    client: FlaskClient, admin: dict[str, str], ledger: SqlLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_train(monkeypatch)
    ledger.set_corpus_cap(Budget(epsilon=20.0, delta=1e-3))
    r = client.post("/v1/admin/training-jobs", json=TINY, headers=admin)
    assert r.status_code == 201, r.json
    job = r.json
    assert job["kind"] == "training" and job["cost"]["charged_to"] == "corpus-wide cap"
    assert job["cost"]["event"]["kind"] == "subsampled_gaussian"
    assert job["params"]["config"]["target_epsilon"] == 8.0
    status = client.get(f"/v1/jobs/{job['id']}", headers=admin).json
    assert status["status"] == "succeeded" and status["progress"] == 1.0
    assert status["result"]["model_id"] == "base" and status["error"] is None
    assert calls and calls[0]["event"].to_dict() == job["cost"]["event"]
    spent = ledger.corpus_remaining()
    # Charged at the ledger's admission bound (RDP at the cap's delta), looser than the PLD
    # figure the noise was sized with; refunded never, since the model was published.
    assert 0 < spent.spent_epsilon < 20.0 and spent.reserved == 0
    admin_id = status["created_by"]
    entries = [e for e in ledger.history(admin_id) if e.id == job["cost"]["reservation_id"]]
    assert [e.status for e in entries] == ["committed"]


def test_a_training_that_fails_after_reading_is_reported_and_charged(
    client: FlaskClient, admin: dict[str, str], ledger: SqlLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.job_bodies import FAILED_AFTER_READ

    _fake_train(monkeypatch, fail=True)
    ledger.set_corpus_cap(Budget(epsilon=20.0, delta=1e-3))
    r = client.post("/v1/admin/training-jobs", json=TINY, headers=admin)
    assert r.status_code == 201
    charged = ledger.corpus_remaining().spent_epsilon
    assert charged > 0
    status = client.get(f"/v1/jobs/{r.json['id']}", headers=admin).json
    assert status["status"] == "failed" and status["error"] == FAILED_AFTER_READ
    assert "user3" not in status["error"] and "RuntimeError" not in status["error"]
    assert status["result"]["charge"]["status"] == "committed"
    rid = r.json["cost"]["reservation_id"]
    assert _entry_status(ledger, status["created_by"], rid) == "committed"
    assert ledger.corpus_remaining().spent_epsilon == charged  # nothing refunded
    assert client.get("/v1/models", headers=admin).json["active"] == "base"


def test_a_training_that_fails_before_reading_is_refunded(
    client: FlaskClient, admin: dict[str, str], ledger: SqlLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_train(monkeypatch, fail=True, read=False)
    ledger.set_corpus_cap(Budget(epsilon=20.0, delta=1e-3))
    r = client.post("/v1/admin/training-jobs", json=TINY, headers=admin)
    assert r.status_code == 201
    status = client.get(f"/v1/jobs/{r.json['id']}", headers=admin).json
    assert status["status"] == "failed" and "RuntimeError" in status["error"]
    assert "user3" not in status["error"] and status["result"]["charge"]["status"] == "refunded"
    assert ledger.corpus_remaining().spent_epsilon == 0.0


@pytest.mark.seconds
def test_starting_a_training_reads_nothing_and_returns_only_declared_figures(
    client: FlaskClient, admin: dict[str, str], ledger: SqlLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sampling rate and the default delta come from the declared population size (here
    1,000, the corpus holds 20): no response carries a figure computed from the corpus, and
    starting the job does not touch the corpus at all."""
    from corpus.store import SnapshotStore
    from jobs.queue import Queue
    from models.training import default_delta

    def no_reading(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the corpus was read to start a training")

    monkeypatch.setattr(SnapshotStore, "cursor", no_reading)
    monkeypatch.setattr(Queue, "enqueue", lambda self, kind, job_id: None)  # stays queued
    ledger.set_corpus_cap(Budget(epsilon=50.0, delta=1e-3))
    r = client.post("/v1/admin/training-jobs", json={**TINY, "population_size": 1000},
                    headers=admin)
    assert r.status_code == 201, r.json
    assert r.json["cost"]["event"]["sampling_rate"] == 4 / 1000
    assert r.json["cost"]["delta"] == default_delta(1000) == 1e-4
    assert r.json["params"]["config"]["population_size"] == 1000
    assert "20" not in {str(v) for v in r.json["cost"].values()}


P = {"population_size": 300}  # declared; the default 256 expected senders fit in it


@pytest.mark.parametrize(
    "body",
    [
        {},
        {**P, "target_epsilon": 0},
        {**P, "target_epsilon": -1},
        {**P, "target_epsilon": 8, "delta": 1.5},
        {**P, "target_epsilon": 8, "steps": 0},
        {**P, "target_epsilon": 8, "steps": 2.5},
        {**P, "target_epsilon": 8, "trainable_layers": 7},
        {**P, "target_epsilon": 8, "private": False},
        {**P, "target_epsilon": 8, "delta": 0.5},  # >= 1 / population_size: the planner
        {**P, "target_epsilon": 8, "delta": 0.004},  # >= 1/300 too
        {"target_epsilon": 8},  # no declared population size
        {"target_epsilon": 8, "population_size": 0},
        {"target_epsilon": 8, "population_size": 20.5},
        {"target_epsilon": 8, "population_size": "20"},
        # more expected senders per step than the declared population can supply
        {"target_epsilon": 8, "population_size": 20, "expected_senders_per_batch": 21},
        {"target_epsilon": 8, "population_size": 1000, "expected_senders_per_batch": 100_000},
    ],
)
def test_training_job_validation(
    client: FlaskClient, admin: dict[str, str], ledger: SqlLedger, body: Any
) -> None:
    ledger.set_corpus_cap(Budget(epsilon=50.0, delta=1e-3))
    body = body if "population_size" in body or body == {} or "target_epsilon" not in body \
        else body
    r = client.post("/v1/admin/training-jobs", json=body, headers=admin)
    assert r.status_code == 422, r.json
    assert ledger.corpus_remaining().spent_epsilon == 0.0  # refused before any charge


def test_roles(jobs_app: Flask, client: FlaskClient, admin: dict[str, str]) -> None:
    for role in ("analyst", "app"):
        h = bearer(_key(jobs_app, role))
        assert client.post("/v1/admin/training-jobs", json=TINY, headers=h).status_code == 403
        assert client.get("/v1/models", headers=h).status_code == 403
        assert client.post("/v1/admin/models/base/activate", headers=h).status_code == 403
    assert client.get("/v1/jobs/trn_missing", headers=admin).status_code == 404
    assert client.get("/v1/jobs?kind=mining", headers=admin).status_code == 422


def test_models_list_and_activate(client: FlaskClient, admin: dict[str, str]) -> None:
    body = client.get("/v1/models", headers=admin).json
    assert body["active"] == "base" and [m["id"] for m in body["models"]] == ["base"]
    r = client.post("/v1/admin/models/base/activate", headers=admin)
    assert r.status_code == 200 and r.json["active"] == "base"
    r = client.post("/v1/admin/models/m-20990101T000000Z-deadbeef/activate", headers=admin)
    assert r.status_code == 404


@pytest.mark.torch
def test_real_tiny_training_over_http(
    jobs_app: Flask, client: FlaskClient, admin: dict[str, str], ledger: SqlLedger
) -> None:
    """The done-when path: an admin starts a training job, watches it finish, activates the
    model, and an app's embeddings now come from it."""
    ledger.set_corpus_cap(Budget(epsilon=20.0, delta=1e-3))
    r = client.post("/v1/admin/training-jobs", json={**TINY, "activate": False}, headers=admin)
    assert r.status_code == 201, r.json
    status = client.get(f"/v1/jobs/{r.json['id']}", headers=admin).json
    assert status["status"] == "succeeded", status
    model_id = status["result"]["model_id"]
    assert model_id.startswith("m-") and status["result"]["epsilon"] <= 8.0 + 1e-6
    assert model_id in [m["id"] for m in client.get("/v1/models", headers=admin).json["models"]]
    assert client.post(f"/v1/admin/models/{model_id}/activate", headers=admin).status_code == 200
    app_key = bearer(_key(jobs_app, "app"))
    emb = client.post("/v1/embeddings", json={"texts": ["hello"]}, headers=app_key).json
    assert emb["model_id"] == model_id and emb["dimensions"] == 384


def test_worker_command(data_dir: Path) -> None:
    from click.testing import CliRunner

    from service.cli import main

    runner = CliRunner()
    r = runner.invoke(main, ["--data-dir", str(data_dir), "worker", "--help"])
    assert r.exit_code == 0 and "huey consumer" in r.output
    r = runner.invoke(main, ["--data-dir", str(data_dir), "worker"],
                      env={"PRIVTEXT_QUEUE_URL": "memory://"})
    assert r.exit_code != 0 and "memory://" in r.output


@pytest.mark.torch
def test_privtext_worker_runs_queued_jobs(jobs_app: Flask, data_dir: Path, tmp_path: Path) -> None:
    """The real consumer in its own process (as `make run` starts it) picks a job from the
    SQLite queue, prunes refused queries' audit rows past their retention (charged rows stay),
    and stops on SIGINT."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from dataclasses import replace

    from jobs import states as J
    from jobs.table import FINAL
    from models.job_bodies import write_embedding_input
    from service.job_queue import job_context, make_queue

    settings = jobs_app.extensions["privtext"].settings
    sqlite_settings = replace(settings, queue_url="")
    engine = jobs_app.extensions["privtext"].engine
    ctx = job_context(sqlite_settings, engine)
    job = J.create_job(engine, kind="embedding", created_by="ap_x", params={"count": 1})
    write_embedding_input(ctx, job.id, ["from another process"])
    make_queue(sqlite_settings, engine).enqueue("embedding", job.id)
    audit_ids = {
        status: _audit_row(engine, status, days_old=31) for status in ("refused", "released")
    }

    cli = Path(sys.executable).with_name("privtext")
    env = {**os.environ, "PRIVTEXT_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    env.pop("PRIVTEXT_QUEUE_URL", None)
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(cli), "worker", "--workers", "1"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = J.get_job(engine, job.id)
            if done is not None and done.status in FINAL:
                break
            time.sleep(0.5)
        output = (tmp_path / "worker.log").read_text()
        assert done is not None and done.status == "succeeded", output
        while _audit_ids(engine) != {audit_ids["released"]} and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _audit_ids(engine) == {audit_ids["released"]}, output
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    assert proc.returncode == 0, (tmp_path / "worker.log").read_text()  # stopped cleanly


def _audit_row(engine: Any, status: str, *, days_old: int) -> int:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert

    from service.store.ledger_tables import audit_log

    with engine.begin() as conn:
        res = conn.execute(
            insert(audit_log).values(
                created_at=datetime.now(UTC) - timedelta(days=days_old),
                principal_id="an_x",
                status=status,
                snapshot_id="s",
                query_hash="0" * 64,
                query="{}",
                cost="{}",
            )
        )
    return int(res.inserted_primary_key[0])


def _audit_ids(engine: Any) -> set[int]:
    from sqlalchemy import select

    from service.store.ledger_tables import audit_log

    with engine.connect() as conn:
        return {r.id for r in conn.execute(select(audit_log.c.id))}


def test_job_list_rejects_unknown_parameters(client: FlaskClient, admin: dict[str, str]) -> None:
    assert client.get("/v1/jobs?kind=training", headers=admin).status_code == 200
    bad = client.get("/v1/jobs?kind=nope", headers=admin)
    assert bad.status_code == 422 and "kind" in bad.get_json()["errors"]
    extra = client.get("/v1/jobs?surprise=1", headers=admin)
    assert extra.status_code == 422 and "surprise" in extra.get_json()["errors"]


# -- cancelling --------------------------------------------------------------------------


def _principal(app: Flask, role: str) -> tuple[str, dict[str, str]]:
    engine = app.extensions["privtext"].engine
    pid = create_principal(engine, name=f"{role}-{uuid.uuid4().hex[:8]}", role=role)
    return pid, bearer(issue_key(engine, pid))


def _entry_status(ledger: SqlLedger, principal_id: str, rid: str) -> str:
    return next(e.status for e in ledger.history(principal_id) if e.id == rid)


def test_cancel_a_queued_training_job_refunds_it(
    jobs_app: Flask,
    client: FlaskClient,
    admin: dict[str, str],
    ledger: SqlLedger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jobs.queue import Queue
    from models.job_bodies import run_training_job
    from service.job_queue import job_context

    calls = _fake_train(monkeypatch)
    monkeypatch.setattr(Queue, "enqueue", lambda self, kind, job_id: None)  # stays queued
    ledger.set_corpus_cap(Budget(epsilon=20.0, delta=1e-3))
    job = client.post("/v1/admin/training-jobs", json=TINY, headers=admin).json
    assert job["status"] == "queued" and ledger.corpus_remaining().spent_epsilon > 0
    rid = job["cost"]["reservation_id"]
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=admin)
    assert r.status_code == 200, r.json
    assert r.json["status"] == "cancelled" and r.json["finished_at"] is not None
    assert _entry_status(ledger, job["created_by"], rid) == "refunded"
    assert ledger.corpus_remaining().spent_epsilon == 0.0
    # The worker picks the task up later: it finds the job cancelled and does nothing.
    engine = jobs_app.extensions["privtext"].engine
    ctx = job_context(jobs_app.extensions["privtext"].settings, engine)
    run_training_job(job["id"], ctx)
    assert calls == []
    assert client.get(f"/v1/jobs/{job['id']}", headers=admin).json == r.json
    assert _entry_status(ledger, job["created_by"], rid) == "refunded"


def test_cancel_a_running_training_job(
    jobs_app: Flask,
    client: FlaskClient,
    admin: dict[str, str],
    ledger: SqlLedger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The admin cancels while the (inline) worker trains its first step; the trainer's next
    should_stop() sees it, nothing is published, and the step begun stays charged (1 of the
    2 planned steps, at the planned sampling rate and noise)."""
    import models.training
    from mechanisms.events import PrivacyEvent
    from mechanisms.ledger import Spend
    from models.training import TrainingCancelled

    answers: list[Any] = []

    def train(config: Any, **kwargs: Any) -> Any:
        job_id = client.get("/v1/jobs", headers=admin).json["jobs"][0]["id"]
        kwargs["run"].corpus_read = True
        kwargs["run"].steps_started = 1
        kwargs["progress"](0.25)
        r = jobs_app.test_client().post(f"/v1/jobs/{job_id}/cancel", headers=admin)
        answers.append((r.status_code, r.json["status"]))
        if kwargs["should_stop"]():
            raise TrainingCancelled("training cancelled")
        raise AssertionError("should_stop did not see the cancel")

    monkeypatch.setattr(models.training, "train", train)
    ledger.set_corpus_cap(Budget(epsilon=20.0, delta=1e-3))
    r = client.post("/v1/admin/training-jobs", json=TINY, headers=admin)
    assert r.status_code == 201, r.json
    assert answers == [(202, "cancelling")]
    job = client.get(f"/v1/jobs/{r.json['id']}", headers=admin).json
    assert job["status"] == "cancelled" and job["error"] is None
    charge = job["result"]["charge"]
    planned = r.json["cost"]["event"]
    one = PrivacyEvent.from_dict({**planned, "steps": 1})
    assert charge["status"] == "committed" and charge["steps"] == 1
    assert charge["event"] == one.to_dict()
    rid = r.json["cost"]["reservation_id"]
    assert _entry_status(ledger, job["created_by"], rid) == "refunded"  # the full reservation
    assert _entry_status(ledger, job["created_by"], charge["reservation_id"]) == "committed"
    assert ledger.corpus_remaining().spent_epsilon == pytest.approx(
        Spend.of(one).epsilon(1e-3), rel=1e-9
    )
    assert [m["id"] for m in client.get("/v1/models", headers=admin).json["models"]] == ["base"]


def test_a_late_cancel_still_succeeds_and_is_committed(
    jobs_app: Flask,
    client: FlaskClient,
    admin: dict[str, str],
    ledger: SqlLedger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import models.training
    from models.registry import ModelRegistry

    def train(config: Any, **kwargs: Any) -> Any:
        job_id = client.get("/v1/jobs", headers=admin).json["jobs"][0]["id"]
        assert not kwargs["should_stop"]()  # the last step ran; now it publishes
        r = jobs_app.test_client().post(f"/v1/jobs/{job_id}/cancel", headers=admin)
        assert r.status_code == 202 and r.json["status"] == "cancelling"
        return ModelRegistry(kwargs["data_dir"]).get("base")

    monkeypatch.setattr(models.training, "train", train)
    ledger.set_corpus_cap(Budget(epsilon=20.0, delta=1e-3))
    r = client.post("/v1/admin/training-jobs", json=TINY, headers=admin)
    assert r.status_code == 201, r.json
    job = client.get(f"/v1/jobs/{r.json['id']}", headers=admin).json
    assert job["status"] == "succeeded" and job["result"]["model_id"] == "base"
    rid = r.json["cost"]["reservation_id"]
    assert _entry_status(ledger, job["created_by"], rid) == "committed"


def test_cancel_of_a_finished_job_is_409_and_changes_nothing(
    client: FlaskClient, admin: dict[str, str], ledger: SqlLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_train(monkeypatch)
    ledger.set_corpus_cap(Budget(epsilon=20.0, delta=1e-3))
    job_id = client.post("/v1/admin/training-jobs", json=TINY, headers=admin).json["id"]
    before = client.get(f"/v1/jobs/{job_id}", headers=admin).json
    assert before["status"] == "succeeded"
    spent = ledger.corpus_remaining()
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=admin)
    assert r.status_code == 409
    assert r.json["code"] == "job_finished" and r.json["status"] == 409
    assert set(r.json) >= {"code", "status", "message", "errors"}
    assert client.get(f"/v1/jobs/{job_id}", headers=admin).json == before
    assert ledger.corpus_remaining() == spent
    assert client.post("/v1/jobs/trn_missing/cancel", headers=admin).status_code == 404
    unknown = client.post(f"/v1/jobs/{job_id}/cancel?force=1", headers=admin)
    assert unknown.status_code == 422 and "force" in unknown.json["errors"]


def test_who_may_cancel(jobs_app: Flask, client: FlaskClient, admin: dict[str, str]) -> None:
    from jobs import states as J

    engine = jobs_app.extensions["privtext"].engine
    alice, alice_h = _principal(jobs_app, "analyst")
    bob, bob_h = _principal(jobs_app, "analyst")
    _, app_h = _principal(jobs_app, "app")
    mine = J.create_job(engine, kind="embedding", created_by=alice, params={"count": 1})
    theirs = J.create_job(engine, kind="embedding", created_by=bob, params={"count": 1})
    for h in (alice_h, app_h):
        assert client.post(f"/v1/jobs/{theirs.id}/cancel", headers=h).status_code == 404
    assert J.get_job(engine, theirs.id).status == "queued"  # type: ignore[union-attr]
    assert client.post(f"/v1/jobs/{theirs.id}/cancel").status_code == 401
    r = client.post(f"/v1/jobs/{mine.id}/cancel", headers=alice_h, json={"ignored": True})
    assert r.status_code == 200 and r.json["status"] == "cancelled"  # a body is ignored
    r = client.post(f"/v1/jobs/{theirs.id}/cancel", headers=admin)  # an admin: any job
    assert r.status_code == 200 and r.json["status"] == "cancelled"


@pytest.mark.torch
def test_cancel_a_running_embedding_job_leaves_no_result(
    jobs_app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    import models.encoder
    from models.job_bodies import RESULT_FILE

    _, app_h = _principal(jobs_app, "app")
    answers: list[int] = []

    class Encoder:
        dim = 4

        def encode(self, texts: list[str]) -> Any:
            job_id = client.get("/v1/jobs", headers=app_h).json["jobs"][0]["id"]
            r = jobs_app.test_client().post(f"/v1/jobs/{job_id}/cancel", headers=app_h)
            answers.append(r.status_code)
            return np.ones((len(texts), self.dim), np.float32)

    monkeypatch.setattr(models.encoder, "get_encoder", lambda *a, **k: Encoder())
    r = client.post("/v1/embedding-jobs", json={"texts": ["a", "b"]}, headers=app_h)
    assert r.status_code == 201, r.json
    assert answers == [202] and r.json["status"] == "cancelled" and "result_url" not in r.json
    data_dir = Path(jobs_app.extensions["privtext"].settings.data_dir)
    job_dir = data_dir / "jobs" / r.json["id"]
    assert not (job_dir / RESULT_FILE).exists() and list(job_dir.iterdir()) == []
    result = client.get(f"/v1/embedding-jobs/{r.json['id']}/result", headers=app_h)
    assert result.status_code == 409
