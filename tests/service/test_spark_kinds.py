"""Every query kind, filter and group-by reads the same exact aggregates from Spark as from
DuckDB on the same snapshot; and the service with ``engine_url`` set fails closed (issue 14).

The aggregates are compared where the kinds read them: each engine is wrapped in a recorder and
the query is answered by the service's own code (schema, plan, price, ``build_answer``) with
the noise switched off, so that both runs take the same path (the automatic cap and the keys
found by selection are decided on the exact values) and every engine call with its arguments
and result must match. Against the loopback Spark Connect server of ``tests/fixtures/spark.py``
(about 20 s here after the server's start, which the corpus tests share).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask

from corpus.duckdb_engine import DuckDBEngine
from corpus.spark_engine import SparkEngine
from corpus.spark_session import SparkConnect
from corpus.store import SnapshotInfo, SnapshotStore
from mechanisms.ledger import Budget
from service.app import create_app
from service.auth import create_principal, issue_key
from service.charging import get_ledger
from service.queries import answer, groups
from service.queries.answer import build_answer
from service.queries.kinds import base
from service.queries.plan import build_plan
from service.queries.pricing import price
from service.schemas.query import QuerySchema

pytestmark = pytest.mark.spark

FEB = {"start": "2024-02-01T00:00:00Z", "end": "2024-03-01T00:00:00Z"}
WIDE = {"start": "2024-01-01T00:00:00Z", "end": "2024-03-15T00:00:00Z"}
LAP = {"epsilon": 1.0, "delta": 1e-6}

REQUESTS: list[dict[str, Any]] = [
    {"kind": "count"},
    {"kind": "count", "of": "senders", "filters": {"keywords": {"terms": ["refund", "pizza"]}}},
    {"kind": "count", "of": "senders", "group_by": {"time": "weekday"}},
    {"kind": "count", "of": "conversations", "filters": {"time_range": FEB}},
    {"kind": "count", "max_messages_per_sender": "auto", "filters": {"time_range": FEB}},
    {"kind": "count", "group_by": {"metadata": "channel"}, "privacy": {"delta": 1e-6}},
    {"kind": "sum", "feature": "chars", "filters": {"metadata": {"channel": ["web"]}}},
    {"kind": "mean", "feature": "tokens", "group_by": {"time": "month", "range": WIDE}},
    {
        "kind": "variance",
        "feature": "sentiment_compound",
        "filters": {"keywords": {"terms": ["great", "love"], "match": "all"}},
    },
    {"kind": "quantiles", "feature": "chars", "quantiles": [0.1, 0.5, 0.9]},
    {
        "kind": "histogram",
        "feature": "tokens",
        "bins": [0, 3, 6, 13],
        "group_by": {"time": "hour_of_day"},
    },
    {"kind": "histogram", "feature": "sentiment_pos", "bins": [0, 0.1, 0.30000000000000004, 1]},
    {"kind": "top_terms", "k": 20, "bigrams": True, "max_terms_per_sender": 2, "privacy": LAP},
    {"kind": "top_terms", "terms": ["pizza", "pizza movie", "istanbul", "σασ", "don’t", "οδοσ"]},
    {"kind": "sentiment", "group_by": {"time": "week", "range": WIDE}},
    {
        "kind": "sentiment",
        "max_messages_per_sender": 3,
        "filters": {"keywords": {"terms": ["istanbul", "ΟΔΟσ"]}},
        "group_by": {"time": "day", "range": FEB},
    },
    {
        "kind": "mean",
        "feature": "chars",
        "max_messages_per_sender": "auto",
        "group_by": {"metadata": "channel", "values": ["web", "app", "none"]},
    },
]


class Recorder:
    """An engine that records every aggregate asked of it, its arguments and its result."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, tuple[Any, ...], Any]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def call(*args: Any) -> Any:
            result = method(*args)
            self.calls.append((name, args, result))
            return result

        return call


def _exact(part: Any, values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


@pytest.fixture
def no_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (answer, groups, base):
        monkeypatch.setattr(module, "noisy", _exact)


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: r["kind"])
def test_every_kind_reads_the_same_aggregates(
    request_: dict[str, Any],
    spark: SparkConnect,
    spark_corpus: tuple[Path, SnapshotInfo],
    no_noise: None,
) -> None:
    duck, sparked = engine_calls(spark, *spark_corpus, request_)
    assert duck, "the kind read nothing"
    assert any(_nonzero(result) for _, _, result in duck)
    assert sparked == duck


