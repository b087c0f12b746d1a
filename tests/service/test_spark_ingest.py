"""``privtext ingest --engine spark`` (issue 14): the Spark ingest of a JSONL file gives every
message the features today's ingest gives it, a uniformly random per-sender rank and dense
random ids, and the query kinds read the same aggregates from DuckDB and from Spark over the
snapshot it publishes; a bad source fails before anything is published.

Against the loopback Spark Connect server of ``tests/fixtures/spark.py`` (the ingest takes
about 10 s there; the source is the rows of ``spark_corpus``, whose embedded ingest is the
reference).
"""

from __future__ import annotations

import csv
import functools
import json
import socket
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from corpus.ingest import ingest_file
from corpus.spark_session import SparkConnect
from corpus.store import MANIFEST_FILE, SnapshotInfo, SnapshotStore
from service.cli import main
from tests.factories import write_jsonl
from tests.fixtures.spark import spark_corpus_rows
from tests.service.test_spark_kinds import REQUESTS, engine_calls, no_noise  # noqa: F401

pytestmark = pytest.mark.spark

#: Columns that depend only on the message (the ids and the rank are random draws).
CONTENT = (
    "sender", "conversation", "ts", "text", "channel", "chars", "tokens",
    "sentiment_compound", "sentiment_pos", "sentiment_neu", "sentiment_neg",
)  # fmt: skip


@pytest.fixture(scope="session")
def ingest(spark: SparkConnect) -> Callable[..., SnapshotInfo]:
    """``ingest_spark``, imported once the server is known to run (pyspark is installed)."""
    from corpus.spark_ingest import ingest_spark  # lazy: loads pyspark, the [spark] extra

    return functools.partial(ingest_spark, spark=spark)


@pytest.fixture(scope="module")
def spark_ingested(
    ingest: Callable[..., SnapshotInfo], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, SnapshotInfo]:
    base = tmp_path_factory.mktemp("spark-ingest")
    source = write_jsonl(base / "c.jsonl", spark_corpus_rows())
    data_dir = base / "data"
    info = ingest(str(source), str(data_dir))
    return data_dir, info


def _rows(info: SnapshotInfo) -> list[dict[str, Any]]:
    return pq.read_table(info.messages_path).to_pylist()


def test_features_equal_todays_ingest(
    spark_ingested: tuple[Path, SnapshotInfo], spark_corpus: tuple[Path, SnapshotInfo]
) -> None:
    data_dir, info = spark_ingested
    ours, ref = _rows(info), _rows(spark_corpus[1])
    assert len(ours) == len(ref) == len(spark_corpus_rows())
    key = lambda r: tuple(r[c] for c in CONTENT)  # noqa: E731
    # every message with the same features, sentiment to float equality (same vaderSentiment)
    assert sorted(map(key, ours), key=repr) == sorted(map(key, ref), key=repr)
    assert any(r["sentiment_compound"] != 0 for r in ours)
    assert pq.read_schema(info.messages_path) == pq.read_schema(spark_corpus[1].messages_path)
    assert SnapshotStore(data_dir).live() == info
    assert info.metadata_columns == ["channel"]
    manifest = json.loads((info.path / MANIFEST_FILE).read_text())
    assert sorted(p.name for p in info.path.iterdir()) == [MANIFEST_FILE, "messages.parquet"]
    assert manifest["features"]["engine"] == "spark"


def test_ranks_and_ids(spark_ingested: tuple[Path, SnapshotInfo]) -> None:
    """Per sender the ranks are 0..n_s-1; ids are dense and one per sender / conversation;
    the file is sorted by rank (the per-sender cap reads the first row groups)."""
    rows = _rows(spark_ingested[1])
    ranks: dict[str, list[int]] = defaultdict(list)
    ids: dict[str, set[int]] = defaultdict(set)
    convs: dict[str, set[int]] = defaultdict(set)
    for r in rows:
        ranks[r["sender"]].append(r["msg_rank"])
        ids[r["sender"]].add(r["sender_id"])
        convs[r["conversation"]].add(r["conversation_id"])
    for sender, got in ranks.items():
        assert sorted(got) == list(range(len(got))), sender
    assert all(len(v) == 1 for v in ids.values()) and all(len(v) == 1 for v in convs.values())
    assert sorted(min(v) for v in ids.values()) == list(range(len(ids)))
    assert sorted(min(v) for v in convs.values()) == list(range(len(convs)))
    assert [r["msg_rank"] for r in rows] == sorted(r["msg_rank"] for r in rows)
    assert max(len(v) for v in ranks.values()) == 70  # the heavy sender


def test_heavy_senders_rank_order_is_random(
    ingest: Callable[..., SnapshotInfo],
    spark_ingested: tuple[Path, SnapshotInfo],
    tmp_path: Path,
) -> None:
    """A second ingest of the same file orders the heavy sender's 70 messages differently
    (the seed comes from the OS CSPRNG, not the data; the same order twice has odds about
    1/70!, fewer with repeated texts, still negligible)."""
    source = write_jsonl(tmp_path / "c.jsonl", spark_corpus_rows())
    again = ingest(str(source), str(tmp_path / "data"))

    def order(info: SnapshotInfo) -> list[tuple[Any, str]]:
        heavy = [r for r in _rows(info) if r["sender"] == "user0"]
        return [(r["ts"], r["text"]) for r in sorted(heavy, key=lambda r: r["msg_rank"])]

    first, second = order(spark_ingested[1]), order(again)
    assert len(first) == 70 and sorted(first) == sorted(second) and first != second


