"""Benchmark: the charged hot path (issue 11) against a non-private service, in one run.

Usage (one command; the corpus is built once by bench/make_big_corpus.py and reused):

  .venv/bin/python bench/make_big_corpus.py /tmp/privtext-hotpath/big        # once, 1-2 min
  .venv/bin/python bench/bench_hot_path.py --data-dir /tmp/privtext-hotpath/big \
        [--start-postgres | --postgres-url URL] [--quick] [--parts latency,reserve,qps,statements]

PostgreSQL: ``--postgres-url`` (default: $PRIVTEXT_TEST_POSTGRES_URL, which
``source scripts/test-services.sh`` exports; that cluster runs with fsync=off and
synchronous_commit=off as its server defaults, so its commits are not durable, whatever the
service asks for), or ``--start-postgres``: a throwaway cluster on loopback with the server's
default (durable) settings, fsync on, stopped and removed at the end. The server's fsync and
synchronous_commit as the service's sessions see them are printed. Without either, the
PostgreSQL columns are skipped. Every PostgreSQL store is a fresh database, dropped at the end;
every SQLite store a fresh file in a scratch directory.

Four parts, each printing its figures next to their baseline from the same run and the ratio:

1. ``latency``: per query kind, median ms over HTTP of ``POST /v1/queries`` to privtext
   (gunicorn ``--config python:service.gunicorn_conf --workers 2``, SQLite state store, every
   request a distinct charged query: the confidence level varies, so none is a replay) against
   ``POST /q`` to bench/nonprivate_app.py (minimal Flask app, gunicorn ``--workers 2``, sync
   workers) running the fastest plain DuckDB SQL for the same non-private answer (integer time
   keys; per kind, the fastest of the forms listed in nonprivate_app.CANDIDATES, all checked
   to give the same answer, timed in this process first). Rounds interleave the two services
   (A, B, then B, A, ...) and every kind. Goal: privtext / non-private <= 1.1 for every kind.
2. ``reserve``: ``SqlLedger.reserve`` (the replay-free admission: both budget checks and the
   reservation, one write transaction) on stores whose analyst has 0, 10,000 and 100,000
   ledger entries (and as many audit rows), interleaved; and the same with the query path's
   gate (the rate-limit count, the replay lookup in the audit log and the claim, as
   ``run_charged`` passes it), next to
   its floor on the same store: one durable write transaction of one row. Median ms, SQLite
   and PostgreSQL. Goal: flat and under 1 ms.
3. ``qps``: charged count queries per second at 8 and 32 concurrent clients on 2 and 4
   gunicorn workers, SQLite and PostgreSQL, against the non-private endpoint's count under the
   same load (the same worker count; the three servers run side by side and take turns, the
   order rotated every round). Each cell runs a fixed time; the first second is not counted.
   Every privtext request is distinct, from one of 64 analysts in turn. Goal: privtext /
   non-private >= 0.8.
4. ``statements``: SQL statements per charged query in-process (Flask test client, the app
   as it serves HTTP: settlement after the response, key cache on), before the response and
   after it is closed, counted by SQLAlchemy events (and on SQLite by sqlite3's trace
   callback, which also sees statements run on the raw connection); then fsync and fdatasync
   calls per charged query over HTTP, counted by ``strace -f -c`` attached to the gunicorn
   workers (SQLite) or to every process of the PostgreSQL cluster (when it is local).

Every privtext server and in-process app runs with PRIVTEXT_QUERY_RATE_PER_MINUTE=1e9: the
per-analyst rate limit is never reached, and its count is still written on every query, so
its cost is in every figure. Everything else is the service's default configuration.

The load generators run on the same machine as the servers (2 processes; threads); on a
shared machine the load of other work falls on both sides alike because they alternate, but
absolute figures move with it: the load average is printed along the way. A full run takes
about 7 minutes on 2 cores; ``--quick`` (4 latency rounds, 40 reserve calls per cell, one
round of 3 s per throughput cell, 40 queries under strace) about 3.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_BIN = Path(sys.executable).parent
LATENCY_GOAL = 1.1
QPS_GOAL = 0.8
RESERVE_GOAL_MS = 1.0
N_ANALYSTS = 64
#: PRIVTEXT_QUERY_RATE_PER_MINUTE of every privtext server and in-process app of this run.
RATE_PER_MINUTE = 1_000_000_000
DAY_BODY = {
    "kind": "count",
    "group_by": {
        "time": "day",
        "range": {"start": "2018-04-01T00:00:00+00:00", "end": "2018-12-01T00:00:00+00:00"},
    },
}

# ---------------------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def med_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000 if xs else float("nan")


def table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    sys.stdout.flush()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """One POST on a new connection (gunicorn's sync workers close every connection)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


_k = itertools.count(1)


def level(k: int) -> float:
    """A distinct confidence level per request (the cost does not depend on it)."""
    return 0.5 + k / 1e11


def priv_body(body: dict[str, Any], k: int) -> bytes:
    return json.dumps({**body, "privacy": {"epsilon": 1.0}, "confidence_level": level(k)}).encode()


# ---------------------------------------------------------------------------------------
# servers


#: Servers started and not yet stopped (stopped at exit whatever happens).
RUNNING: list[Server] = []


class Server:
    """A gunicorn master in its own session; stopped with SIGTERM to the group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, ready: str):
        self.name, self.argv, self.env, self.log_path, self.ready = name, argv, env, log, ready
        self.port = int(argv[argv.index("--bind") + 1].rsplit(":", 1)[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        RUNNING.append(self)
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=ROOT, stdout=self.log, stderr=self.log,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            try:
                if get(self.port, self.ready) == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready; see {self.log_path}")

    def workers(self) -> list[int]:
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()]

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()
        self.proc = None
        if self in RUNNING:
            RUNNING.remove(self)


def privtext_server(ctx: Ctx, url: str, workers: int, name: str) -> Server:
    env = {
        **os.environ,
        "PRIVTEXT_DATA_DIR": ctx.data_dir,
        "PRIVTEXT_DATABASE_URL": url,
        "PRIVTEXT_LOG_LEVEL": "INFO",
        # A per-analyst limit never reached (the latency and fsync parts send every query as
        # one analyst): the rate limiter's count is still written on every query (its cost
        # is measured), and nothing is refused.
        "PRIVTEXT_QUERY_RATE_PER_MINUTE": str(RATE_PER_MINUTE),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn_conf makes one per master
    argv = [
        str(VENV_BIN / "gunicorn"), "--config", "python:service.gunicorn_conf",
        "--bind", f"127.0.0.1:{free_port()}", "--workers", str(workers), "service.wsgi:app",
    ]  # fmt: skip
    return Server(name, argv, env, ctx.scratch / f"{name}.log", "/readyz").start()


def baseline_server(ctx: Ctx, workers: int, name: str) -> Server:
    env = {**os.environ, "HOTPATH_PARQUET": ctx.parquet}
    argv = [
        str(VENV_BIN / "gunicorn"), "--pythonpath", str(BENCH), "--bind",
        f"127.0.0.1:{free_port()}", "--workers", str(workers), "--log-level", "warning",
        "nonprivate_app:app",
    ]  # fmt: skip
    return Server(name, argv, env, ctx.scratch / f"{name}.log", "/healthz").start()


# ---------------------------------------------------------------------------------------
# state stores


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        from corpus import SnapshotStore

        self.args = args
        self.data_dir = str(Path(args.data_dir).resolve())
        info = SnapshotStore(self.data_dir).live()
        assert info is not None, "no live snapshot: run bench/make_big_corpus.py first"
        self.snapshot = info
        self.parquet = str(info.messages_path.resolve())
        self.scratch = Path(tempfile.mkdtemp(prefix="bench-hot-path-", dir="/tmp"))
        self.pg_admin_url: str | None = None
        self.pg_dbs: list[str] = []
        self.pg_cluster: Path | None = None
        self.pg_datadir: Path | None = None

    def sqlite_url(self, name: str) -> str:
        return f"sqlite:///{self.scratch / name}.db"

    def pg_url(self, name: str) -> str:
        """A fresh database on the PostgreSQL server, dropped at the end."""
        import psycopg
        from sqlalchemy.engine import make_url

        assert self.pg_admin_url is not None
        db = f"bench_hp_{os.getpid()}_{name}"
        base = make_url(self.pg_admin_url)
        with psycopg.connect(_libpq(base), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db}"')
        self.pg_dbs.append(db)
        return base.set(database=db).render_as_string(hide_password=False)

    def cleanup(self) -> None:
        for server in list(RUNNING):
            server.stop()
        if self.pg_admin_url is not None:
            import psycopg
            from sqlalchemy.engine import make_url

            try:
                with psycopg.connect(_libpq(make_url(self.pg_admin_url)), autocommit=True) as c:
                    for db in self.pg_dbs:
                        c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            except Exception as exc:  # noqa: BLE001
                print(f"(could not drop the bench databases: {exc!r})")
        if self.pg_cluster is not None:
            stop_cluster(self.pg_cluster)
        shutil.rmtree(self.scratch, ignore_errors=True)


def _libpq(url: Any) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def service_engine(ctx: Ctx, url: str) -> Any:
    """The engine the service makes for ``url`` (``create_app``: schema created)."""
    from service.app import create_app

    app = create_app({"data_dir": ctx.data_dir, "database_url": url, "log_level": "WARNING"})
    return app.extensions["privtext"].engine


def make_analysts(ctx: Ctx, url: str, n: int) -> list[tuple[str, str]]:
    """``n`` analysts with a large budget and a key each, in the store at ``url``."""
    from mechanisms.ledger import Budget
    from service.auth import create_principal, issue_key
    from service.store.ledger import SqlLedger

    engine = service_engine(ctx, url)
    ledger = SqlLedger(engine)
    out = []
    for i in range(n):
        pid = create_principal(engine, name=f"bench-{i}", role="analyst")
        ledger.set_budget(pid, Budget(epsilon=1e9, delta=1e-3))
        out.append((pid, issue_key(engine, pid)))
    engine.dispose()
    return out


def start_cluster(scratch: Path) -> tuple[str, Path, Path]:
    """A throwaway PostgreSQL cluster on loopback with the server's default settings (fsync
    on, synchronous_commit on); returns (url, its directory, its data directory)."""
    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not bindirs:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    bindir = bindirs[-1]
    cluster = Path(tempfile.mkdtemp(prefix="bench-hot-path-pg-", dir="/tmp"))
    run: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(cluster, "postgres")
        run = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*run, str(bindir / "initdb"), "-D", str(cluster / "data"), "-U", "privtext",
         "-A", "trust", "-E", "UTF8"], check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [*run, str(bindir / "pg_ctl"), "-D", str(cluster / "data"), "-l",
         str(cluster / "server.log"), "-w", "-t", "60", "-o",
         f"-h 127.0.0.1 -p {port} -k {cluster} -c max_connections=300", "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    return f"postgresql+psycopg://privtext@127.0.0.1:{port}/postgres", cluster, cluster / "data"


def stop_cluster(cluster: Path) -> None:
    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))[-1]
    run = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [*run, str(bindir / "pg_ctl"), "-D", str(cluster / "data"), "-m", "fast", "stop"],
        capture_output=True,
    )  # fmt: skip
    shutil.rmtree(cluster, ignore_errors=True)


def store_settings(ctx: Ctx, url: str) -> str:
    """Durability settings as the service's own engine sees them."""
    from sqlalchemy import text

    engine = service_engine(ctx, url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                sync = conn.execute(text("PRAGMA synchronous")).scalar()
                mode = conn.execute(text("PRAGMA journal_mode")).scalar()
                names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
                return f"SQLite journal_mode={mode}, synchronous={names.get(sync, sync)}"
            shows = ["server_version", "fsync", "synchronous_commit", "wal_sync_method"]
            vals = [f"{s}={conn.execute(text(f'SHOW {s}')).scalar()}" for s in shows]
            return "PostgreSQL " + ", ".join(vals)
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------
# 1. latency per kind


def kinds() -> list[tuple[str, dict[str, Any]]]:
    import bench_query_latency as bql
    import nonprivate_app as npa

    from corpus.duckdb_engine import TOKEN_SQL_RE

    assert npa.TOKEN_RE == TOKEN_SQL_RE and npa.TERMS == bql.TERMS
    assert npa.HIST_EDGES == bql.HIST_EDGES
    out = [(name, body) for name, body, _ in bql.KINDS]
    out.insert(8, ("count by day", DAY_BODY))
    assert [n for n, _ in out] == list(npa.CANDIDATES), [n for n, _ in out]
    return out


def choose_baselines(ctx: Ctx) -> dict[str, int]:
    """Per kind, the fastest plain SQL form (median of 5 runs, the forms taken in turn, in
    this process; 3 runs for forms over a second), after checking that every form gives the
    same answer."""
    import nonprivate_app as npa

    cur = npa.connect(ctx.parquet).cursor()
    chosen: dict[str, int] = {}
    rows = []
    for kind, cands in npa.CANDIDATES.items():
        answers = [npa.answer(cur, kind, i) for i in range(len(cands))]
        for i, a in enumerate(answers[1:], 1):
            assert npa.same(answers[0], a), (kind, cands[i][0], answers[0], a)
        runs: list[list[float]] = [[] for _ in cands]
        for r in range(5):
            for i in range(len(cands)):
                if r >= 3 and statistics.median(runs[i]) > 1.0:
                    continue
                t = time.perf_counter()
                npa.answer(cur, kind, i)
                runs[i].append(time.perf_counter() - t)
        times = [med_ms(ts) for ts in runs]
        chosen[kind] = min(range(len(cands)), key=lambda i: times[i])
        rows.append((kind, ", ".join(f"{c[0]} {t:.1f}" for c, t in zip(cands, times, strict=True)),
                     cands[chosen[kind]][0]))  # fmt: skip
    print("\nnon-private SQL forms, in-process median ms of 5 runs in turn (3 above 1 s); each "
          "kind's forms give the same answer; the fastest is served")  # fmt: skip
    table(("kind", "forms timed", "served"), rows)
    return chosen


def part_latency(ctx: Ctx, reps: int) -> None:
    import nonprivate_app as npa

    print(f"\n## 1. Latency per kind over HTTP, 1,000,000 messages ({time.strftime('%H:%M:%S')}, "
          f"load {load()})")  # fmt: skip
    ks = kinds()
    chosen = choose_baselines(ctx)
    url = ctx.sqlite_url("latency")
    ((_, token),) = make_analysts(ctx, url, 1)
    hp = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    hb = {"Content-Type": "application/json"}
    priv = privtext_server(ctx, url, 2, "latency-privtext")
    base = baseline_server(ctx, 2, "latency-nonprivate")
    print(store_settings(ctx, url))
    t_priv: dict[str, list[float]] = {n: [] for n, _ in ks}
    t_base: dict[str, list[float]] = {n: [] for n, _ in ks}

    def one_priv(name: str, body: dict[str, Any], keep: bool) -> None:
        data = priv_body(body, next(_k))
        t = time.perf_counter()
        status, out = post(priv.port, "/v1/queries", data, hp)
        dt = time.perf_counter() - t
        assert status == 200 and json.loads(out)["replay"] is False, (name, status, out[:300])
        if keep:
            t_priv[name].append(dt)

    def one_base(name: str, keep: bool) -> None:
        data = json.dumps({"kind": name, "variant": chosen[name], "k": next(_k)}).encode()
        t = time.perf_counter()
        status, out = post(base.port, "/q", data, hb)
        dt = time.perf_counter() - t
        assert status == 200, (name, status, out[:300])
        if keep:
            t_base[name].append(dt)

    try:
        for rep in range(-2, reps):  # two warm-up rounds: every worker opens the snapshot
            for name, body in ks:
                if rep % 2 == 0:
                    one_priv(name, body, rep >= 0)
                    one_base(name, rep >= 0)
                else:
                    one_base(name, rep >= 0)
                    one_priv(name, body, rep >= 0)
            if rep >= 0:
                print(f"  round {rep + 1}/{reps} done, load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        priv.stop()
        base.stop()
    rows = []
    for name, _ in ks:
        p, b = med_ms(t_priv[name]), med_ms(t_base[name])
        rows.append((name, f"{p:.1f}", f"{b:.1f}", f"{p / b:.2f}",
                     "yes" if p / b <= LATENCY_GOAL else "no",
                     npa.CANDIDATES[name][chosen[name]][0]))  # fmt: skip
    print(
        f"\nmedian ms of {reps} interleaved rounds; privtext = POST /v1/queries (gunicorn "
        "--workers 2, service/gunicorn_conf.py, SQLite, distinct charged queries); "
        f"non-private = POST /q (gunicorn --workers 2, plain SQL); goal ratio <= {LATENCY_GOAL}"
    )
    table(("kind", "privtext", "non-private", "ratio", "goal", "non-private SQL"), rows)


# ---------------------------------------------------------------------------------------
# 2. reserve at 0 / 10,000 / 100,000 history entries


def fill_history(engine: Any, pid: str, n: int, snapshot_id: str) -> None:
    """``n`` committed ledger entries and ``n`` released audit rows for ``pid`` (direct
    inserts), and the budget row's running spend to match."""
    from datetime import UTC, datetime

    from sqlalchemy import insert, update

    from mechanisms.events import PrivacyEvent
    from mechanisms.ledger import Spend
    from service.store.ledger_tables import audit_log, budgets, ledger_entries

    if n == 0:
        return
    event = PrivacyEvent.laplace(1.0)
    ev = json.dumps(event.to_dict(), sort_keys=True)
    now = datetime.now(UTC)
    spend = Spend()
    one = Spend.of(event)
    for _ in range(n):
        spend = spend + one
    batch = 10_000
    with engine.begin() as conn:
        for start in range(0, n, batch):
            idx = range(start, min(n, start + batch))
            conn.execute(
                insert(ledger_entries),
                [{"id": f"hist-{pid}-{i}", "principal_id": pid, "event": ev,
                  "status": "committed", "created_at": now, "settled_at": now} for i in idx],
            )  # fmt: skip
            conn.execute(
                insert(audit_log),
                [{"created_at": now, "principal_id": pid, "status": "released",
                  "snapshot_id": snapshot_id,
                  "query_hash": hashlib.sha256(f"hist-{i}".encode()).hexdigest(),
                  "query": f'{{"hist":{i}}}', "cost": "{}", "released": '{"value":1}',
                  "reservation_id": f"hist-{pid}-{i}"} for i in idx],
            )  # fmt: skip
        conn.execute(
            update(budgets).where(budgets.c.principal_id == pid)
            .values(spend=json.dumps(spend.to_dict()))
        )  # fmt: skip


def part_reserve(ctx: Ctx, backends: list[str], reps: int, sizes: list[int]) -> None:  # noqa: C901 - a benchmark driver, read top to bottom
    from sqlalchemy import func, select

    from mechanisms.events import PrivacyEvent
    from service.charging import CLAIM_STALE_S
    from service.store import audit
    from service.store.ledger import SqlLedger
    from service.store.ledger_tables import ledger_entries
    from service.store.ratelimit import queries_counter

    print(f"\n## 2. Reserve with both budget checks, by history length ({time.strftime('%H:%M:%S')}"
          f", load {load()})")  # fmt: skip
    rows = []
    snap = ctx.snapshot.id
    for backend in backends:
        stores = []
        for h in sizes:
            name = f"reserve_h{h}"
            url = ctx.sqlite_url(name) if backend == "SQLite" else ctx.pg_url(name)
            ((pid, _),) = make_analysts(ctx, url, 1)
            engine = service_engine(ctx, url)
            t = time.perf_counter()
            fill_history(engine, pid, h, snap)
            with engine.connect() as conn:
                n = conn.execute(
                    select(func.count()).where(ledger_entries.c.principal_id == pid)
                ).scalar()
            print(f"  {backend}: {n:,} ledger entries (+ as many audit rows) in "
                  f"{time.perf_counter() - t:.1f} s", flush=True)  # fmt: skip
            stores.append((h, pid, engine, SqlLedger(engine)))
        event = PrivacyEvent.laplace(1.0)
        rate = queries_counter("bench", 10**9)
        assert rate is not None
        floor: dict[int, list[float]] = {h: [] for h in sizes}
        plain: dict[int, list[float]] = {h: [] for h in sizes}
        gated: dict[int, list[float]] = {h: [] for h in sizes}
        for rep in range(-10, reps):
            order = stores if rep % 2 == 0 else stores[::-1]
            for h, pid, engine, ledger in order:
                t = time.perf_counter()
                durable_write(engine)
                dt = time.perf_counter() - t
                if rep >= 0:
                    floor[h].append(dt)
                t = time.perf_counter()
                ledger.reserve(pid, event)
                dt = time.perf_counter() - t
                if rep >= 0:
                    plain[h].append(dt)
                key = {
                    "principal_id": pid,
                    "snapshot_id": snap,
                    "qhash": hashlib.sha256(f"q{next(_k)}".encode()).hexdigest(),
                }

                def gate(txn: Any, key: dict[str, str] = key, rate: Any = rate) -> object | None:
                    conn = txn.conn  # as run_charged: the rate count, the claim, the lookup
                    rate.take(conn)
                    if not audit.try_claim(conn, **key, stale_after_s=CLAIM_STALE_S):
                        return "busy"
                    if audit.find_replay(conn, **key) is not None:
                        return "replay"
                    return None

                t = time.perf_counter()
                ledger.reserve(pid, event, gate=gate)
                dt = time.perf_counter() - t
                audit.unclaim(engine, **key)
                if rep >= 0:
                    gated[h].append(dt)
        for _h, _, engine, _ in stores:
            engine.dispose()
        f = [med_ms(floor[h]) for h in sizes]
        p = [med_ms(plain[h]) for h in sizes]
        g = [med_ms(gated[h]) for h in sizes]
        for label, xs in (("floor: one-row durable write", f), ("reserve", p),
                          ("reserve + rate count, claim, replay gate", g)):  # fmt: skip
            rows.append((backend, label, *(f"{x:.2f}" for x in xs), f"{xs[-1] / xs[0]:.2f}",
                         f"{xs[-1] / f[-1]:.2f}",
                         "yes" if max(xs) < RESERVE_GOAL_MS else "no"))  # fmt: skip
    print(
        f"\nmedian ms of {reps} calls per cell, the stores and the calls taken in turn; each "
        "call one durable commit; floor = BEGIN (IMMEDIATE), UPDATE of the cap row, COMMIT on "
        f"the same store; goal: under {RESERVE_GOAL_MS} ms and flat (last / first about 1)"
    )
    table(("store", "call", *(f"{h:,} entries" for h in sizes), f"{sizes[-1]:,} / {sizes[0]}",
           f"/ floor at {sizes[-1]:,}", f"< {RESERVE_GOAL_MS} ms"), rows)  # fmt: skip


def durable_write(engine: Any) -> None:
    """The least a durable charge costs on this store: one write transaction of one row."""
    from datetime import UTC, datetime

    from sqlalchemy import update

    from service.store.ledger_tables import corpus_cap

    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn = conn.execution_options(immediate=True)
        with conn.begin():
            conn.execute(
                update(corpus_cap).where(corpus_cap.c.id == 1).values(updated_at=datetime.now(UTC))
            )


# ---------------------------------------------------------------------------------------
# 3. queries per second


def _loadgen(  # noqa: C901 - a load generator's loop: send, classify the answer, record
    port: int,
    path: str,
    kind: str,
    variant: int,
    tokens: list[str],
    threads: int,
    kbase: int,
    t_start: float,
    t_count: float,
    t_stop: float,
) -> dict[str, Any]:
    """In a load-generating process: ``threads`` clients, each sending requests back to
    back until ``t_stop`` (time.monotonic); completions after ``t_count`` are counted."""
    done: list[float] = []
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(t: int) -> None:
        mine, my_lat, i = 0, [], 0
        while time.monotonic() < t_start:
            time.sleep(0.001)
        while True:
            k = kbase + t * 20_000 + i
            i += 1
            if tokens:
                body = json.dumps({"kind": "count", "privacy": {"epsilon": 1.0},
                                   "confidence_level": level(k)}).encode()  # fmt: skip
                h = {"Authorization": f"Bearer {tokens[k % len(tokens)]}",
                     "Content-Type": "application/json"}  # fmt: skip
            else:
                body = json.dumps({"kind": kind, "variant": variant, "k": k}).encode()
                h = {"Content-Type": "application/json"}
            t0 = time.monotonic()
            if t0 >= t_stop:
                break
            try:
                status, out = post(port, path, body, h)
            except OSError as exc:
                with lock:
                    errors.append(repr(exc)[:200])
                continue
            t1 = time.monotonic()
            if status != 200 or (tokens and b'"replay":false' not in out.replace(b" ", b"")):
                with lock:
                    errors.append(f"{status} {out[:200]!r}")
                continue
            if t_count <= t1 <= t_stop:
                mine += 1
                my_lat.append(t1 - t0)
        with lock:
            done.append(mine)
            lat.extend(my_lat)

    ts = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return {"n": sum(done), "lat": lat, "errors": errors}


def part_qps(  # noqa: C901 - a benchmark driver, read top to bottom
    ctx: Ctx,
    backends: list[str],
    seconds: float,
    rounds: int,
    workers_list: list[int],
    clients_list: list[int],
    procs: int,
) -> None:
    import multiprocessing as mp

    import nonprivate_app as npa

    print(f"\n## 3. Charged queries per second ({time.strftime('%H:%M:%S')}, load {load()})")
    variant = 0  # count(*): the only form of "count messages"
    assert len(npa.CANDIDATES["count messages"]) == 1
    urls = {b: (ctx.sqlite_url("qps") if b == "SQLite" else ctx.pg_url("qps")) for b in backends}
    tokens = {b: [t for _, t in make_analysts(ctx, urls[b], N_ANALYSTS)] for b in backends}
    pool = mp.get_context("spawn").Pool(procs)
    results: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
    kbase = 0
    try:
        for w in workers_list:
            servers = {"non-private": baseline_server(ctx, w, f"qps-nonprivate-w{w}")}
            for b in backends:
                servers[b] = privtext_server(ctx, urls[b], w, f"qps-{b}-w{w}")
            names = list(servers)
            # warm up: every worker opens its snapshot connection and its store connections
            for name, s in servers.items():
                for i in range(8 * w):
                    k = next(_k)
                    if name == "non-private":
                        post(
                            s.port,
                            "/q",
                            json.dumps({"kind": "count messages", "k": k}).encode(),
                            {"Content-Type": "application/json"},
                        )
                    else:
                        tok = tokens[name][i % N_ANALYSTS]
                        post(s.port, "/v1/queries", priv_body({"kind": "count"}, k),
                             {"Authorization": f"Bearer {tok}",
                              "Content-Type": "application/json"})  # fmt: skip
            for rnd in range(rounds):
                for c in clients_list:
                    order = names[rnd % len(names) :] + names[: rnd % len(names)]
                    for name in order:
                        s = servers[name]
                        per = [c // procs + (1 if p < c % procs else 0) for p in range(procs)]
                        t0 = time.monotonic() + 0.5
                        t_count, t_stop = t0 + 1.0, t0 + seconds
                        jobs = []
                        for p in range(procs):
                            if per[p] == 0:
                                continue
                            jobs.append(pool.apply_async(_loadgen, (
                                s.port, "/q" if name == "non-private" else "/v1/queries",
                                "count messages", variant,
                                [] if name == "non-private" else tokens[name], per[p],
                                kbase + p * 1_000_000, t0, t_count, t_stop)))  # fmt: skip
                        kbase += procs * 1_000_000
                        outs = [j.get(timeout=seconds + 300) for j in jobs]
                        res = {
                            "qps": sum(o["n"] for o in outs) / (t_stop - t_count),
                            "lat": [x for o in outs for x in o["lat"]],
                            "errors": [e for o in outs for e in o["errors"]],
                        }
                        results.setdefault((w, c, name), []).append(res)
                        print(f"  workers {w}, clients {c}, round {rnd + 1}: {name} "
                              f"{res['qps']:.1f}/s, errors {len(res['errors'])}, load "
                              f"{os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
            for s in servers.values():
                s.stop()
    finally:
        pool.terminate()
    rows = []
    err_total = 0
    for w in workers_list:
        for c in clients_list:
            base = [r["qps"] for r in results[(w, c, "non-private")]]
            bm = statistics.median(base)
            row = [str(w), str(c), f"{bm:.1f}"]
            for b in backends:
                q = [r["qps"] for r in results[(w, c, b)]]
                qm = statistics.median(q)
                lat = sorted(x for r in results[(w, c, b)] for x in r["lat"])
                row += [f"{qm:.1f}", f"{lat[len(lat) // 2] * 1000:.0f}" if lat else "-",
                        f"{qm / bm:.2f}", "yes" if qm / bm >= QPS_GOAL else "no"]  # fmt: skip
            for name in ("non-private", *backends):
                for r in results[(w, c, name)]:
                    err_total += len(r["errors"])
                    if r["errors"]:
                        print(f"  errors ({name}, w{w}, c{c}): {len(r['errors'])}; first: "
                              f"{r['errors'][0]}")  # fmt: skip
            rows.append(tuple(row))
    head = ["workers", "clients", "non-private req/s"]
    for b in backends:
        head += [f"{b} q/s", f"{b} p50 ms", f"{b} ratio", "goal"]
    print(f"\nmedian requests/s of {rounds} rounds of {seconds:g} s (the first second not "
          f"counted), servers taking turns; privtext: charged count queries, each distinct, "
          f"{N_ANALYSTS} analysts in turn; non-private: count(*); goal ratio >= {QPS_GOAL}; "
          f"errors: {err_total}")  # fmt: skip
    table(tuple(head), rows)


# ---------------------------------------------------------------------------------------
# 4. statements and fsyncs per charged query


def part_statements(ctx: Ctx, backends: list[str], n: int, n_fsync: int) -> None:  # noqa: C901 - a benchmark driver, read top to bottom
    from sqlalchemy import event

    from service.app import create_app

    print(f"\n## 4. Statements and fsyncs per charged query ({time.strftime('%H:%M:%S')}, "
          f"load {load()})")  # fmt: skip
    rows = []
    sequences: list[str] = []
    for backend in backends:
        url = ctx.sqlite_url("statements") if backend == "SQLite" else ctx.pg_url("statements")
        ((_, token),) = make_analysts(ctx, url, 1)
        app = create_app({"data_dir": ctx.data_dir, "database_url": url,
                          "settle_after_response": "on", "log_level": "WARNING"})  # fmt: skip
        engine = app.extensions["privtext"].engine
        seen: list[str] = []
        traced: list[str] = []

        def stmt(conn: Any, cur: Any, statement: str, *_: Any, seen: list[str] = seen) -> None:
            words = statement.split()
            seen.append("BEGIN IMMEDIATE" if words[:2] == ["BEGIN", "IMMEDIATE"]
                        else words[0].upper())  # fmt: skip

        event.listen(engine, "before_cursor_execute", stmt)
        event.listen(engine, "commit", lambda conn, seen=seen: seen.append("COMMIT"))
        event.listen(engine, "rollback", lambda conn, seen=seen: seen.append("ROLLBACK"))
        if backend == "SQLite":
            engine.dispose()  # new connections, each with a trace callback

            def trace(sql: str, traced: list[str] = traced) -> None:
                if not sql.lstrip().startswith("--"):  # "-- TRIGGER ..." lines
                    traced.append(sql)

            @event.listens_for(engine, "connect")
            def _trace(dbapi_conn: Any, _rec: Any) -> None:
                dbapi_conn.set_trace_callback(trace)

        client = app.test_client()
        h = {"Authorization": f"Bearer {token}"}
        per: dict[str, list[list[str]]] = {"before": [], "after": []}
        tr: dict[str, list[int]] = {"before": [], "after": []}
        last: dict[str, list[str]] = {}
        for i in range(-3, n):
            seen.clear()
            traced.clear()
            r = client.post("/v1/queries", json={"kind": "count", "confidence_level":
                                                 level(next(_k))}, headers=h)  # fmt: skip
            assert r.status_code == 200, r.get_json()
            before, tb = list(seen), len(traced)
            r.close()
            if i >= 0:
                per["before"].append(before)
                per["after"].append(seen[len(before) :])
                tr["before"].append(tb)
                tr["after"].append(len(traced) - tb)
                last = {"before": before, "after": seen[len(before) :]}
        engine.dispose()
        for when, label in (("before", "before the response"), ("after", "after (WSGI close)")):
            lists = per[when]
            cats = sorted({c for x in lists for c in x})
            parts = ", ".join(f"{statistics.median(x.count(c) for x in lists):g} {c}" for c in cats)
            rows.append(
                (
                    backend,
                    label,
                    f"{statistics.median(len(x) for x in lists):g}",
                    parts,
                    f"{statistics.median(tr[when]):g}" if backend == "SQLite" else "-",
                )
            )
        sequences.append(
            f"{backend}, last query: before: {' '.join(last['before'])} | "
            f"after: {' '.join(last['after'])}"
        )
    print(f"\nper charged count query, median of {n} (in-process, Flask test client, "
          "settle_after_response on, key cache on, warm); SQLAlchemy events count statements "
          "and COMMIT/ROLLBACK; the last column counts every statement sqlite3 ran (trace "
          "callback, COMMITs included)")  # fmt: skip
    table(("store", "when", "statements", "by kind", "sqlite3 trace"), rows)
    for line in sequences:
        print(line)
    if "PostgreSQL" in backends:
        print(
            "(PostgreSQL: psycopg opens each transaction with an implicit BEGIN, not an "
            "execute call: one per COMMIT or ROLLBACK)"
        )
    fsyncs(ctx, backends, n_fsync)


def _strace(pids: list[int], out: Path) -> subprocess.Popen[bytes]:
    argv = ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync,sync_file_range,syncfs",
            "-o", str(out)]  # fmt: skip
    for p in pids:
        argv += ["-p", str(p)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)  # attach
    return proc


def _strace_counts(proc: subprocess.Popen[bytes], out: Path) -> dict[str, int]:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and f[-1] in ("fsync", "fdatasync", "sync_file_range", "syncfs"):
            counts[f[-1]] = int(f[3])
    return counts


def _pg_pids(url: str) -> list[int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            datadir = conn.execute(text("SHOW data_directory")).scalar()
    finally:
        engine.dispose()
    master = int(Path(str(datadir), "postmaster.pid").read_text().split()[0])
    kids = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [master, *(int(k) for k in kids)]


def fsyncs(ctx: Ctx, backends: list[str], n: int) -> None:
    if shutil.which("strace") is None:
        print("\nfsyncs: strace is not installed (apt-get install strace); not measured")
        return
    rows = []
    for backend in backends:
        url = ctx.sqlite_url("fsync") if backend == "SQLite" else ctx.pg_url("fsync")
        ((_, token),) = make_analysts(ctx, url, 1)
        s = privtext_server(ctx, url, 2, f"fsync-{backend}")
        h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        try:
            for _ in range(6):  # warm: both workers
                post(s.port, "/v1/queries", priv_body({"kind": "count"}, next(_k)), h)
            if backend == "SQLite":
                pids, where = s.workers(), "gunicorn workers"
            else:
                try:
                    pids, where = _pg_pids(url), "PostgreSQL server processes"
                except Exception as exc:  # noqa: BLE001 - a remote or unreadable cluster
                    print(f"  {backend}: cannot find the server's processes ({exc!r})")
                    continue
            out = ctx.scratch / f"strace-{backend}.txt"
            proc = _strace(pids, out)
            for _ in range(n):
                status, body = post(s.port, "/v1/queries", priv_body({"kind": "count"},
                                                                      next(_k)), h)  # fmt: skip
                assert status == 200, body[:300]
            time.sleep(1.0)  # the settlements after the last responses
            counts = _strace_counts(proc, out)
        finally:
            s.stop()
        total = sum(counts.values())
        detail = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"
        rows.append((backend, where, str(n), detail, f"{total / n:.2f}"))
    print(
        f"\nfsync-family calls during {n} sequential charged count queries over HTTP "
        "(strace -f -c attached; settlements after the response included)"
    )
    table(("store", "traced", "queries", "calls", "per query"), rows)


# ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="built by bench/make_big_corpus.py")
    parser.add_argument("--postgres-url", default=os.environ.get("PRIVTEXT_TEST_POSTGRES_URL"))
    parser.add_argument(
        "--start-postgres",
        action="store_true",
        help="a throwaway durable cluster (fsync on) instead of --postgres-url",
    )
    parser.add_argument("--parts", default="latency,reserve,qps,statements")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter cells")
    parser.add_argument("--reps", type=int, default=15, help="latency rounds")
    parser.add_argument("--reserve-reps", type=int, default=200)
    parser.add_argument("--history", default="0,10000,100000")
    parser.add_argument("--qps-seconds", type=float, default=6.0)
    parser.add_argument("--qps-rounds", type=int, default=3)
    parser.add_argument("--workers", default="2,4")
    parser.add_argument("--clients", default="8,32")
    parser.add_argument("--load-procs", type=int, default=2)
    parser.add_argument("--statement-queries", type=int, default=20)
    parser.add_argument("--fsync-queries", type=int, default=200)
    args = parser.parse_args()
    if args.quick:
        args.reps, args.reserve_reps, args.qps_seconds, args.qps_rounds = 4, 40, 3.0, 1
        args.statement_queries, args.fsync_queries = 5, 40
    sys.path.insert(0, str(BENCH))
    parts = set(args.parts.split(","))

    t_all = time.perf_counter()
    ctx = Ctx(args)
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--short", "--", "service", "mechanisms", "models"], cwd=ROOT,
            capture_output=True, text=True,
        ).stdout.split("\n")  # fmt: skip
        dirty = [d.strip() for d in dirty if d.strip()]
        diff = subprocess.run(["git", "diff", "HEAD", "--", "service", "mechanisms", "models"],
                              cwd=ROOT, capture_output=True).stdout  # fmt: skip
        print(
            f"python {platform.python_version()}, cpus {len(os.sched_getaffinity(0))}, load "
            f"{load()}; commit {head}; uncommitted changes under service/ mechanisms/ models/ "
            f"in the working tree measured: {', '.join(dirty) or 'none'}"
            + (f" (diff sha256 {hashlib.sha256(diff).hexdigest()[:12]})" if dirty else "")
        )
        print(f"snapshot {ctx.snapshot.id} ({ctx.snapshot.source}); scratch {ctx.scratch}")
        backends = ["SQLite"]
        if args.start_postgres:
            url, ctx.pg_cluster, ctx.pg_datadir = start_cluster(ctx.scratch)
            ctx.pg_admin_url = url
            print("PostgreSQL: a throwaway cluster started by this run (server defaults)")
        elif args.postgres_url:
            ctx.pg_admin_url = args.postgres_url
        if ctx.pg_admin_url:
            backends.append("PostgreSQL")
            print(store_settings(ctx, ctx.pg_url("settings")) + " (as the service's sessions "
                  "see them)")  # fmt: skip
        else:
            print("PostgreSQL: no --postgres-url / $PRIVTEXT_TEST_POSTGRES_URL: skipped")
        print(store_settings(ctx, ctx.sqlite_url("settings")) + f" on {ctx.scratch}")
        from service.config import Settings

        os.environ["PRIVTEXT_QUERY_RATE_PER_MINUTE"] = str(RATE_PER_MINUTE)  # in-process apps
        rate = getattr(Settings.load({"data_dir": ctx.data_dir}), "query_rate_per_minute", None)
        print(
            f"per-analyst query rate limit: {rate} per minute (never reached; its count is still "
            "written on every query)"
            if rate is not None
            else "no query rate limit in this code"
        )
        if "latency" in parts:
            part_latency(ctx, args.reps)
        if "reserve" in parts:
            sizes = [int(x) for x in args.history.split(",")]
            part_reserve(ctx, backends, args.reserve_reps, sizes)
        if "qps" in parts:
            part_qps(ctx, backends, args.qps_seconds, args.qps_rounds,
                     [int(x) for x in args.workers.split(",")],
                     [int(x) for x in args.clients.split(",")], args.load_procs)  # fmt: skip
        if "statements" in parts:
            part_statements(ctx, backends, args.statement_queries, args.fsync_queries)
    finally:
        ctx.cleanup()
    print(f"\nload at the end {load()}; total {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
