"""Benchmark: what breaking top terms' ties by ``md5`` (issue 14: the same choice on DuckDB and
Spark) costs DuckDB, against DuckDB's ``hash`` that it replaced, in the same run.

Usage: .venv/bin/python bench/bench_tiebreak.py DATA_DIR [--reps 7]

``DuckDBEngine.term_sender_counts`` at cap 100 (discovered terms; and with bigrams) on the live
snapshot, alternating the md5 form (the engine as it is) and the hash form (the same SQL with
the tie key swapped back), one warm-up each, medians of ``--reps``; ratio md5 / hash.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from corpus import SnapshotStore
from corpus.duckdb_engine import DuckDBEngine
from corpus.engine import Measure

MD5 = "md5(term || ' ' || CAST(sender_id AS VARCHAR) || ' ' || ?)"
HASH = "hash(term, sender_id, ?)"


class Scan:
    time_range = None
    keywords: tuple[str, ...] = ()
    keywords_match = "any"
    metadata_filter: tuple[Any, ...] = ()
    groups = None

    def __init__(self, bigrams: bool) -> None:
        self.measure = Measure(bigrams=bigrams)


class HashCursor:
    """A cursor whose statements have the md5 tie key swapped for DuckDB's hash."""

    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def execute(self, sql: str, params: Any) -> Any:
        assert MD5 in sql
        return self.cur.execute(sql.replace(MD5, HASH), params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    store = SnapshotStore(args.data_dir)
    info, cur = store.cursor()
    print(f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; snapshot {info.id}")
    for bigrams in (False, True):
        scan = Scan(bigrams)
        forms = {"md5": DuckDBEngine(cur, scan), "hash": DuckDBEngine(HashCursor(cur), scan)}  # type: ignore[arg-type]
        times: dict[str, list[float]] = {k: [] for k in forms}
        for engine in forms.values():
            engine.term_sender_counts(100)  # warm-up
        for _ in range(args.reps):
            for name, engine in forms.items():
                t0 = time.perf_counter()
                engine.term_sender_counts(100)
                times[name].append((time.perf_counter() - t0) * 1000)
        md5, hsh = statistics.median(times["md5"]), statistics.median(times["hash"])
        print(f"bigrams={bigrams}: md5 {md5:.0f} ms, hash {hsh:.0f} ms, ratio {md5 / hsh:.2f}")
    cur.close()


if __name__ == "__main__":
    main()
