"""Probe: would writing the snapshot sorted by ``msg_rank`` speed up capped queries?

Usage: .venv/bin/python bench/bench_rank_sorted_parquet.py DATA_DIR [--runs 25]

Copies the live snapshot's parquet, ordered by ``msg_rank`` (same zstd, same row-group size
as ingest), into a temporary file, then times, interleaved, three capped aggregates (the SQL
shapes ``corpus/duckdb_engine.py`` runs with the default cap and no filters) on both files.
With rows sorted by rank, ``msg_rank < 100`` is answered from few row groups (DuckDB skips the
rest by their min/max statistics). Nothing in the service is changed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from corpus import SnapshotStore

QUERIES = {
    "capped count": "SELECT count(*) FROM read_parquet('{}') WHERE msg_rank < 100",
    "capped moments (sum/mean)": (
        "SELECT count(*), sum(CAST(round(least(greatest(chars, 0.0), 300.0) / 1.0) AS BIGINT)"
        " - 150)::HUGEINT FROM read_parquet('{}') WHERE msg_rank < 100"
    ),
    "capped count by weekday": (
        "SELECT isodow(ts) - 1 AS d, count(*) FROM read_parquet('{}') WHERE msg_rank < 100 "
        "GROUP BY d"
    ),
    "plain count (no cap)": "SELECT count(*) FROM read_parquet('{}')",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--runs", type=int, default=25)
    args = parser.parse_args()
    info = SnapshotStore(args.data_dir).live()
    assert info is not None
    src = str(info.messages_path)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    with tempfile.TemporaryDirectory(prefix="bench-sorted-") as tmp:
        dst = str(Path(tmp) / "sorted.parquet")
        con.execute(
            f"COPY (SELECT * FROM read_parquet('{src}') ORDER BY msg_rank) TO '{dst}' "
            "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 131072)"
        )
        print(f"{info.id}: median ms of {args.runs} interleaved runs")
        print("| query | ingest order | sorted by msg_rank |")
        print("|---|---|---|")
        for name, q in QUERIES.items():
            a, b = [], []
            for _ in range(args.runs):
                t = time.perf_counter()
                con.execute(q.format(src)).fetchall()
                a.append(time.perf_counter() - t)
                t = time.perf_counter()
                con.execute(q.format(dst)).fetchall()
                b.append(time.perf_counter() - t)
            med_a, med_b = statistics.median(a) * 1000, statistics.median(b) * 1000
            print(f"| {name} | {med_a:.1f} | {med_b:.1f} |")


if __name__ == "__main__":
    main()
