"""Benchmark: ingest the full chitchat demo corpus, against single-process baselines.

Usage: .venv/bin/python bench/bench_ingest.py [--repeats N] [--workers W]

Runs, in one process and on the same machine:
  1. ``ingest_demo`` with ``workers=W`` (default: all CPUs available, at most 8);
  2. ``ingest_demo`` with ``workers=1`` (the whole pipeline, scoring in-process);
  3. plain single-process VADER ``polarity_scores`` over the same texts (scoring alone).
Each into a fresh temporary directory; prints the median wall time of ``--repeats`` runs.
The goal (issue: foundation) is the whole demo corpus in under 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from corpus import SnapshotStore, ingest_demo
from corpus.ingest import default_workers, read_demo

GOAL_S = 60.0


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def ingest_once(workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        ingest_demo(tmp, workers=workers)
        store = SnapshotStore(tmp)
        conn = store.connect()
        n, senders = conn.execute(
            "SELECT count(*), count(DISTINCT sender_id) FROM messages"
        ).fetchone()
        conn.close()
        assert (n, senders) == (258145, 1315), (n, senders)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()

    texts = read_demo().text
    n = len(texts)
    cpus = len(os.sched_getaffinity(0))
    print(f"python {platform.python_version()}, {platform.machine()}, cpus available {cpus}, "
          f"load avg {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"messages: {n}; repeats: {args.repeats} (median reported)")

    def vader_only() -> None:
        analyzer = SentimentIntensityAnalyzer()
        for text in texts:
            analyzer.polarity_scores(text)

    rows = [
        (f"ingest_demo workers={args.workers}", timed(lambda: ingest_once(args.workers),
                                                       args.repeats)),
        ("ingest_demo workers=1 (baseline)", timed(lambda: ingest_once(1), args.repeats)),
        ("VADER alone, 1 process (baseline)", timed(vader_only, args.repeats)),
    ]  # fmt: skip
    print(f"{'run':<36} {'median s':>9} {'min s':>7} {'msg/s':>9}")
    for name, times in rows:
        med = statistics.median(times)
        print(f"{name:<36} {med:>9.2f} {min(times):>7.2f} {n / med:>9,.0f}")
    fast = statistics.median(rows[0][1])
    print(f"speed-up of workers={args.workers} over workers=1: "
          f"{statistics.median(rows[1][1]) / fast:.2f}x")  # fmt: skip
    print(f"goal: full demo ingest < {GOAL_S:.0f} s -> {'PASS' if fast < GOAL_S else 'FAIL'} "
          f"({fast:.2f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
