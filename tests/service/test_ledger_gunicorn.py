"""Reliability under real gunicorn workers (SQLite and PostgreSQL state stores).

* 240 concurrent, distinct queries from one analyst through 4 worker processes with budget for
  exactly N of them: exactly N answers, the rest ``409 budget_exhausted`` with the remaining
  budget, and the ledger and audit log agree with the answers released.
* Workers killed with SIGKILL during a burst of queries: the ledger stays consistent (no
  release without a charge, the running spend equals its entries, within budget) and the
  service keeps answering.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Budget, Spend
from mechanisms.spend import within
from service.auth import create_principal, issue_key
from service.store.db import init_db, make_engine
from service.store.ledger import SqlLedger
from service.store.ledger_tables import audit_log, budgets, ledger_entries
from tests.procs import children, start_gunicorn

pytestmark = pytest.mark.gunicorn  # every test runs a gunicorn service

WORKERS = 4
EPS = 0.05


@dataclass
class Server:
    port: int
    proc: subprocess.Popen[bytes]
    engine: Engine

    def workers(self) -> list[int]:
        return children(self.proc.pid)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(state_url: str, data_dir: Path, ingested, tmp_path: Path) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    engine = make_engine(state_url)
    init_db(engine)
    port = _free_port()
    env = {
        **os.environ,
        "PRIVTEXT_DATA_DIR": str(data_dir),
        "PRIVTEXT_DATABASE_URL": state_url,
        "PRIVTEXT_LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }
    proc = start_gunicorn(env, port, WORKERS, tmp_path / "gunicorn.log")
    srv = Server(port, proc, engine)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if _get(srv, "/healthz")[0] == 200 and len(srv.workers()) >= WORKERS:
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("gunicorn did not start:\n" + (tmp_path / "gunicorn.log").read_text())
    yield srv
    proc.send_signal(signal.SIGINT)  # quick shutdown
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    engine.dispose()


def _get(srv: Server, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def _query(srv: Server, token: str, i: int) -> tuple[int, Any]:
    body = {
        "kind": "count",
        "privacy": {"epsilon": EPS},
        "max_messages_per_sender": 5,
        "confidence_level": round(0.5 + i / 1000, 3),  # distinct queries: no replays
    }
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    try:
        conn.request(
            "POST",
            "/v1/queries",
            body=json.dumps(body),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    except (OSError, http.client.HTTPException) as exc:  # a killed worker drops its connection
        return -1, repr(exc)
    finally:
        conn.close()


def _analyst(srv: Server, budget: Budget) -> tuple[str, str]:
    pid = create_principal(srv.engine, name="busy", role="analyst")
    SqlLedger(srv.engine).set_budget(pid, budget)
    return pid, issue_key(srv.engine, pid)


def _check_ledger(srv: Server, pid: str, budget: Budget) -> dict[str, int]:
    """Invariants that hold after any crash; returns the entries' status counts."""
    with srv.engine.connect() as conn:
        entries = conn.execute(
            select(ledger_entries).where(ledger_entries.c.principal_id == pid)
        ).all()
        audits = conn.execute(select(audit_log).where(audit_log.c.principal_id == pid)).all()
        stored = conn.execute(select(budgets.c.spend).where(budgets.c.principal_id == pid)).one()
    status = {e.id: e.status for e in entries}
    # every released answer names a reservation that is charged (reserved or committed)
    for a in audits:
        if a.status == "released":
            assert status[a.reservation_id] in ("reserved", "committed")
    # the running spend is exactly the sum over the charged entries
    charged = [e for e in entries if e.status != "refunded"]
    total = Spend()
    for e in charged:
        total = total + Spend.of(PrivacyEvent.from_dict(json.loads(e.event)))
    kept = Spend.from_dict(json.loads(stored.spend))
    assert kept.count == len(charged)
    assert kept.epsilon(budget.delta) == pytest.approx(total.epsilon(budget.delta), abs=1e-9)
    assert kept.epsilon(budget.delta) <= budget.epsilon + 1e-9
    return dict(Counter(status.values()))


def test_concurrent_queries_release_exactly_n(server: Server) -> None:
    total = 240
    budget = Budget(2.5, 1e-6)
    n = 0  # how many queries of EPS the budget affords, one after another (110 here)
    while within(Spend.total([PrivacyEvent.laplace(EPS)] * (n + 1)), 2.5, budget.delta):
        n += 1
    assert 50 < n < total
    left = budget.epsilon - Spend.total([PrivacyEvent.laplace(EPS)] * n).epsilon(budget.delta)
    pid, token = _analyst(server, budget)
    with ThreadPoolExecutor(max_workers=48) as pool:
        results = list(pool.map(lambda i: _query(server, token, i), range(total)))
    codes = Counter(code for code, _ in results)
    assert codes == {200: n, 409: total - n}, codes
    for code, body in results:
        if code == 409:
            assert body["code"] == "budget_exhausted"
            assert body["errors"]["remaining_epsilon"] == pytest.approx(left, abs=1e-9)
    answered = [body for code, body in results if code == 200]
    assert all(b["replay"] is False and b["cost"]["epsilon"] == EPS for b in answered)
    assert len({b["audit_id"] for b in answered}) == n

    assert _check_ledger(server, pid, budget) == {"committed": n}
    with server.engine.connect() as conn:
        audit_statuses = Counter(
            r.status
            for r in conn.execute(select(audit_log.c.status).where(audit_log.c.principal_id == pid))
        )
    assert audit_statuses == {"released": n, "refused": total - n}
    assert SqlLedger(server.engine).remaining(pid, tight=False).spent_epsilon == pytest.approx(
        Spend.total([PrivacyEvent.laplace(EPS)] * n).epsilon(budget.delta), abs=1e-9
    )


def test_sigkilled_workers_leave_a_consistent_ledger(server: Server) -> None:
    budget = Budget(1000.0, 1e-6)
    pid, token = _analyst(server, budget)
    total = 300
    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(_query, server, token, i) for i in range(total)]
        killed = []
        # kill a worker four times while the burst is running: a kill can land while the
        # worker settles an answer it has already sent (after the response), losing nothing,
        # so two kills left no request in flight in about a third of the runs
        for at in (40, 100, 160, 220):
            while sum(f.done() for f in futures) < at:
                time.sleep(0.005)
            victim = server.workers()[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
        results = [f.result() for f in futures]
    codes = Counter(code for code, _ in results)
    assert set(codes) <= {200, -1}, codes
    assert codes[-1] >= 1, "no request was in flight on the killed workers"

    counts = _check_ledger(server, pid, budget)
    # every answer the clients received is charged: committed, or still reserved when its
    # worker was killed after sending it but before the settlement that follows the response
    # (the reservation is written durably before the answer leaves); the ones lost with a
    # killed worker are charged too, never refunded
    assert counts.get("committed", 0) + counts.get("reserved", 0) >= codes[200]
    assert counts.get("refunded", 0) == 0
    assert sum(counts.values()) >= codes[200]
    assert sum(counts.values()) <= total

    # the master replaced the workers and the service keeps answering
    deadline = time.monotonic() + 30
    while len(set(server.workers()) - set(killed)) < WORKERS and time.monotonic() < deadline:
        time.sleep(0.1)
    after = [_query(server, token, 400 + i) for i in range(8)]
    assert [code for code, _ in after] == [200] * 8
    _check_ledger(server, pid, budget)