#: count (capped by rank), sum with a metadata filter, mean by month, top terms, sentiment by week
KINDS = [REQUESTS[i] for i in (4, 6, 7, 12, 14)]


@pytest.mark.parametrize("request_", KINDS, ids=lambda r: r["kind"])
def test_kinds_read_the_same_aggregates(
    request_: dict[str, Any],
    spark: SparkConnect,
    spark_ingested: tuple[Path, SnapshotInfo],
    no_noise: None,  # noqa: F811
) -> None:
    duck, sparked = engine_calls(spark, *spark_ingested, request_)
    assert duck and sparked == duck


def test_a_bad_source_publishes_nothing(spark_url: str, tmp_path: Path) -> None:
    """Through ``privtext ingest --engine spark``: a row without a timestamp fails the
    validation pass with the embedded reader's reason, quoting no text; nothing is published
    and no working directory is left."""
    rows = spark_corpus_rows()[:20]
    del rows[7]["timestamp"]
    rows[7]["text"] = "SECRET"
    source = write_jsonl(tmp_path / "bad.jsonl", rows)
    data_dir = tmp_path / "data"
    res = _cli(data_dir, spark_url, str(source))
    assert res.exit_code == 1
    assert "bad.jsonl:0: missing column 'timestamp' (1 rows" in res.output
    assert "SECRET" not in res.output
    store = SnapshotStore(data_dir)
    assert store.live() is None and store.list() == []
    assert not store.tmp_dir.exists() or list(store.tmp_dir.iterdir()) == []


def test_unreachable_spark_reads_nothing(tmp_path: Path, corpus_file: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    res = _cli(tmp_path / "data", f"sc://127.0.0.1:{port}", str(corpus_file))
    assert res.exit_code == 1 and "does not answer" in res.output
    assert SnapshotStore(tmp_path / "data").live() is None


def test_a_failed_spark_job_publishes_nothing(
    ingest: Callable[..., SnapshotInfo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that fails after validation (here the ranking step raises, quoting a value):
    one fixed error, nothing published, the staging directory (and Spark's output in it)
    removed."""
    from corpus import spark_ingest  # lazy: loads pyspark, the [spark] extra

    def failing(session: Any, uri: str, metadata: list[str]) -> Any:
        return session.sql("SELECT raise_error('SECRET') AS x")

    monkeypatch.setattr(spark_ingest, "_ranked", failing)
    source = write_jsonl(tmp_path / "c.jsonl", spark_corpus_rows()[:20])
    with pytest.raises(spark_ingest.SparkIngestFailed) as err:
        ingest(str(source), str(tmp_path / "data"))
    assert "SECRET" not in str(err.value) and err.value.__cause__ is None
    store = SnapshotStore(tmp_path / "data")
    assert store.live() is None and store.list() == [] and list(store.tmp_dir.iterdir()) == []


def _cli(data_dir: Path, url: str, path: str) -> Any:
    args = ["--data-dir", str(data_dir), "ingest", "--engine", "spark", path]
    return CliRunner().invoke(main, args, env={"PRIVTEXT_ENGINE_URL": url})


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_parquet(path: Path, rows: list[dict[str, str]]) -> Path:
    table = pa.Table.from_pylist(rows)
    ts = pa.array([datetime.fromisoformat(r["timestamp"]) for r in rows], pa.timestamp("us", "UTC"))
    pq.write_table(table.set_column(2, "timestamp", ts), path)
    return path


@pytest.mark.slow
def test_csv_source(ingest: Callable[..., SnapshotInfo], tmp_path: Path) -> None:
    """A CSV with quotes, a quoted newline, an empty text and an empty metadata cell: the
    same rows and features as the embedded ingest of the same file."""
    rows = spark_corpus_rows()[:40]
    rows[0]["text"] = 'she said "great",\nthen left'
    rows[1]["text"] = ""
    rows[2]["channel"] = ""
    source = _write_csv(tmp_path / "c.csv", rows)
    info = ingest(str(source), str(tmp_path / "a"))
    ref = ingest_file(source, tmp_path / "b", workers=1)
    key = lambda r: tuple(r[c] for c in CONTENT)  # noqa: E731
    assert sorted(map(key, _rows(info)), key=repr) == sorted(map(key, _rows(ref)), key=repr)
    assert any(r["channel"] is None for r in _rows(info))


@pytest.mark.slow
def test_parquet_source(
    ingest: Callable[..., SnapshotInfo], spark_corpus: tuple[Path, SnapshotInfo], tmp_path: Path
) -> None:
    """The corpus rows as Parquet with typed timestamps: the same features as the embedded
    ingest of the JSONL."""
    source = _write_parquet(tmp_path / "c.parquet", spark_corpus_rows())
    info = ingest(str(source), str(tmp_path / "data"))
    key = lambda r: tuple(r[c] for c in CONTENT)  # noqa: E731
    ours, ref = _rows(info), _rows(spark_corpus[1])
    assert sorted(map(key, ours), key=repr) == sorted(map(key, ref), key=repr)
