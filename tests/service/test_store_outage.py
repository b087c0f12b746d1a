"""Faults of the state store are honest: bounded in time, ``503 store_unavailable`` in the
JSON envelope, nothing released and nothing charged.

* the store refuses connections, or accepts them and never answers (connect timeout), during
  authentication;
* the store is up but a writer holds the lock the reservation needs for longer than the
  statement timeout (SQLite busy timeout; PostgreSQL ``statement_timeout``), on each backend;
* a PostgreSQL cluster of its own is frozen with SIGSTOP (every process) for longer than the
  statement timeout: the server cannot enforce its timeout, the client gives up on its own,
  the answer and ``/readyz`` are 503 within the bounds, and after SIGCONT the service answers
  again, with nothing charged for the frozen request.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, func, select, text

from mechanisms.ledger import Budget
from service.app import create_app
from service.auth import create_principal, issue_key
from service.charging import get_ledger
from service.store.db import make_engine
from service.store.ledger_tables import audit_log, ledger_entries
from tests.procs import children
from tests.service_scripts import start, stop

QUERY = {"kind": "count", "privacy": {"epsilon": 0.1}, "max_messages_per_sender": 5}


def _fund(app: Flask) -> tuple[str, str]:
    engine = app.extensions["privtext"].engine
    pid = create_principal(engine, name="ana", role="analyst")
    with app.app_context():
        get_ledger().set_budget(pid, Budget(epsilon=100.0, delta=1e-6))
    return pid, issue_key(engine, pid)


def _post(app: Flask, token: str, body: dict[str, Any] = QUERY) -> tuple[int, dict[str, Any]]:
    resp = app.test_client().post(
        "/v1/queries", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    return resp.status_code, resp.get_json()


def _assert_store_unavailable(status: int, body: dict[str, Any]) -> None:
    assert status == 503, body
    assert body["code"] == "store_unavailable"
    assert body["status"] == 503
    assert set(body) >= {"code", "status", "message", "errors"}
    assert "count" not in body and "value" not in body


def _charges(engine: Engine, pid: str) -> tuple[int, int]:
    """(ledger entries, released audit rows) of ``pid``."""
    with engine.connect() as conn:
        entries = conn.execute(
            select(func.count())
            .select_from(ledger_entries)
            .where(ledger_entries.c.principal_id == pid)
        ).scalar_one()
        released = conn.execute(
            select(func.count())
            .select_from(audit_log)
            .where(audit_log.c.principal_id == pid, audit_log.c.status == "released")
        ).scalar_one()
    return int(entries), int(released)


# -- outage during authentication ---------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that completes TCP handshakes and then never says a word (a hung database)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


@pytest.mark.seconds
@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_store_outage_during_auth_is_503(
    app: Flask, kind: str, request: pytest.FixtureRequest
) -> None:
    _, token = _fund(app)
    svc = app.extensions["privtext"]
    port = _closed_port() if kind == "refused" else request.getfixturevalue("silent_server")
    svc.engine = make_engine(
        f"postgresql+psycopg://nobody@127.0.0.1:{port}/db", connect_timeout_s=2
    )
    try:
        started = time.monotonic()
        status, body = _post(app, token)
        _assert_store_unavailable(status, body)
        assert time.monotonic() - started < 6  # connect timeout (2 s), not a hang
        resp = app.test_client().get("/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
        ready = app.test_client().get("/readyz")
        assert ready.status_code == 503
        assert ready.get_json()["errors"]["checks"]["state_store"] is False
    finally:
        svc.engine.dispose()


# -- a writer holds the lock the reservation needs past the statement timeout --------------


@pytest.fixture
def timeout_app(state_url: str, data_dir: Path, ingested) -> Iterator[Flask]:  # type: ignore[no-untyped-def]
    """The app over each backend with a short statement (and busy) timeout."""
    application = create_app(
        {
            "data_dir": str(data_dir),
            "database_url": state_url,
            "testing": True,
            "db_statement_timeout_ms": 300,
        }
    )
    yield application
    application.extensions["privtext"].engine.dispose()


def test_store_locked_during_reserve_is_503_and_nothing_is_charged(
    timeout_app: Flask, state_url: str
) -> None:
    app = timeout_app
    pid, token = _fund(app)
    engine = app.extensions["privtext"].engine
    holder = make_engine(state_url)
    try:
        with holder.connect().execution_options(immediate=True) as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                # plain reads go on (authentication); any write of a reservation waits
                conn.execute(text("LOCK TABLE budgets, ledger_entries IN EXCLUSIVE MODE"))
            # (SQLite: BEGIN IMMEDIATE holds the one write lock)
            started = time.monotonic()
            status, body = _post(app, token)
            waited = time.monotonic() - started
        _assert_store_unavailable(status, body)
        assert waited < 5
        assert _charges(engine, pid) == (0, 0)
        # the lock is gone: the same query is answered and charged once
        status, body = _post(app, token)
        assert status == 200, body
        assert _charges(engine, pid) == (1, 1)
    finally:
        holder.dispose()


@pytest.mark.postgres
def test_postgres_sessions_are_durable_and_bounded(pg_database_url: str) -> None:
    """The test cluster runs with synchronous_commit=off; the service's sessions turn it on
    and carry the configured statement timeout, whatever the server's defaults."""
    engine = make_engine(pg_database_url, statement_timeout_ms=1234)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW synchronous_commit")).scalar_one() == "on"
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "1234ms"
    finally:
        engine.dispose()


