"""POST /v1/embeddings, the embedding jobs and their results, size bounds, and the per-key rate
limit shared by every app instance (as by gunicorn workers) on one state database."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.app import create_app
from service.auth import create_principal, issue_key
from tests.fixtures.app import bearer


def _make_app(data_dir: Path, **overrides: Any) -> Flask:
    return create_app(
        {"data_dir": str(data_dir), "testing": True, "queue_url": "memory://", **overrides}
    )


@pytest.fixture
def emb_app(data_dir: Path, ingested: Any) -> Iterator[Flask]:
    application = _make_app(data_dir)
    yield application
    application.extensions["privtext"].engine.dispose()


@pytest.fixture
def client(emb_app: Flask) -> FlaskClient:
    return emb_app.test_client()


def _key(app: Flask, role: str) -> str:
    engine = app.extensions["privtext"].engine
    return issue_key(engine, create_principal(engine, name=role, role=role))


@pytest.fixture
def app_key(emb_app: Flask) -> str:
    return _key(emb_app, "app")


TEXTS = ["hello there", "How was the concert last night?", "hello there"]


@pytest.mark.torch
def test_sync_embeddings(client: FlaskClient, app_key: str) -> None:
    r = client.post("/v1/embeddings", json={"texts": TEXTS}, headers=bearer(app_key))
    assert r.status_code == 200, r.json
    body = r.json
    assert body["model_id"] == "base" and body["dimensions"] == 384 and body["count"] == 3
    vectors = np.array(body["embeddings"], dtype=np.float32)
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])  # same text, same vector
    again = client.post("/v1/embeddings", json={"texts": TEXTS[:1]}, headers=bearer(app_key))
    np.testing.assert_allclose(np.array(again.json["embeddings"][0]), vectors[0], atol=1e-5)


@pytest.mark.parametrize("role", ["analyst", "admin"])
@pytest.mark.torch
def test_other_roles_may_embed(emb_app: Flask, client: FlaskClient, role: str) -> None:
    r = client.post("/v1/embeddings", json={"texts": ["x"]}, headers=bearer(_key(emb_app, role)))
    assert r.status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"texts": ["a"] * 65},
        {"texts": ["a" * 2001]},
        {"texts": []},
        {"texts": "hello"},
        {"texts": [1, 2]},
        {"texts": [None]},
        {},
        {"texts": ["a"], "model": "other"},
    ],
)
def test_sync_embeddings_refuses_bad_bodies(client: FlaskClient, app_key: str, body: Any) -> None:
    r = client.post("/v1/embeddings", json=body, headers=bearer(app_key))
    assert r.status_code == 422, r.json
    assert r.json["code"] == "validation_error"
    assert set(r.json["errors"]) <= {"texts", "model"} and r.json["errors"]


def test_auth_is_required(client: FlaskClient) -> None:
    r = client.post("/v1/embeddings", json={"texts": ["a"]})
    assert r.status_code == 401
    assert client.post("/v1/embedding-jobs", json={"texts": ["a"]}).status_code == 401


@pytest.mark.torch  # the accepted embedding job runs inline (memory:// queue) and encodes
def test_not_json_and_body_limits(client: FlaskClient, app_key: str) -> None:
    h = bearer(app_key)
    assert client.post("/v1/embeddings", data="texts", headers=h).status_code == 415
    big = {"texts": ["word " * 380] * 40}  # about 76 KB: over the app's 64 KiB default
    assert client.post("/v1/embeddings", json=big, headers=h).status_code == 413
    # ... which the embedding-jobs route alone accepts (its limit is 16 MiB).
    assert client.post("/v1/embedding-jobs", json=big, headers=h).status_code == 201


@pytest.mark.torch
def test_embedding_job_round_trip(emb_app: Flask, client: FlaskClient, app_key: str) -> None:
    h = bearer(app_key)
    texts = [f"message number {i} about {'cats' if i % 2 else 'the weather'}" for i in range(150)]
    r = client.post("/v1/embedding-jobs", json={"texts": texts}, headers=h)
    assert r.status_code == 201, r.json
    job = r.json
    assert job["kind"] == "embedding" and job["params"] == {"count": 150}
    # The queue runs inline in tests (memory://), so the job has already finished.
    status = client.get(f"/v1/embedding-jobs/{job['id']}", headers=h).json
    assert status["status"] == "succeeded" and status["progress"] == 1.0
    assert status["result"]["count"] == 150 and status["result_url"].endswith("/result")
    assert client.get(f"/v1/jobs/{job['id']}", headers=h).json["status"] == "succeeded"

    as_json = client.get(status["result_url"], headers=h)
    assert as_json.status_code == 200
    vectors = np.array(as_json.json["embeddings"], dtype=np.float32)
    assert vectors.shape == (150, 384) and as_json.json["model_id"] == "base"
    with client.get(status["result_url"] + "?format=npy", headers=h) as as_npy:  # closes the file
        assert as_npy.status_code == 200 and as_npy.mimetype == "application/octet-stream"
        np.testing.assert_array_equal(np.load(io.BytesIO(as_npy.data)), vectors)
    sync = client.post("/v1/embeddings", json={"texts": texts[:3]}, headers=h).json
    np.testing.assert_allclose(np.array(sync["embeddings"]), vectors[:3], atol=1e-5)

    # The texts are not kept: only the result file is on disk.
    data_dir = Path(emb_app.extensions["privtext"].settings.data_dir)
    assert [p.name for p in (data_dir / "jobs" / job["id"]).iterdir()] == ["result.npy"]
    assert client.get(status["result_url"] + "?format=csv", headers=h).status_code == 422


@pytest.mark.torch  # its embedding job runs inline (memory:// queue) and encodes
def test_jobs_are_private_to_their_owner(emb_app: Flask, client: FlaskClient, app_key: str) -> None:
    job = client.post("/v1/embedding-jobs", json={"texts": ["a"]}, headers=bearer(app_key)).json
    other = bearer(_key(emb_app, "app"))
    for url in (f"/v1/embedding-jobs/{job['id']}", f"/v1/embedding-jobs/{job['id']}/result",
                f"/v1/jobs/{job['id']}"):
        assert client.get(url, headers=other).status_code == 404
    assert client.get("/v1/jobs", headers=other).json["jobs"] == []
    admin = bearer(_key(emb_app, "admin"))
    assert client.get(f"/v1/embedding-jobs/{job['id']}", headers=admin).status_code == 200
    assert [j["id"] for j in client.get("/v1/jobs", headers=admin).json["jobs"]] == [job["id"]]
    assert client.get("/v1/embedding-jobs/emb_nope", headers=admin).status_code == 404


@pytest.mark.torch
def test_expired_results_are_deleted(data_dir: Path, ingested: Any) -> None:
    app = _make_app(data_dir, embedding_result_ttl_s=0)
    c, h = app.test_client(), bearer(_key(app, "app"))
    job = c.post("/v1/embedding-jobs", json={"texts": ["a"]}, headers=h).json
    r = c.get(f"/v1/embedding-jobs/{job['id']}/result", headers=h)
    assert r.status_code == 410 and r.json["code"] == "result_expired"
    assert not (data_dir / "jobs" / job["id"]).exists()
    assert c.get(f"/v1/embedding-jobs/{job['id']}", headers=h).json["result"]["expired"] is True


@pytest.mark.torch
def test_rate_limit_is_per_key_and_shared_by_workers(data_dir: Path, ingested: Any) -> None:
    limits = {"embedding_rate_requests": 2, "embedding_rate_texts": 1000,
              "embedding_rate_window_s": 3600}
    worker_a, worker_b = _make_app(data_dir, **limits), _make_app(data_dir, **limits)
    key = _key(worker_a, "app")
    ok = worker_a.test_client().post("/v1/embeddings", json={"texts": ["a"]}, headers=bearer(key))
    assert ok.status_code == 200
    ok = worker_b.test_client().post("/v1/embedding-jobs", json={"texts": ["a"]},
                                     headers=bearer(key))
    assert ok.status_code == 201
    r = worker_a.test_client().post("/v1/embeddings", json={"texts": ["a"]}, headers=bearer(key))
    assert r.status_code == 429 and r.json["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 3600
    assert r.json["errors"]["retry_after"] == int(r.headers["Retry-After"])
    # Another key has its own window.
    other = worker_b.test_client().post("/v1/embeddings", json={"texts": ["a"]},
                                        headers=bearer(_key(worker_b, "app")))
    assert other.status_code == 200


@pytest.mark.torch
def test_rate_limit_counts_texts(data_dir: Path, ingested: Any) -> None:
    app = _make_app(data_dir, embedding_rate_texts=100, embedding_rate_window_s=3600)
    c, h = app.test_client(), bearer(_key(app, "app"))
    assert c.post("/v1/embedding-jobs", json={"texts": ["a"] * 101}, headers=h).status_code == 429
    assert c.post("/v1/embedding-jobs", json={"texts": ["a"] * 60}, headers=h).status_code == 201
    assert c.post("/v1/embeddings", json={"texts": ["a"] * 41}, headers=h).status_code == 429
    assert c.post("/v1/embeddings", json={"texts": ["a"] * 40}, headers=h).status_code == 200


def test_the_encoder_runtime_comes_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.config import Settings
    from service.job_queue import encoder_options

    monkeypatch.delenv("PRIVTEXT_EMBEDDING_RUNTIME", raising=False)
    monkeypatch.delenv("PRIVTEXT_EMBEDDING_CACHE_DIR", raising=False)
    assert encoder_options(Settings.load())["runtime"] is None  # the encoder's own default
    assert encoder_options(Settings.load({"embedding_runtime": "torch"}))["runtime"] == "torch"
    options = encoder_options(Settings.load({"data_dir": "/srv/privtext"}))
    assert options["onnx_cache_dir"] == "/srv/privtext/cache/onnx"  # the service's data dir
    options = encoder_options(Settings.load({"embedding_cache_dir": "/var/cache/pt"}))
    assert options["onnx_cache_dir"] == "/var/cache/pt"
    monkeypatch.setenv("PRIVTEXT_EMBEDDING_RUNTIME", "onnx")  # host-wide: the encoder reads it
    assert encoder_options(Settings.load())["runtime"] is None
    assert encoder_options(Settings.load({"embedding_runtime": "torch"}))["runtime"] == "torch"
