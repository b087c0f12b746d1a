"""Benchmark: accuracy of every query kind on the demo corpus at epsilon 1, against the truth
and against OpenDP computing the same bounded query.

Usage: .venv/bin/python bench/bench_query_accuracy.py [--runs N] [--http-runs M] [--data-dir D]

For each query kind (default cap: 100 messages per sender, declared bounds, epsilon 1):

* the TRUE answer of the same bounded query, straight from DuckDB on the snapshot's parquet
  (same cap rule ``msg_rank < 100``, same clamping, same bin rule, same tokenizer), and the
  unbounded true answer (no cap, no clamp): their difference is the bias of capping/clamping;
* ``--runs`` noisy answers from the service's own code path (``QuerySchema`` ->
  ``build_plan`` -> ``price`` -> ``build_answer`` on a fresh DuckDB cursor: everything
  ``POST /v1/queries`` does except the ledger and the HTTP layer): the median absolute error
  against the bounded truth, the mean reported half-width, and the empirical coverage of the
  reported interval (fraction of answers whose interval holds the bounded truth);
* ``--http-runs`` answers through ``POST /v1/queries`` on the Flask test client, each by a
  fresh analyst (so no replay, exactly epsilon 1): a cross-check that the HTTP answers behave
  the same;
* ``--runs`` releases by OpenDP 0.16 (``opendp.prelude``, contrib) of the same bounded query:
  the data are the same per-sender-capped rows (the cap done in SQL, as OpenDP's
  transformation framework has no per-sender cap of its own), the same clamping bounds, the
  privacy unit a sender (symmetric distance d_in = 100 rows, 1 for distinct senders, 10
  (sender, term) pairs for top terms), and noise scales found by OpenDP's
  ``binary_search_param`` so that its own privacy map gives epsilon <= 1.

Multi-cell kinds (histogram bins, weekday groups, terms) pool every cell of every run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import opendp.prelude as dp

from corpus import SnapshotStore, ingest_demo
from corpus.duckdb_engine import TOKEN_SQL_RE
from corpus.duckdb_engine import DuckDBEngine as CorpusQuery
from mechanisms.ledger import Budget
from service.app import create_app
from service.auth import create_principal, issue_key
from service.charging import get_ledger
from service.queries.answer import build_answer
from service.queries.kinds.binned import QUANTILE_BINS
from service.queries.plan import build_plan
from service.queries.pricing import price
from service.schemas.query import QuerySchema

dp.enable_features("contrib")

EPS = 1.0
CAP = 100
LO, HI = 0.0, 300.0  # declared bounds of chars
HIST_EDGES = [0, 20, 40, 80, 160, 300]
TERMS = ["lol", "haha", "movie", "music", "dog", "cat", "coffee", "work", "school", "weekend"]
BOUNDS = {"lower": LO, "upper": HI}
PRIV = {"epsilon": EPS}

KINDS: list[tuple[str, dict[str, Any]]] = [
    ("count messages", {"kind": "count"}),
    ("count senders", {"kind": "count", "of": "senders"}),
    ("sum chars [0,300]", {"kind": "sum", "feature": "chars", "bounds": BOUNDS}),
    ("mean chars [0,300]", {"kind": "mean", "feature": "chars", "bounds": BOUNDS}),
    ("variance chars [0,300]", {"kind": "variance", "feature": "chars", "bounds": BOUNDS}),
    ("median chars [0,300]", {"kind": "quantiles", "feature": "chars", "bounds": BOUNDS,
                              "quantiles": [0.5]}),
    ("histogram chars 5 bins", {"kind": "histogram", "feature": "chars", "bins": HIST_EDGES}),
    ("count by weekday", {"kind": "count", "group_by": {"time": "weekday"}}),
    ("sentiment mean compound", {"kind": "sentiment"}),
    ("top terms, 10 declared", {"kind": "top_terms", "terms": TERMS, "k": 10}),
]  # fmt: skip

CAPPED = f"FROM messages WHERE msg_rank < {CAP}"
ALL = "FROM messages WHERE TRUE"
CLAMPED = f"least(greatest(chars, {LO}), {HI})"


def bin_case(col: str, edges: list[float]) -> str:
    """The service's bin rule (DuckDBEngine.bin_counts): below an inner edge -> that bin,
    else last."""
    cases = " ".join(f"WHEN {col} < {float(e)!r} THEN {i}" for i, e in enumerate(edges[1:-1]))
    return f"CASE {cases} ELSE {len(edges) - 2} END"


# -- truth ---------------------------------------------------------------------------------
def truths(cur: Any) -> dict[str, tuple[dict[Any, float], dict[Any, float]]]:
    """kind name -> (bounded truth per cell, unbounded truth per cell)."""

    def one(sql: str) -> dict[Any, float]:
        return {None: float(cur.execute(sql).fetchone()[0])}

    def keyed(sql: str) -> dict[Any, float]:
        return {r[0]: float(r[1]) for r in cur.execute(sql).fetchall()}

    regex = TOKEN_SQL_RE.replace("'", "''")
    terms_in = ", ".join(f"'{t}'" for t in TERMS)

    def terms(src: str) -> dict[Any, float]:
        got = keyed(
            "SELECT term, count(DISTINCT sender_id) FROM (SELECT sender_id, "
            f"unnest(regexp_extract_all(lower(text), '{regex}')) AS term {src}) "
            f"WHERE term IN ({terms_in}) GROUP BY term"
        )
        return {t: got.get(t, 0.0) for t in TERMS}

    def hist(src: str) -> dict[Any, float]:
        got = keyed(f"SELECT {bin_case('chars', HIST_EDGES)} AS b, count(*) {src} GROUP BY b")
        return {i: got.get(i, 0.0) for i in range(len(HIST_EDGES) - 1)}

    def weekday(src: str) -> dict[Any, float]:
        got = keyed(f"SELECT isodow(ts) - 1 AS d, count(*) {src} GROUP BY d")
        return {i: got.get(i, 0.0) for i in range(7)}

    return {
        "count messages": (one(f"SELECT count(*) {CAPPED}"), one(f"SELECT count(*) {ALL}")),
        "count senders": (
            one(f"SELECT count(DISTINCT sender_id) {ALL}"),
            one(f"SELECT count(DISTINCT sender_id) {ALL}"),
        ),
        "sum chars [0,300]": (
            one(f"SELECT sum({CLAMPED}) {CAPPED}"),
            one(f"SELECT sum(chars) {ALL}"),
        ),
        "mean chars [0,300]": (
            one(f"SELECT avg({CLAMPED}) {CAPPED}"),
            one(f"SELECT avg(chars) {ALL}"),
        ),
        "variance chars [0,300]": (
            one(f"SELECT var_pop({CLAMPED}) {CAPPED}"),
            one(f"SELECT var_pop(chars) {ALL}"),
        ),
        "median chars [0,300]": (
            one(f"SELECT quantile_cont({CLAMPED}, 0.5) {CAPPED}"),
            one(f"SELECT quantile_cont(chars, 0.5) {ALL}"),
        ),
        "histogram chars 5 bins": (hist(CAPPED), hist(ALL)),
        "count by weekday": (weekday(CAPPED), weekday(ALL)),
        "sentiment mean compound": (
            one(f"SELECT avg(sentiment_compound) {CAPPED}"),
            one(f"SELECT avg(sentiment_compound) {ALL}"),
        ),
        "top terms, 10 declared": (terms(CAPPED), terms(ALL)),
    }


# -- reading an answer ---------------------------------------------------------------------
def cells(name: str, ans: dict[str, Any]) -> dict[Any, tuple[float | None, list[float]]]:
    """(value, interval) per cell, keyed like ``truths``."""
    if name.startswith("histogram"):
        return {i: (b["value"], b["interval"]) for i, b in enumerate(ans["result"]["bins"])}
    if name == "count by weekday":
        return {g["key"]: (g["value"], g["interval"]) for g in ans["groups"]}
    if name.startswith("median"):
        q = ans["result"]["quantiles"][0]
        return {None: (q["value"], q["interval"])}
    if name.startswith("sentiment"):
        r = ans["result"]["mean_compound"]
        return {None: (r["value"], r["interval"])}
    if name.startswith("top terms"):
        return {t["term"]: (t["senders"], t["interval"]) for t in ans["result"]["terms"]}
    return {None: (ans["result"]["value"], ans["result"]["interval"])}


class Stats:
    def __init__(self) -> None:
        self.err: list[float] = []
        self.hw: list[float] = []
        self.covered: list[bool] = []
        self.none = 0

    def add(self, got: dict[Any, tuple[float | None, list[float]]], truth: dict[Any, float]):
        for key, t in truth.items():
            value, (lo, hi) = got[key]
            if value is None:
                self.none += 1
                continue
            self.err.append(abs(value - t))
            self.hw.append((hi - lo) / 2)
            self.covered.append(lo <= t <= hi)


# -- OpenDP --------------------------------------------------------------------------------
SD = dp.symmetric_distance()


SCALES: dict[str, float] = {}


def _search(make: Callable[[float], Any], d_in: int, eps: float, name: str = "") -> Any:
    scale = dp.binary_search_param(make, d_in=d_in, d_out=eps)
    if name:
        SCALES[name] = scale
    meas = make(scale)
    assert meas.map(d_in) <= eps * (1 + 1e-9), (meas.map(d_in), eps)
    return meas


def opendp_releases(cur: Any) -> dict[str, Callable[[], dict[Any, float]]]:
    """kind name -> a function making one OpenDP release of the bounded query (per cell)."""
    vi = dp.vector_domain(dp.atom_domain(T=int))
    vf = dp.vector_domain(dp.atom_domain(T=float, nan=False))
    vs = dp.vector_domain(dp.atom_domain(T=str))
    chars = [int(r[0]) for r in cur.execute(f"SELECT chars {CAPPED}").fetchall()]
    compound = [float(r[0]) for r in cur.execute(f"SELECT sentiment_compound {CAPPED}").fetchall()]
    senders = [int(r[0]) for r in cur.execute("SELECT DISTINCT sender_id FROM messages").fetchall()]
    binned = [
        int(r[0])
        for r in cur.execute(f"SELECT {bin_case('chars', HIST_EDGES)} {CAPPED}").fetchall()
    ]
    days = [int(r[0]) for r in cur.execute(f"SELECT isodow(ts) - 1 {CAPPED}").fetchall()]
    regex = TOKEN_SQL_RE.replace("'", "''")
    terms_in = ", ".join(f"'{t}'" for t in TERMS)
    pairs = [  # the term of each distinct (sender, term) pair among capped messages
        r[1]
        for r in cur.execute(
            "SELECT DISTINCT sender_id, term FROM (SELECT sender_id, "
            f"unnest(regexp_extract_all(lower(text), '{regex}')) AS term {CAPPED}) "
            f"WHERE term IN ({terms_in})"
        ).fetchall()
    ]
    centred = [float(min(max(c, LO), HI) - (LO + HI) / 2) for c in chars]
    centred_sq = [c * c for c in centred]
    half = (HI - LO) / 2

    count_i = lambda s: (vi, SD) >> dp.t.then_count() >> dp.m.then_laplace(s)  # noqa: E731
    sum_i = (  # noqa: E731
        lambda s: (
            (vi, SD)
            >> dp.t.then_clamp((int(LO), int(HI)))
            >> dp.t.then_sum()
            >> dp.m.then_laplace(s)
        )
    )

    def sum_f(lo: float, hi: float) -> Callable[[float], Any]:
        return lambda s: (
            (vf, SD) >> dp.t.then_clamp((lo, hi)) >> dp.t.then_sum() >> dp.m.then_laplace(s)
        )

    def cats(dom: Any, cats_: list[Any]) -> Callable[[float], Any]:
        return lambda s: (
            (dom, SD)
            >> dp.t.then_count_by_categories(categories=cats_, null_category=False)
            >> dp.m.then_laplace(s)
        )

    m_count = _search(count_i, CAP, EPS, "count")
    m_senders = _search(count_i, 1, EPS)
    m_sum = _search(sum_i, CAP, EPS, "sum")
    m_mean_c, m_mean_s = _search(count_i, CAP, EPS / 2), _search(sum_i, CAP, EPS / 2)
    m_var_c = _search(count_i, CAP, EPS / 3)
    m_var_s = _search(sum_f(-half, half), CAP, EPS / 3)
    m_var_q = _search(sum_f(0.0, half * half), CAP, EPS / 3)
    candidates = np.linspace(LO, HI, QUANTILE_BINS + 1).tolist()
    m_median = _search(
        lambda s: dp.m.make_private_quantile(
            vf, SD, dp.max_divergence(), candidates=candidates, alpha=0.5, scale=s
        ),
        CAP,
        EPS,
        "median (exp. mech.)",
    )
    m_hist = _search(cats(vi, list(range(len(HIST_EDGES) - 1))), CAP, EPS)
    m_days = _search(cats(vi, list(range(7))), CAP, EPS)
    m_sent_c, m_sent_s = (
        _search(count_i, CAP, EPS / 2),
        _search(sum_f(-1.0, 1.0), CAP, EPS / 2, "sentiment sum (float)"),
    )
    m_terms = _search(cats(vs, TERMS), len(TERMS), EPS, "terms")
    chars_f = [float(c) for c in chars]

    def ratio(num: float, den: float) -> float:
        return num / den if den >= 1 else float("nan")

    def variance() -> dict[Any, float]:
        c, s, q = m_var_c(chars), m_var_s(centred), m_var_q(centred_sq)
        return {None: max(0.0, q / c - (s / c) ** 2) if c >= 2 else float("nan")}

    return {
        "count messages": lambda: {None: float(m_count(chars))},
        "count senders": lambda: {None: float(m_senders(senders))},
        "sum chars [0,300]": lambda: {None: float(m_sum(chars))},
        "mean chars [0,300]": lambda: {None: ratio(m_mean_s(chars), m_mean_c(chars))},
        "variance chars [0,300]": variance,
        "median chars [0,300]": lambda: {None: float(m_median(chars_f))},
        "histogram chars 5 bins": lambda: dict(enumerate(map(float, m_hist(binned)))),
        "count by weekday": lambda: dict(enumerate(map(float, m_days(days)))),
        "sentiment mean compound": lambda: {
            None: ratio(m_sent_s(compound), m_sent_c(chars))  # same rows
        },
        "top terms, 10 declared": lambda: dict(zip(TERMS, map(float, m_terms(pairs)), strict=True)),
    }


# -- main ----------------------------------------------------------------------------------
def fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    ax = abs(x)
    if ax >= 1e5:
        return f"{x:.3e}"
    if ax >= 100:
        return f"{x:,.0f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.4f}"


def summarise(truth: dict[Any, float]) -> str:
    if len(truth) == 1:
        return fmt(next(iter(truth.values())))
    return f"{len(truth)} cells, sum {fmt(sum(truth.values()))}"


def main() -> None:  # noqa: C901 - a benchmark driver, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--http-runs", type=int, default=20)
    parser.add_argument("--data-dir", default=None, help="reuse a data dir with the demo live")
    args = parser.parse_args()

    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-acc-")
        data_dir = tmp.name
    else:
        data_dir = args.data_dir
    store = SnapshotStore(data_dir)
    t0 = time.perf_counter()
    if store.live() is None:
        ingest_demo(data_dir)
    print(
        f"python {platform.python_version()}, cpus {len(os.sched_getaffinity(0))}, "
        f"load avg {os.getloadavg()[0]:.2f}, opendp {importlib.metadata.version('opendp')}"
    )
    snapshot = store.live()
    assert snapshot is not None
    print(f"demo corpus ready in {time.perf_counter() - t0:.1f} s: {snapshot.source}")
    _, cur = store.cursor(snapshot.id)
    n, s, capped = cur.execute(
        f"SELECT count(*), count(DISTINCT sender_id), count(*) FILTER (msg_rank < {CAP}) "
        "FROM messages"
    ).fetchone()
    print(f"messages {n:,}, senders {s:,}, messages under cap {CAP}: {capped:,} ({capped / n:.1%})")
    truth = truths(cur)
    odp = opendp_releases(cur)
    print("OpenDP noise scales found: " + ", ".join(f"{k} {v:.4g}" for k, v in SCALES.items()))

    app = create_app({"data_dir": data_dir, "testing": True, "log_level": "WARNING"})
    engine = app.extensions["privtext"].engine
    client = app.test_client()
    schema = QuerySchema()
    meta_cols = list(snapshot.metadata_columns)

    rows = []
    http_rows = []
    for name, body0 in KINDS:
        body = {**body0, "privacy": PRIV}
        bounded, unbounded = truth[name]
        ours, http, theirs = Stats(), Stats(), []
        level = 0.95
        t = time.perf_counter()
        for _ in range(args.runs):
            plan = build_plan(schema.load(body), metadata_columns=meta_cols)
            priced = price(plan, max_messages=plan.max_messages)
            _, c = store.cursor(snapshot.id)
            try:
                ans = build_answer(plan, priced, CorpusQuery(c, plan))
            finally:
                c.close()
            level = ans["confidence_level"]
            ours.add(cells(name, ans), bounded)
        t_ours = (time.perf_counter() - t) / max(args.runs, 1)
        t = time.perf_counter()
        for _ in range(args.http_runs):
            pid = create_principal(engine, name="acc", role="analyst")
            with app.app_context():
                get_ledger().set_budget(pid, Budget(epsilon=10.0, delta=1e-6))
            token = issue_key(engine, pid)
            resp = client.post(
                "/v1/queries", json=body, headers={"Authorization": f"Bearer {token}"}
            )
            assert resp.status_code == 200, resp.get_json()
            out = resp.get_json()
            assert out["replay"] is False and abs(out["cost"]["epsilon"] - EPS) < 1e-6, out["cost"]
            http.add(cells(name, out), bounded)
        t_http = (time.perf_counter() - t) / max(args.http_runs, 1)
        t = time.perf_counter()
        for _ in range(args.runs):
            rel = odp[name]()
            theirs += [abs(rel[k] - bounded[k]) for k in bounded if not math.isnan(rel[k])]
        t_odp = (time.perf_counter() - t) / max(args.runs, 1)
        bias = statistics.median(abs(bounded[k] - unbounded[k]) for k in bounded)
        rows.append(
            (
                name,
                summarise(bounded),
                summarise(unbounded),
                fmt(bias),
                fmt(statistics.median(ours.err)),
                fmt(statistics.fmean(ours.hw)),
                f"{statistics.fmean(ours.covered):.3f} ({level})",
                fmt(statistics.median(theirs)) if theirs else "n/a",
                f"{t_ours * 1000:.0f}/{t_odp * 1000:.0f}",
            )
        )
        if ours.none:
            print(f"  note: {name}: {ours.none} cells answered null")
        if args.http_runs:
            http_rows.append(
                (
                    name,
                    str(args.http_runs),
                    fmt(statistics.median(http.err)),
                    fmt(statistics.fmean(http.hw)),
                    f"{statistics.fmean(http.covered):.3f}",
                    f"{t_http * 1000:.0f}",
                )
            )
        print(f"  done {name}", flush=True)

    print()
    print(
        f"epsilon {EPS}, cap {CAP} messages/sender, runs per kind N={args.runs} "
        "(errors and coverage pooled over cells for multi-cell kinds)"
    )
    head = (
        "kind", "bounded truth", "unbounded truth", "|cap/clamp bias|", "ours med|err|",
        "ours mean hw", "coverage (stated)", "OpenDP med|err|", "ms/run ours/odp",
    )  # fmt: skip
    table(head, rows)
    if http_rows:
        print()
        print("cross-check through POST /v1/queries (Flask test client, fresh analyst per run)")
        table(("kind", "runs", "med|err|", "mean hw", "coverage", "ms/request"), http_rows)
    cur.close()
    if tmp is not None:
        app.extensions["privtext"].engine.dispose()
        store.close()
        tmp.cleanup()


def table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + " |")


if __name__ == "__main__":
    main()