# -- a frozen PostgreSQL ------------------------------------------------------------------


class Cluster:
    """A throwaway PostgreSQL cluster of this test alone (scripts/test-services.sh)."""

    def __init__(self, url: str, datadir: str) -> None:
        self.url, self.datadir = url, datadir

    def pids(self) -> list[int]:
        """The postmaster and every process it forked (backends, checkpointer, ...)."""
        master = int(Path(self.datadir, "postmaster.pid").read_text().split()[0])
        return [master, *children(master)]

    def signal(self, sig: int) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    if os.environ.get("PRIVTEXT_TEST_NO_AUTOSTART"):
        pytest.skip("PRIVTEXT_TEST_NO_AUTOSTART is set: no cluster of its own to freeze")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVTEXT_TEST_POSTGRES")}
    found = start("postgres", "PRIVTEXT_TEST_POSTGRES_URL", "a PostgreSQL cluster to freeze", env)
    cluster = Cluster(found["PRIVTEXT_TEST_POSTGRES_URL"], found["PRIVTEXT_TEST_POSTGRES_DATADIR"])
    try:
        yield cluster
    finally:
        cluster.signal(signal.SIGCONT)
        stop("stop", cluster.datadir)


@pytest.mark.postgres
def test_frozen_postgres_answers_503_in_bounded_time(
    own_cluster: Cluster, data_dir: Path, ingested
) -> None:  # type: ignore[no-untyped-def]
    statement_s, connect_s = 1.0, 2
    app = create_app(
        {
            "data_dir": str(data_dir),
            "database_url": own_cluster.url,
            "testing": True,
            "db_statement_timeout_ms": int(statement_s * 1000),
            "db_connect_timeout_s": connect_s,
        }
    )
    engine = app.extensions["privtext"].engine
    try:
        pid, token = _fund(app)
        status, body = _post(app, token)
        assert status == 200, body
        frozen = {**QUERY, "confidence_level": 0.9}
        # the statement timeout, then the client's own limit, then one reconnect attempt
        bound = statement_s + 1.0 + connect_s + 2.0

        own_cluster.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            status, body = _post(app, token, frozen)
            took = time.monotonic() - started
            _assert_store_unavailable(status, body)
            assert took < bound, f"took {took:.1f} s"
            started = time.monotonic()
            ready = app.test_client().get("/readyz")
            assert ready.status_code == 503
            assert ready.get_json()["errors"]["checks"]["state_store"] is False
            assert time.monotonic() - started < bound
        finally:
            own_cluster.signal(signal.SIGCONT)

        # the database is back: the service answers, and the frozen request charged nothing
        deadline = time.monotonic() + 30
        while True:
            status, body = _post(app, token, frozen)
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status == 200, body
        assert app.test_client().get("/readyz").status_code == 200
        assert _charges(engine, pid) == (2, 2)
    finally:
        engine.dispose()
