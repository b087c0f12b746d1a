"""Benchmark: latency of every query kind through the HTTP API (gunicorn, 2 workers) against
the same aggregation without privacy run directly on the corpus store, in the same run; then
queries per second with concurrent clients.

Usage:
  .venv/bin/python bench/make_big_corpus.py /tmp/privtext-big      # once: 1,000,000 messages
  .venv/bin/python bench/bench_query_latency.py --data-dir /tmp/privtext-big [--runs 30]
        [--clients 4] [--qps-seconds 20] [--profile]

Per kind, ``--runs`` rounds; each round, back to back and on the same (loopback) machine:

* ``http``: one ``POST /v1/queries`` to a real gunicorn (``--workers 2``, the project's
  ``service/gunicorn_conf.py``) on 127.0.0.1, by an analyst with a large budget. Every request
  is a distinct query (epsilon 1 + i * 1e-6, i a global counter), so nothing is a replay:
  each request is validated, priced, reserved in the SQLite ledger, computed, noised,
  audited and committed;
* ``plain``: the non-private aggregation (no cap, no clamp, no noise) run on a cursor of the
  same ``SnapshotStore`` (same DuckDB view over the same parquet file) in this process;
* ``bounded``: the service's own bounded aggregate (``CorpusQuery``: cap via ``msg_rank``,
  clamping, grid) without noise, same cursor: what privacy costs in SQL alone;
* ``in-proc``: plan + price + ``build_answer`` (bounded SQL + noise + answer shape) in this
  process, no HTTP, no ledger.

Reported: medians in ms and the ratio http / plain (goal: at most 1.25). Then ``--clients``
threads send a mix of all kinds (distinct queries) for ``--qps-seconds`` and the queries per
second are reported, and with ``--profile`` one request of each kind is profiled in-process
(cProfile through the Flask test client) to show where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import os
import platform
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from corpus import SnapshotStore
from corpus.duckdb_engine import TOKEN_SQL_RE
from corpus.duckdb_engine import DuckDBEngine as CorpusQuery
from mechanisms.ledger import Budget
from service.app import create_app
from service.charging import get_ledger
from service.queries.answer import build_answer
from service.queries.kinds.binned import QUANTILE_BINS
from service.queries.plan import build_plan
from service.queries.pricing import price
from service.schemas.query import QuerySchema

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
GOAL = 1.25
HIST_EDGES = [0, 20, 40, 80, 160, 300]
TERMS = ["lol", "haha", "movie", "music", "dog", "cat", "coffee", "work", "school", "weekend"]
BOUNDS = {"lower": 0, "upper": 300}
_REGEX = TOKEN_SQL_RE.replace("'", "''")
_CASE = (
    "CASE "
    + " ".join(f"WHEN chars < {float(e)!r} THEN {i}" for i, e in enumerate(HIST_EDGES[1:-1]))
    + f" ELSE {len(HIST_EDGES) - 2} END"
)
_TERMS_IN = ", ".join(f"'{t}'" for t in TERMS)

#: (name, request body without privacy, non-private SQL of the same aggregation)
KINDS: list[tuple[str, dict[str, Any], str]] = [
    ("count messages", {"kind": "count"}, "SELECT count(*) FROM messages"),
    ("count senders", {"kind": "count", "of": "senders"},
     "SELECT count(DISTINCT sender_id) FROM messages"),
    ("sum chars", {"kind": "sum", "feature": "chars", "bounds": BOUNDS},
     "SELECT sum(chars) FROM messages"),
    ("mean chars", {"kind": "mean", "feature": "chars", "bounds": BOUNDS},
     "SELECT count(*), avg(chars) FROM messages"),
    ("variance chars", {"kind": "variance", "feature": "chars", "bounds": BOUNDS},
     "SELECT count(*), avg(chars), var_pop(chars) FROM messages"),
    ("median chars", {"kind": "quantiles", "feature": "chars", "bounds": BOUNDS},
     "SELECT quantile_cont(chars, 0.5) FROM messages"),
    ("histogram chars", {"kind": "histogram", "feature": "chars", "bins": HIST_EDGES},
     f"SELECT {_CASE} AS b, count(*) FROM messages GROUP BY b"),
    ("count by weekday", {"kind": "count", "group_by": {"time": "weekday"}},
     "SELECT isodow(ts) - 1 AS d, count(*) FROM messages GROUP BY d"),
    ("sentiment", {"kind": "sentiment"},
     "SELECT count(*) FILTER (WHERE sentiment_compound >= 0.05), count(*) FILTER (WHERE "
     "sentiment_compound > -0.05 AND sentiment_compound < 0.05), count(*) FILTER (WHERE "
     "sentiment_compound <= -0.05), avg(sentiment_compound) FROM messages"),
    ("top terms (10 declared)", {"kind": "top_terms", "terms": TERMS},
     f"SELECT term, count(DISTINCT sender_id) FROM (SELECT sender_id, unnest("
     f"regexp_extract_all(lower(text), '{_REGEX}')) AS term FROM messages) "
     f"WHERE term IN ({_TERMS_IN}) GROUP BY term"),
]  # fmt: skip

_counter = itertools.count(1)
_counter_lock = threading.Lock()


def distinct_body(body: dict[str, Any]) -> dict[str, Any]:
    with _counter_lock:
        i = next(_counter)
    return {**body, "privacy": {"epsilon": 1.0 + i * 1e-6}}


def bounded_raw(cq: CorpusQuery, plan: Any) -> Any:
    """The service's bounded aggregate for ``plan`` (no noise), as build_answer reads it."""
    m = plan.max_messages
    if plan.kind == "count":
        return cq.counts(m)
    if plan.kind in ("sum", "mean", "variance"):
        return cq.moments(m)
    if plan.kind == "quantiles":
        import numpy as np

        g = plan.grid
        edges = np.linspace(g.lower, g.upper, QUANTILE_BINS + 1)
        return cq.bin_counts(tuple(edges.tolist()), m)
    if plan.kind == "histogram":
        return cq.bin_counts(plan.spec.bins, m)
    if plan.kind == "sentiment":
        return cq.sentiment(m)
    return cq.term_sender_counts(m)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=False)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--qps-seconds", type=float, default=20.0)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    data_dir = str(Path(args.data_dir).resolve())

    store = SnapshotStore(data_dir)
    snapshot = store.live()
    assert snapshot is not None, "no live snapshot: run bench/make_big_corpus.py first"
    _, cur = store.cursor(snapshot.id)
    n = cur.execute("SELECT count(*) FROM messages").fetchone()[0]
    print(
        f"python {platform.python_version()}, cpus {len(os.sched_getaffinity(0))}, "
        f"load avg {os.getloadavg()[0]:.2f}; snapshot {snapshot.id} ({snapshot.source}), "
        f"{n:,} messages"
    )

    # An analyst key through the CLI, a large budget through the ledger.
    env = {**os.environ, "PRIVTEXT_DATA_DIR": data_dir, "PRIVTEXT_LOG_LEVEL": "WARNING",
           # one analyst sends every query: a limit never reached (its count still written)
           "PRIVTEXT_QUERY_RATE_PER_MINUTE": "1000000000"}
    made = subprocess.run(
        [str(VENV_BIN / "privtext"), "keys", "create", "--role", "analyst", "--name", "bench"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    token = made.stdout.strip().splitlines()[-1]
    pid = made.stderr.split("principal:")[1].split()[0]
    app = create_app({"data_dir": data_dir, "log_level": "WARNING"})
    with app.app_context():
        get_ledger().set_budget(pid, Budget(epsilon=1e9, delta=1e-3))
    headers = {"Authorization": f"Bearer {token}"}

    port = free_port()
    log = open(Path(data_dir) / "bench-gunicorn.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [str(VENV_BIN / "gunicorn"), "--config", "python:service.gunicorn_conf",
         "--bind", f"127.0.0.1:{port}", "--workers", str(args.workers), "service.wsgi:app"],
        env={**env, "PRIVTEXT_LOG_LEVEL": "INFO"}, cwd=ROOT, stdout=log, stderr=log,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("gunicorn did not become ready")
        run(args, url, headers, store, snapshot, cur, app, pid)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def run(args, url, headers, store, snapshot, cur, app, pid) -> None:  # type: ignore[no-untyped-def]  # noqa: C901 - a benchmark driver, read top to bottom
    session = requests.Session()
    schema = QuerySchema()
    meta = list(snapshot.metadata_columns)

    def post(body: dict[str, Any], sess: requests.Session = session) -> float:
        t = time.perf_counter()
        r = sess.post(f"{url}/v1/queries", json=distinct_body(body), headers=headers)
        dt = time.perf_counter() - t
        out = r.json()
        assert r.status_code == 200 and out["replay"] is False, (r.status_code, out)
        return dt

    # Warm up: every kind a few times so both workers have opened the snapshot.
    for _name, body, sql in KINDS:
        for _ in range(4):
            post(body)
        cur.execute(sql).fetchall()

    rows = []
    ratios = {}
    for name, body, sql in KINDS:
        plan = build_plan(schema.load({**body, "privacy": {"epsilon": 1.0}}), metadata_columns=meta)
        t_http, t_plain, t_bounded, t_inproc = [], [], [], []
        for _ in range(args.runs):
            t_http.append(post(body))
            t = time.perf_counter()
            cur.execute(sql).fetchall()
            t_plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            bounded_raw(CorpusQuery(cur, plan), plan)
            t_bounded.append(time.perf_counter() - t)
            t = time.perf_counter()
            p = build_plan(schema.load(distinct_body(body)), metadata_columns=meta)
            build_answer(p, price(p, max_messages=p.max_messages), CorpusQuery(cur, p))
            t_inproc.append(time.perf_counter() - t)
        ratio = ms(t_http) / ms(t_plain)
        ratios[name] = ratio
        rows.append(
            (
                name,
                f"{ms(t_http):.1f}",
                f"{ms(t_plain):.1f}",
                f"{ms(t_bounded):.1f}",
                f"{ms(t_inproc):.1f}",
                f"{ratio:.2f}",
                "yes" if ratio <= GOAL else "no",
                f"{ms(t_http) / ms(t_bounded):.2f}",
            )
        )
        print(f"  done {name}", flush=True)
    print()
    print(f"median of {args.runs} runs per kind, ms; http = POST /v1/queries to gunicorn "
          f"--workers {args.workers} on loopback; goal http/plain <= {GOAL}")  # fmt: skip
    table(
        (
            "kind",
            "http",
            "plain SQL",
            "bounded SQL",
            "in-proc private",
            "http/plain",
            "goal",
            "http/bounded",
        ),  # fmt: skip
        rows,
    )

    # Floors of the HTTP path: an unauthenticated GET, and a dry run (auth, validation, plan,
    # price, replay lookup, ledger quote; no reservation, no data, no audit).
    t_health, t_dry = [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        assert session.get(f"{url}/healthz").status_code == 200
        t_health.append(time.perf_counter() - t)
        t = time.perf_counter()
        r = session.post(
            f"{url}/v1/queries", json={**distinct_body(KINDS[0][1]), "dry_run": True},
            headers=headers,
        )  # fmt: skip
        assert r.status_code == 200 and r.json()["dry_run"] is True
        t_dry.append(time.perf_counter() - t)
    print()
    print(f"HTTP floors (median of {args.runs}): GET /healthz {ms(t_health):.1f} ms; "
          f"POST /v1/queries dry run (count) {ms(t_dry):.1f} ms")  # fmt: skip
    phases(app, pid, snapshot, args.runs)

    # Throughput: concurrent clients, a mix of every kind, each request a distinct query.
    stop_at = time.perf_counter() + args.qps_seconds
    lat: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def client(k: int) -> None:
        sess = requests.Session()
        kinds = itertools.cycle(KINDS[k % len(KINDS) :] + KINDS[: k % len(KINDS)])
        mine = []
        while time.perf_counter() < stop_at:
            _, body, _ = next(kinds)
            try:
                mine.append(post(body, sess))
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc)[:200])
                break
        with lock:
            lat.extend(mine)

    def qps(label: str, kinds_: list[tuple[str, dict[str, Any], str]], clients: int) -> tuple:
        nonlocal stop_at
        saved = KINDS[:]
        KINDS[:] = kinds_
        lat.clear()
        stop_at = time.perf_counter() + args.qps_seconds
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        KINDS[:] = saved
        lat_sorted = sorted(lat)
        p95 = lat_sorted[int(0.95 * (len(lat_sorted) - 1))] * 1000
        return (label, str(clients), str(len(lat)), f"{wall:.1f}", f"{len(lat) / wall:.1f}",
                f"{ms(lat):.0f}", f"{p95:.0f}")  # fmt: skip

    qrows = [
        qps("mix of all 10 kinds", KINDS[:], args.clients),
        qps("count messages only", KINDS[:1], args.clients),
        qps("count messages only", KINDS[:1], 1),
    ]
    print()
    print(f"throughput, gunicorn --workers {args.workers}, loopback, each request distinct, "
          f"{args.qps_seconds:.0f} s per line")  # fmt: skip
    table(("workload", "clients", "requests", "wall s", "queries/s", "p50 ms", "p95 ms"), qrows)
    if errors:
        print(f"client errors: {len(errors)}; first: {errors[0]}")

    if args.profile:
        profile(app, pid, meta)
    print(f"\nload avg at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def phases(app, pid, snapshot, runs: int) -> None:  # type: ignore[no-untyped-def]
    """The steps of ``run_charged`` for distinct count and mean queries, timed one by one in
    this process (the app's own ledger, audit log and snapshot connection), as views.py and
    charging.py run them."""
    import json

    from service.charging import _cost
    from service.store import audit

    schema = QuerySchema()
    meta = list(snapshot.metadata_columns)
    names = [
        "validate+plan+price", "replay lookup", "ledger reserve", "compute (SQL+noise)",
        "ledger remaining", "audit record", "ledger commit", "JSON encode", "total",
    ]  # fmt: skip
    rows = []
    with app.app_context():
        ledger = get_ledger()
        engine = app.extensions["privtext"].engine
        corpus = app.extensions["privtext"].corpus
        for kname, body, _ in (KINDS[0], KINDS[3]):
            times: dict[str, list[float]] = {n: [] for n in names}
            for i in range(runs + 3):
                t = [time.perf_counter()]
                plan = build_plan(schema.load(distinct_body(body)), metadata_columns=meta)
                priced = price(plan, max_messages=plan.max_messages)
                t.append(time.perf_counter())
                normalised = audit.normalise_query(plan.normalised())
                qhash = audit.query_hash(normalised)
                assert (
                    audit.find_replay(
                        engine, principal_id=pid, snapshot_id=snapshot.id, qhash=qhash
                    )
                    is None
                )
                t.append(time.perf_counter())
                res = ledger.reserve(pid, priced.event)
                t.append(time.perf_counter())
                _, c = corpus.cursor(snapshot.id)
                try:
                    ans = {"kind": plan.kind, **build_answer(plan, priced, CorpusQuery(c, plan))}
                finally:
                    c.close()
                t.append(time.perf_counter())
                remaining = ledger.remaining(pid, tight=False)
                cost = _cost(priced.event, remaining.remaining_delta)
                t.append(time.perf_counter())
                audit.record(
                    engine, principal_id=pid, status="released", snapshot_id=snapshot.id,
                    normalised_query=normalised, cost=cost, released=ans,
                    reservation_id=res.id,
                )  # fmt: skip
                t.append(time.perf_counter())
                ledger.commit(res.id)
                t.append(time.perf_counter())
                json.dumps({**ans, "cost": cost, "budget": remaining.to_dict()})
                t.append(time.perf_counter())
                if i < 3:
                    continue  # warm-up
                for j, n in enumerate(names[:-1]):
                    times[n].append(t[j + 1] - t[j])
                times["total"].append(t[-1] - t[0])
            rows.append((kname, *(f"{ms(times[n]):.2f}" for n in names)))
    print()
    print(f"where the time goes: run_charged's steps timed in-process, median ms of {runs}")
    table(("kind", *names), rows)


def profile(app, pid, meta) -> None:  # type: ignore[no-untyped-def]
    """cProfile one request of a cheap and an expensive kind through the Flask test client."""
    from service.auth import issue_key

    engine = app.extensions["privtext"].engine
    token = issue_key(engine, pid)
    client = app.test_client()
    h = {"Authorization": f"Bearer {token}"}
    for name, body, _ in (KINDS[0], KINDS[3]):
        for _ in range(3):  # warm this process's snapshot connection
            client.post("/v1/queries", json=distinct_body(body), headers=h)
        prof = cProfile.Profile()
        n = 20
        t = time.perf_counter()
        prof.enable()
        for _ in range(n):
            r = client.post("/v1/queries", json=distinct_body(body), headers=h)
            assert r.status_code == 200
        prof.disable()
        per = (time.perf_counter() - t) / n * 1000
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(28)
        print()
        print(f"profile: {name}, {n} requests through the Flask test client, "
              f"{per:.1f} ms/request under cProfile (cumulative, top entries)")  # fmt: skip
        text = s.getvalue()
        print(text[text.find("ncalls") :].rstrip())


if __name__ == "__main__":
    main()
