"""Benchmark: time buckets as integers from the epoch vs calendar functions (issue 11).

    .venv/bin/python bench/bench_time_buckets.py --data-dir DIR [--reps 15]

DIR holds an ingested corpus (e.g. the 1,000,000-message one of bench/make_big_corpus.py).
For each query, the exact capped aggregate (``CorpusQuery``, no noise, cap 100) is timed with
the service's integer buckets and with the calendar expressions they replaced, alternating
the two in each rep (so load on the shared cores falls on both), and checked to give the same
answer. Prints medians (ms) and the ratio integer / calendar.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from corpus import duckdb_engine as compute
from corpus.store import SnapshotStore
from service.queries.plan import build_plan
from service.schemas.query import QuerySchema

CALENDAR = {
    "hour_of_day": "hour(ts)",
    "weekday": "isodow(ts) - 1",
    "day": "strftime(date_trunc('day', ts), '%Y-%m-%d')",
    "week": "strftime(date_trunc('week', ts), '%Y-%m-%d')",
}
RANGE = {"start": "2018-01-01T00:00:00Z", "end": "2019-01-01T00:00:00Z"}
QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("count by day (a year)", {"kind": "count", "group_by": {"time": "day", "range": RANGE}}),
    ("count by week (a year)", {"kind": "count", "group_by": {"time": "week", "range": RANGE}}),
    ("count by hour of day", {"kind": "count", "group_by": {"time": "hour_of_day"}}),
    ("sum chars by weekday", {"kind": "sum", "feature": "chars", "group_by": {"time": "weekday"}}),
    ("sentiment by weekday", {"kind": "sentiment", "group_by": {"time": "weekday"}}),
]


def run(q: compute.DuckDBEngine) -> Any:
    kind = q.scan.kind  # type: ignore[attr-defined]
    if kind == "count":
        return q.counts(100)
    if kind == "sentiment":
        return q.sentiment(100)
    return q.moments(100)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    store = SnapshotStore(args.data_dir)
    info, cur = store.cursor()
    n = cur.execute("SELECT count(*) FROM messages").fetchone()[0]
    print(f"snapshot {info.id}: {n:,} messages; cap 100; {args.reps} alternating reps")
    print(f"{'query':28} {'calendar ms':>12} {'integer ms':>11} {'integer/calendar':>17}")
    for name, body in QUERIES:
        plan = build_plan(QuerySchema().load(body), metadata_columns=list(info.metadata_columns))
        unit = plan.groups.column  # type: ignore[union-attr]
        new_q = compute.DuckDBEngine(cur, plan)
        old_q = compute.DuckDBEngine(cur, plan)
        old_q.group = CALENDAR[unit]
        old_q._key = lambda raw: raw  # noqa: SLF001 - the calendar keys are the plan's keys
        assert run(new_q) == run(old_q), name
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.reps):
            for label, q in (("old", old_q), ("new", new_q)):
                t0 = time.perf_counter()
                run(q)
                times[label].append((time.perf_counter() - t0) * 1000)
        old, new = statistics.median(times["old"]), statistics.median(times["new"])
        print(f"{name:28} {old:12.2f} {new:11.2f} {new / old:17.2f}")
    cur.close()


if __name__ == "__main__":
    main()
