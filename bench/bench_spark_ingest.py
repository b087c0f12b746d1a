"""Benchmark: ``privtext ingest --engine spark`` against the embedded ingest, same file.

Usage: PRIVTEXT_ENGINE_URL=sc://127.0.0.1:PORT .venv/bin/python bench/bench_spark_ingest.py
       [--limit N] [--repeats R] [--workers W]

Writes the demo corpus (its first ``--limit`` messages; default all 258,145) as JSONL, then
times, in one run, each into a fresh data directory: ``ingest_file`` with ``workers=W`` (the
embedded ingest, the baseline) and ``ingest_spark`` on the Spark Connect server of
``PRIVTEXT_ENGINE_URL`` (validation pass, features, ids and ranks, the join into one file,
publish). Prints the median wall time of ``--repeats`` runs, messages/s and the ratio.
Both snapshots are checked to hold the same number of messages and senders.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from corpus.ingest import default_workers, ingest_file, read_demo
from corpus.spark_ingest import ingest_spark
from corpus.spark_session import SparkConnect
from corpus.store import SnapshotInfo

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def write_demo(path: Path, limit: int | None) -> int:
    records = read_demo(limit)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(len(records)):
            row = {
                "sender": records.sender[i],
                "conversation": records.conversation[i],
                "timestamp": (_EPOCH + timedelta(microseconds=records.ts_us[i])).isoformat(),
                "text": records.text[i],
                **{k: v[i] for k, v in records.metadata.items()},
            }
            fh.write(json.dumps(row) + "\n")
    return len(records)


def counts(info: SnapshotInfo) -> tuple[int, int]:
    conn = duckdb.connect()
    path = str(info.messages_path).replace("'", "''")
    row = conn.execute(
        f"SELECT count(*), count(DISTINCT sender_id) FROM read_parquet('{path}')"
    ).fetchone()
    conn.close()
    assert row is not None
    return int(row[0]), int(row[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()
    url = os.environ["PRIVTEXT_ENGINE_URL"]
    spark = SparkConnect(url)
    print(f"load {os.getloadavg()}, workers={args.workers}, spark {url}")
    with tempfile.TemporaryDirectory(prefix="bench-spark-ingest-") as tmp:
        source = Path(tmp) / "demo.jsonl"
        n = write_demo(source, args.limit)
        print(f"{n:,} messages, {source.stat().st_size / 1e6:.1f} MB JSONL")
        spark.session().range(1).count()  # the server's first job, not timed
        results: dict[str, list[float]] = {"embedded": [], "spark": []}
        seen = {}
        for r in range(args.repeats):
            for name in results:
                data_dir = Path(tmp) / f"{name}-{r}"
                start = time.perf_counter()
                if name == "embedded":
                    info = ingest_file(source, data_dir, workers=args.workers)
                else:
                    info = ingest_spark(str(source), str(data_dir), spark=spark)
                results[name].append(time.perf_counter() - start)
                seen[name] = counts(info)
        assert seen["embedded"] == seen["spark"], seen
        base = statistics.median(results["embedded"])
        for name, times in results.items():
            med = statistics.median(times)
            print(
                f"{name:9s} median {med:7.2f} s  ({n / med:9,.0f} msg/s)  {med / base:5.2f}x"
                f"  runs {[round(t, 2) for t in times]}"
            )
        print(f"messages, senders: {seen['spark']}")
    spark.close()


if __name__ == "__main__":
    main()
