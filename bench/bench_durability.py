"""Benchmark: what a durable charge costs. One charged query in process (Flask test client,
the whole ``POST /v1/queries`` path: auth, price, reserve, compute, audit, commit) with the
SQLite state store at ``synchronous=FULL`` (the service's setting: the WAL is fsynced at every
commit) against the same with ``synchronous=NORMAL`` (the baseline: no fsync at commit, which
an OS crash or a failing disk can roll back), interleaved in the same run.

Usage:
  .venv/bin/python bench/make_big_corpus.py /tmp/privtext-big      # once: 1,000,000 messages
  .venv/bin/python bench/bench_durability.py --data-dir /tmp/privtext-big [--reps 200]
        [--state-dir DIR]

The corpus is read from ``--data-dir``; the two state databases (``full.db``, ``normal.db``)
are made fresh in ``--state-dir`` (default: a new directory under ``--data-dir``, i.e. on the
same disk as a service's ``state.db`` would be). Each rep sends one distinct count (epsilon
1 + i * 1e-6: never a replay) to each app, the order alternating between reps. Printed: the
medians and 90th percentiles, FULL / NORMAL, the commits (write transactions) per query, and
the cost of one fsync after a 4 KiB write (in place, and appended) on that disk alone. Work
the service defers until after the response (the settlement) is not in the timings; its
commits are in the count.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import event, func, select

from mechanisms.ledger import Budget
from service.accounts import Accounts
from service.app import create_app
from service.auth import create_principal, issue_key
from service.charging import get_ledger
from service.store.db import make_engine
from service.store.ledger import SqlLedger
from service.store.ledger_tables import audit_log

#: Commits counted on each mode's engine, by mode.
COMMITS: dict[str, list[int]] = {}


def _app(data_dir: str, db_path: Path, synchronous: str) -> Flask:
    app = create_app(
        {"data_dir": data_dir, "database_url": f"sqlite:///{db_path}", "log_level": "WARNING"}
    )
    svc = app.extensions["privtext"]
    if synchronous != "FULL":
        svc.engine.dispose()
        engine = make_engine(f"sqlite:///{db_path}")

        @event.listens_for(engine, "connect")
        def _baseline(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.execute(f"PRAGMA synchronous={synchronous}")

        svc.engine = engine
        svc.ledger = SqlLedger(engine)
        svc.accounts = Accounts(engine, svc.ledger)
    commits = COMMITS[synchronous] = [0]

    @event.listens_for(svc.engine, "commit")
    def _count(_conn):  # type: ignore[no-untyped-def]
        commits[0] += 1

    with svc.engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    assert mode == {"FULL": 2, "NORMAL": 1, "OFF": 0}[synchronous], mode
    return app


def _token(app: Flask) -> str:
    engine = app.extensions["privtext"].engine
    pid = create_principal(engine, name="bench", role="analyst")
    with app.app_context():
        get_ledger().set_budget(pid, Budget(epsilon=1e9, delta=1e-6))
    return issue_key(engine, pid)


def _fsync_ms(directory: Path, *, append: bool, n: int = 200) -> float:
    """Median ms of one fsync after a 4 KiB write: in place, or appended (the file grows, so
    the filesystem's journal commits too, as when SQLite's WAL grows)."""
    fd, name = tempfile.mkstemp(dir=directory)
    try:
        times = []
        for i in range(n):
            os.pwrite(fd, b"\0" * 4096, 4096 * i if append else 0)
            t = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1000
    finally:
        os.close(fd)
        os.unlink(name)


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, help="an ingested corpus (make_big_corpus.py)")
    ap.add_argument("--state-dir", default="", help="where the two state databases go")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args()

    state_dir = Path(
        args.state_dir or tempfile.mkdtemp(prefix="bench-durability-", dir=args.data_dir)
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    modes = ("FULL", "NORMAL")
    apps = {m: _app(args.data_dir, state_dir / f"{m.lower()}.db", m) for m in modes}
    clients = {m: apps[m].test_client() for m in modes}
    headers = {m: {"Authorization": f"Bearer {_token(apps[m])}"} for m in modes}
    times: dict[str, list[float]] = {m: [] for m in modes}
    commits: dict[str, int] = dict.fromkeys(modes, 0)

    def one(mode: str, i: int, record: bool) -> None:
        body: dict[str, Any] = {"kind": "count", "privacy": {"epsilon": 1 + i * 1e-6}}
        counter = COMMITS[mode]
        before = counter[0]
        t = time.perf_counter()
        resp = clients[mode].post("/v1/queries", json=body, headers=headers[mode])
        answer = resp.get_json()
        elapsed = time.perf_counter() - t
        # the answer has left; work deferred until after the response (the settlement, when
        # ``settle_after_response`` is on) runs now, as a server would before its next request
        resp.close()
        assert resp.status_code == 200, answer
        assert answer["replay"] is False
        if record:
            times[mode].append(elapsed * 1000)
            commits[mode] += counter[0] - before

    for i in range(args.warmup):
        for mode in modes:
            one(mode, i, record=False)
    for i in range(args.warmup, args.warmup + args.reps):
        for mode in modes if i % 2 else reversed(modes):
            one(mode, i, record=True)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"state databases in {state_dir}; corpus {args.data_dir}")
    print(
        f"fsync after a 4 KiB write there, alone (median): in place "
        f"{_fsync_ms(state_dir, append=False):.3f} ms, appended "
        f"{_fsync_ms(state_dir, append=True):.3f} ms"
    )
    print(f"{args.reps} charged counts per mode, interleaved (ms):")
    print(f"{'synchronous':<12} {'median':>8} {'p90':>8} {'mean':>8} {'commits/query':>14}")
    for mode in modes:
        ts = times[mode]
        print(
            f"{mode:<12} {statistics.median(ts):8.3f} {_pct(ts, 0.9):8.3f} "
            f"{statistics.fmean(ts):8.3f} {commits[mode] / args.reps:14.2f}"
        )
    full, normal = statistics.median(times["FULL"]), statistics.median(times["NORMAL"])
    print(f"FULL / NORMAL (median): {full / normal:.3f}x  (+{full - normal:.3f} ms per query)")
    for mode, app in apps.items():
        engine = app.extensions["privtext"].engine
        with engine.connect() as conn:
            audited = conn.execute(
                select(func.count()).select_from(audit_log).where(audit_log.c.status == "released")
            ).scalar_one()
        assert audited == args.warmup + args.reps, (mode, audited)  # every answer settled
        engine.dispose()


if __name__ == "__main__":
    main()
