"""The non-private baseline of bench/bench_hot_path.py: a minimal Flask app that answers each
query kind with plain DuckDB SQL over the snapshot's parquet file (no cap, no clamp, no noise,
no ledger, no authentication).

  HOTPATH_PARQUET=<snapshot>/messages.parquet \
    .venv/bin/gunicorn --pythonpath bench --workers 2 --bind 127.0.0.1:PORT nonprivate_app:app

``POST /q`` with ``{"kind": <name>, "variant": <i>}`` runs candidate ``i`` of that kind and
answers ``{"kind", "answer"}``; ``GET /healthz`` answers ``ok``. Each worker opens one DuckDB
connection (a view ``messages`` over the parquet file, session time zone UTC: what the service's
``SnapshotStore`` does) and gives each request its own cursor.

Every kind lists one or more plain SQL forms of the same non-private answer (post-processed in
Python where noted); the benchmark checks that a kind's forms agree and picks the fastest in its
run. Time buckets use integer keys from the epoch (``epoch_us(ts) // 86_400_000_000`` is the UTC
day; 1970-01-01 was a Thursday, so ``(day + 3) % 7`` is the weekday with Monday 0; every
timestamp of the corpus is after 1970, so integer division is floor division here).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from typing import Any

import duckdb
from flask import Flask, jsonify, request

DAY_US = 86_400_000_000
HIST_EDGES = [0, 20, 40, 80, 160, 300]
TERMS = ["lol", "haha", "movie", "music", "dog", "cat", "coffee", "work", "school", "weekend"]
#: service.queries.compute.TOKEN_SQL_RE (bench_hot_path.py checks that they are equal).
TOKEN_RE = r"[\p{L}\p{N}]+(?:['\x{2019}][\p{L}\p{N}]+)*"
#: The declared range of the by-day kind (the corpus spans 2018-04-10 to 2018-11-16).
DAY_RANGE = ("2018-04-01T00:00:00+00:00", "2018-12-01T00:00:00+00:00")

Rows = list[tuple[Any, ...]]


def _first(rows: Rows) -> list[Any]:
    return list(rows[0])


def _groups(rows: Rows) -> dict[str, Any]:
    return {str(k): int(v) for k, v in sorted(rows)}


def _mean(rows: Rows) -> list[Any]:
    n, s = rows[0]
    return [int(n), s / n]


def _variance(rows: Rows) -> list[Any]:
    n, s, ss = rows[0]
    m = s / n
    return [int(n), m, ss / n - m * m]


def _median(rows: Rows) -> list[Any]:
    """quantile_cont(x, 0.5) from (value, count) rows: the mean of the values at ranks
    floor((n-1)/2) and ceil((n-1)/2)."""
    rows = sorted(r for r in rows if r[0] is not None)
    n = sum(int(c) for _, c in rows)
    lo, hi = (n - 1) // 2, n // 2
    seen, a, b = 0, None, None
    for v, c in rows:
        if a is None and seen + c > lo:
            a = v
        if seen + c > hi:
            b = v
            break
        seen += c
    return [(a + b) / 2]


def _hist_case(rows: Rows) -> list[int]:
    out = [0] * (len(HIST_EDGES) - 1)
    for b, c in rows:
        out[int(b)] += int(c)
    return out


def _hist_values(rows: Rows) -> list[int]:
    """The CASE form's bins (below 20, ..., 160 and above) from (value, count) rows."""
    inner = HIST_EDGES[1:-1]
    out = [0] * (len(HIST_EDGES) - 1)
    for v, c in rows:
        out[bisect.bisect_right(inner, v) if v is not None else len(inner)] += int(c)
    return out


_CASE = (
    "CASE "
    + " ".join(f"WHEN chars < {float(e)!r} THEN {i}" for i, e in enumerate(HIST_EDGES[1:-1]))
    + f" ELSE {len(HIST_EDGES) - 2} END"
)
_RE = TOKEN_RE.replace("'", "''")
_IN = ", ".join(f"'{t}'" for t in TERMS)
_ANY_TERM = "|".join(TERMS)
_CONTAINS = " OR ".join(f"contains(lt, '{t}')" for t in TERMS)
_DAY0 = f"epoch_us(TIMESTAMPTZ '{DAY_RANGE[0]}')"
_DAY1 = f"epoch_us(TIMESTAMPTZ '{DAY_RANGE[1]}')"

