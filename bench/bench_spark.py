"""Benchmark: each query kind's private computation on DuckDB vs Spark (Spark Connect,
``local[1]`` and ``local[2]``) on the same snapshot; and Spark's scan rate per core, for a cost
model at 1e9 messages (issue 14).

Usage:
  .venv/bin/python bench/make_big_corpus.py /tmp/privtext-big      # once: 1,000,000 messages
  .venv/bin/python bench/bench_spark.py /tmp/privtext-big [--reps 3] [--masters local[1] local[2]]

Per engine, per kind: plan + price + ``build_answer`` (the bounded aggregates, the noise and the
answer) in this process, as ``POST /v1/queries`` runs it after the reservation; one warm-up run,
then the median of ``--reps``. DuckDB reads the snapshot through the store's cursor; each Spark
master is a fresh Spark Connect server started by ``scripts/spark-connect.sh`` on loopback (a
client on the same machine: the gRPC round trips are included). Ratios are printed against
DuckDB in the same run and local[1] against local[2].

The scan rate: ``SELECT count(*), sum(length(text)), sum(chars) FROM snapshot`` (every row
group and the text column read) on ``local[1]``, median of ``--reps``: messages and Parquet
bytes per second per core. From it and the snapshot's bytes per message, the executors a count
needs to stay under one second at 1e9 messages, with and without the rank pruning of queries
without filters.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from corpus import SnapshotStore
from corpus.duckdb_engine import DuckDBEngine
from corpus.spark_engine import SparkEngine
from corpus.spark_session import SparkConnect
from service.queries.answer import build_answer
from service.queries.plan import build_plan
from service.queries.pricing import price
from service.schemas.query import QuerySchema

ROOT = Path(__file__).resolve().parent.parent
MAY = {"start": "2018-05-01T00:00:00Z", "end": "2018-06-01T00:00:00Z"}
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("count", {"kind": "count"}),
    ("count senders", {"kind": "count", "of": "senders"}),
    ("count keyword", {"kind": "count", "filters": {"keywords": {"terms": ["movie"]}}}),
    ("sum chars", {"kind": "sum", "feature": "chars"}),
    ("mean by weekday", {"kind": "mean", "feature": "tokens", "group_by": {"time": "weekday"}}),
    ("variance", {"kind": "variance", "feature": "sentiment_compound"}),
    ("quantiles", {"kind": "quantiles", "feature": "chars", "quantiles": [0.5, 0.9]}),
    ("histogram", {"kind": "histogram", "feature": "tokens", "bins": [0, 5, 10, 20, 40]}),
    ("sentiment by day", {"kind": "sentiment", "group_by": {"time": "day", "range": MAY}}),
    ("top_terms", {"kind": "top_terms", "k": 10, "privacy": {"epsilon": 1, "delta": 1e-7}}),
    (
        "count by prompt",
        {
            "kind": "count",
            "group_by": {"metadata": "prompt"},
            "privacy": {"epsilon": 1, "delta": 1e-7},
        },
    ),
    ("count auto cap", {"kind": "count", "max_messages_per_sender": "auto"}),
]


def _time(run: Any, reps: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _plans(metadata: list[str]) -> list[tuple[str, Any, Any]]:
    out = []
    for name, body in REQUESTS:
        plan = build_plan(QuerySchema().load(body), metadata_columns=metadata)
        out.append((name, plan, price(plan, max_messages=plan.max_messages)))
    return out


def _duckdb(store: SnapshotStore, info: Any, plans: list, reps: int) -> dict[str, float]:
    res = {}
    for name, plan, priced in plans:

        def run(plan: Any = plan, priced: Any = priced) -> None:
            _, cur = store.cursor(info.id)
            try:
                build_answer(plan, priced, DuckDBEngine(cur, plan))
            finally:
                cur.close()

        res[name] = _time(run, reps)
    return res


def _start(master: str) -> tuple[str, str]:
    env = {**os.environ, "PYTHON": sys.executable, "SPARK_CONNECT_MASTER": master}
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "spark-connect.sh"), "start"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = dict(
        ln.removeprefix("export ").split("=", 1)
        for ln in out.stdout.splitlines()
        if ln.startswith("export ")
    )
    return lines["PRIVTEXT_ENGINE_URL"], lines["PRIVTEXT_SPARK_DIR"]


def _spark(
    master: str, uri: str, plans: list, reps: int
) -> tuple[dict[str, float], tuple[float, float]]:
    url, directory = _start(master)
    conn = SparkConnect(url, query_timeout_s=600)
    try:
        res = {}
        for name, plan, priced in plans:

            def run(plan: Any = plan, priced: Any = priced) -> None:
                build_answer(plan, priced, SparkEngine(conn, uri, plan))

            res[name] = _time(run, reps)
        scan = f"SELECT count(*), sum(length(text)), sum(chars) FROM parquet.`{uri}`"
        scan_ms = _time(lambda: conn.rows(scan, {}), reps)
        # a job that reads no row group (pruned by the rank statistics): the fixed overhead
        empty = f"SELECT count(*), sum(length(text)) FROM parquet.`{uri}` WHERE msg_rank < 0"
        overhead_ms = _time(lambda: conn.rows(empty, {}), reps)
        return res, (scan_ms, overhead_ms)
    finally:
        conn.close()
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "spark-connect.sh"), "stop", directory], check=False
        )


def _cost_model(info: Any, scan_ms_1: float, overhead_ms: float) -> None:
    meta = pq.ParquetFile(info.messages_path).metadata
    rows, size = meta.num_rows, info.messages_path.stat().st_size
    rank = [
        meta.row_group(i).column(meta.schema.names.index("msg_rank")).statistics
        for i in range(meta.num_row_groups)
    ]
    kept = sum(meta.row_group(i).num_rows for i, s in enumerate(rank) if s.min < 100)
    net_s = (scan_ms_1 - overhead_ms) / 1000  # the scan less a job's fixed overhead
    per_core = rows / net_s
    bytes_core = size / net_s
    print(
        f"\nscan rate, local[1], the full scan less a job that reads no row group "
        f"({scan_ms_1:.0f} - {overhead_ms:.0f} ms): {per_core:,.0f} messages/s per core, "
        f"{bytes_core / 2**20:,.1f} MiB/s of Parquet per core "
        f"({rows:,} messages, {size / 2**20:.1f} MiB, {size / rows:.1f} bytes/message, "
        f"{meta.num_row_groups} row groups)"
    )
    print(f"rows in row groups a query without filters reads at cap 100: {kept:,} of {rows:,}")
    for label, frac in (("filtered (full scan)", 1.0), ("no filter, cap 100", kept / rows)):
        msgs = 1e9 * frac
        print(
            f"1e9 messages, {label}: {msgs * size / rows / 2**30:,.1f} GiB scanned, "
            f"{msgs / per_core:,.0f} core-seconds; under 1 s needs >= "
            f"{msgs / per_core:,.0f} cores, plus a job's fixed overhead ({overhead_ms:.0f} ms "
            "here), which more cores do not shorten"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--masters", nargs="+", default=["local[1]", "local[2]"])
    ap.add_argument("--scan-only", action="store_true", help="only the scan rate and cost model")
    args = ap.parse_args()
    store = SnapshotStore(args.data_dir)
    info = store.live()
    assert info is not None, "no live snapshot"
    print(
        f"python {platform.python_version()}, cpus {os.cpu_count()}, "
        f"load {os.getloadavg()[0]:.2f}; snapshot {info.id} ({info.source})"
    )
    plans = [] if args.scan_only else _plans(list(info.metadata_columns))
    results = {"duckdb": _duckdb(store, info, plans, args.reps)}
    scan_ms: dict[str, tuple[float, float]] = {}
    uri = str(info.messages_path.resolve())
    for master in args.masters:
        results[master], scan_ms[master] = _spark(master, uri, plans, args.reps)
    cols = ["duckdb", *args.masters]
    print(f"\nmedian ms of {args.reps} (after one warm-up), load {os.getloadavg()[0]:.2f}")
    head = f"{'kind':18}" + "".join(f"{c:>12}" for c in cols)
    head += "".join(f"{m + '/duck':>16}" for m in args.masters)
    if len(args.masters) == 2:
        head += f"{'1 core/2 cores':>16}"
    print(head)
    for name, _, _ in plans:
        row = f"{name:18}" + "".join(f"{results[c][name]:12.1f}" for c in cols)
        row += "".join(f"{results[m][name] / results['duckdb'][name]:16.1f}" for m in args.masters)
        if len(args.masters) == 2:
            a, b = args.masters
            row += f"{results[a][name] / results[b][name]:16.2f}"
        print(row)
    for m, (full, empty) in scan_ms.items():
        print(f"full scan on {m}: {full:.0f} ms; a job reading no row group: {empty:.0f} ms")
    if "local[1]" in scan_ms:
        _cost_model(info, *scan_ms["local[1]"])


if __name__ == "__main__":
    main()