def engine_calls(
    spark: SparkConnect, data_dir: Path, info: SnapshotInfo, request_: dict[str, Any]
) -> tuple[list[Any], list[Any]]:
    """The engine calls (and exact results) that answering ``request_`` over snapshot ``info``
    makes on DuckDB, then on Spark, through the service's own plan, price and answer."""
    req = QuerySchema().load(request_)
    plan = build_plan(req, metadata_columns=list(info.metadata_columns))
    priced = price(plan, max_messages=plan.max_messages)
    _, cur = SnapshotStore(data_dir).cursor(info.id)
    try:
        duck = Recorder(DuckDBEngine(cur, plan, salt="t"))
        build_answer(plan, priced, duck)  # type: ignore[arg-type]
    finally:
        cur.close()
    uri = spark.snapshot_uri(info.messages_path, data_dir)
    sparked = Recorder(SparkEngine(spark, uri, plan, salt="t"))
    build_answer(plan, priced, sparked)  # type: ignore[arg-type]
    return duck.calls, sparked.calls


def _nonzero(result: Any) -> bool:
    values = result.values() if isinstance(result, dict) else result
    return any(np.any(np.asarray(v, dtype=object) != 0) for v in values)


# -- the service with the Spark engine ------------------------------------------------------
def _app(data_dir: Path, url: str) -> tuple[Flask, dict[str, str], str]:
    app = create_app({"data_dir": str(data_dir), "testing": True, "engine_url": url})
    engine = app.extensions["privtext"].engine
    pid = create_principal(engine, name="s", role="analyst")
    with app.app_context():
        get_ledger().set_budget(pid, Budget(epsilon=100.0, delta=1e-4))
    return app, {"Authorization": f"Bearer {issue_key(engine, pid)}"}, pid


def _spent(app: Flask, pid: str) -> list[str]:
    with app.app_context():
        return [e.status for e in get_ledger().history(pid)]


@pytest.fixture
def spark_data_dir(tmp_path: Path, spark_corpus: tuple[Path, SnapshotInfo]) -> Path:
    """A data directory of its own (state store, keys) over the shared snapshot."""
    src, info = spark_corpus
    data_dir = tmp_path / "data"
    (data_dir / "corpus" / "snapshots").mkdir(parents=True)
    (data_dir / "corpus" / "snapshots" / info.id).symlink_to(info.path)
    (data_dir / "corpus" / "LIVE").write_text(info.id)
    return data_dir


def test_the_api_answers_through_spark(spark_url: str, spark_data_dir: Path) -> None:
    app, headers, pid = _app(spark_data_dir, spark_url)
    client = app.test_client()
    assert client.get("/readyz").get_json()["checks"]["engine"] is True
    out = client.post("/v1/queries", json={"kind": "count"}, headers=headers)
    assert out.status_code == 200, out.get_json()
    assert _spent(app, pid) == ["committed"]
    # embeddings are not read by Spark: refused before anything is charged
    out = client.post("/v1/queries", json={"kind": "mean_embedding"}, headers=headers)
    assert out.status_code == 422 and out.get_json()["code"] == "unsupported_by_engine"
    assert _spent(app, pid) == ["committed"]


def test_a_spark_job_that_fails_after_the_probe_is_charged(
    spark_url: str, spark_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spark answers the probe, then the job fails (here: its file is gone): the reservation
    is committed and the answer is the one fixed ``query_failed``."""
    app, headers, pid = _app(spark_data_dir, spark_url)
    spark = app.extensions["privtext"].spark
    monkeypatch.setattr(spark, "snapshot_uri", lambda *a: str(spark_data_dir / "gone.parquet"))
    out = app.test_client().post("/v1/queries", json={"kind": "sentiment"}, headers=headers)
    assert out.status_code == 500 and out.get_json()["code"] == "query_failed"
    assert _spent(app, pid) == ["committed"]


def test_unreachable_spark_fails_closed(spark_data_dir: Path) -> None:
    """Nothing listens on the port: 503 before the reservation (nothing charged, nothing
    read), and /readyz says which check failed."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    app, headers, pid = _app(spark_data_dir, f"sc://127.0.0.1:{port}")
    client = app.test_client()
    store = app.extensions["privtext"].corpus
    reads = store.reads
    out = client.post("/v1/queries", json={"kind": "count"}, headers=headers)
    assert out.status_code == 503, out.get_json()
    assert out.get_json()["code"] == "engine_unavailable"
    assert out.headers["Retry-After"] == "5"
    assert _spent(app, pid) == [] and store.reads == reads
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["errors"]["checks"]["engine"] is False