#: kind -> [(label, SQL, post-processing of the rows)]
CANDIDATES: dict[str, list[tuple[str, str, Callable[[Rows], Any]]]] = {
    "count messages": [("count(*)", "SELECT count(*) FROM messages", _first)],
    "count senders": [
        ("count(DISTINCT)", "SELECT count(DISTINCT sender_id) FROM messages", _first),
        ("DISTINCT subquery", "SELECT count(*) FROM (SELECT DISTINCT sender_id FROM messages)",
         _first),
    ],
    "sum chars": [("sum", "SELECT sum(chars) FROM messages", _first)],
    "mean chars": [
        ("count, avg", "SELECT count(chars), avg(chars) FROM messages", _first),
        ("count, sum", "SELECT count(chars), sum(chars) FROM messages", _mean),
    ],
    "variance chars": [
        ("var_pop", "SELECT count(chars), avg(chars), var_pop(chars) FROM messages", _first),
        ("sums of powers",
         "SELECT count(chars), sum(chars), sum(chars::BIGINT * chars) FROM messages", _variance),
    ],
    "median chars": [
        ("quantile_cont", "SELECT quantile_cont(chars, 0.5) FROM messages", _first),
        ("counts per value", "SELECT chars, count(*) FROM messages GROUP BY chars", _median),
    ],
    "histogram chars": [
        ("CASE bins", f"SELECT {_CASE} AS b, count(*) FROM messages GROUP BY b", _hist_case),
        ("counts per value", "SELECT chars, count(*) FROM messages GROUP BY chars", _hist_values),
    ],
    "count by weekday": [
        ("integer weekday",
         f"SELECT (epoch_us(ts) // {DAY_US} + 3) % 7 AS w, count(*) FROM messages GROUP BY w",
         _groups),
        ("integer days, then weekday",
         f"SELECT (d + 3) % 7 AS w, sum(n) FROM (SELECT epoch_us(ts) // {DAY_US} AS d, "
         "count(*) AS n FROM messages GROUP BY d) GROUP BY w", _groups),
    ],
    "count by day": [
        ("integer day, ts range",
         f"SELECT epoch_us(ts) // {DAY_US} AS d, count(*) FROM messages "
         f"WHERE ts >= TIMESTAMPTZ '{DAY_RANGE[0]}' AND ts < TIMESTAMPTZ '{DAY_RANGE[1]}' "
         "GROUP BY d", _groups),
        ("integer day, integer range",
         f"SELECT d, count(*) FROM (SELECT epoch_us(ts) AS us, us // {DAY_US} AS d "
         f"FROM messages) WHERE us >= {_DAY0} AND us < {_DAY1} GROUP BY d", _groups),
    ],
    "sentiment": [
        ("FILTER counts, avg",
         "SELECT count(*) FILTER (WHERE sentiment_compound >= 0.05), count(*) FILTER (WHERE "
         "sentiment_compound > -0.05 AND sentiment_compound < 0.05), count(*) FILTER (WHERE "
         "sentiment_compound <= -0.05), avg(sentiment_compound) FROM messages", _first),
    ],
    # The full tokenisation of every text (the old baseline) takes seconds; a message can hold
    # a declared term as a token only if its lower-cased text contains it, so these tokenise
    # only those (same answer, checked by the benchmark).
    "top terms (10 declared)": [
        ("regex prefilter",
         f"SELECT term, count(DISTINCT sender_id) FROM (SELECT sender_id, unnest("
         f"regexp_extract_all(lt, '{_RE}')) AS term FROM (SELECT sender_id, lower(text) AS lt "
         f"FROM messages) WHERE regexp_matches(lt, '{_ANY_TERM}')) WHERE term IN ({_IN}) "
         "GROUP BY term", _groups),
        ("contains prefilter",
         f"SELECT term, count(DISTINCT sender_id) FROM (SELECT sender_id, unnest("
         f"regexp_extract_all(lt, '{_RE}')) AS term FROM (SELECT sender_id, lower(text) AS lt "
         f"FROM messages) WHERE {_CONTAINS}) WHERE term IN ({_IN}) GROUP BY term", _groups),
    ],
}  # fmt: skip


def connect(parquet: str) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(":memory:")
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("SET parquet_metadata_cache = true")  # as corpus/store.py does
    quoted = parquet.replace("'", "''")
    conn.execute(f"CREATE VIEW messages AS SELECT * FROM read_parquet('{quoted}')")
    return conn


def answer(cur: duckdb.DuckDBPyConnection, kind: str, variant: int) -> Any:
    _, sql, post = CANDIDATES[kind][variant]
    return post(cur.execute(sql).fetchall())


def same(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """Answers equal, floats to ``rel``."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rel) for k in a)
    if isinstance(a, Sequence) and isinstance(b, Sequence) and not isinstance(a, str):
        return len(a) == len(b) and all(same(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= rel * max(1.0, abs(float(a)), abs(float(b)))
    return bool(a == b)


def create_app(parquet: str) -> Flask:
    app = Flask(__name__)
    state: dict[str, Any] = {}

    def cursor() -> duckdb.DuckDBPyConnection:
        if state.get("pid") != os.getpid():  # one connection per worker process
            state["conn"], state["pid"] = connect(parquet), os.getpid()
        return state["conn"].cursor()

    @app.post("/q")
    def q() -> Any:
        body = request.get_json()
        cur = cursor()
        try:
            out = answer(cur, body["kind"], int(body.get("variant", 0)))
        finally:
            cur.close()
        return jsonify({"kind": body["kind"], "answer": out})

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    return app


if os.environ.get("HOTPATH_PARQUET"):
    app = create_app(os.environ["HOTPATH_PARQUET"])
