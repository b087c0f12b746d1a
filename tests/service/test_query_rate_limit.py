"""The per-analyst rate limit on ``POST /v1/queries``: 429 ``rate_limited`` in the envelope with
Retry-After, decided before anything is charged, read or audited; one window per analyst,
shared by every worker (two apps on one state store stand for two gunicorn workers); off at 0.
A rate-limit count commits without an fsync and leaves the connection's durability as it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, event, func, select

from mechanisms.ledger import Budget
from service.app import create_app
from service.auth import create_principal, issue_key
from service.store import ratelimit
from service.store.db import make_engine
from service.store.ledger import SqlLedger
from service.store.ledger_tables import audit_log, ledger_entries
from tests.fixtures.app import bearer


@pytest.fixture
def apps(data_dir: Path, ingested: Any) -> Iterator[list[Flask]]:
    """Two apps (two workers) on one data directory, 3 queries per analyst per minute."""
    made = [
        create_app({"data_dir": str(data_dir), "testing": True, "query_rate_per_minute": 3})
        for _ in range(2)
    ]
    yield made
    for app in made:
        app.extensions["privtext"].engine.dispose()


def _analyst(app: Flask, name: str) -> tuple[str, dict[str, str]]:
    engine = app.extensions["privtext"].engine
    pid = create_principal(engine, name=name, role="analyst")
    SqlLedger(engine).set_budget(pid, Budget(epsilon=10.0, delta=1e-6))
    return pid, bearer(issue_key(engine, pid))


def _count(engine: Engine, table: Any, pid: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(table).where(table.c.principal_id == pid)
            ).scalar_one()
        )


def test_queries_over_the_limit_get_429_and_cost_nothing(apps: list[Flask]) -> None:
    worker_a, worker_b = apps
    engine = worker_a.extensions["privtext"].engine
    pid, h = _analyst(worker_a, "busy")
    a, b = worker_a.test_client(), worker_b.test_client()
    assert a.post("/v1/queries", json={"kind": "count"}, headers=h).status_code == 200
    dry = {"kind": "count", "dry_run": True}
    assert b.post("/v1/queries", json=dry, headers=h).status_code == 200
    assert a.post("/v1/queries", json={"kind": "count"}, headers=h).status_code == 200  # a replay
    entries, audited = _count(engine, ledger_entries, pid), _count(engine, audit_log, pid)
    spent = SqlLedger(engine).remaining(pid, tight=False).spent_epsilon

    r = b.post("/v1/queries", json={"kind": "count", "privacy": {"epsilon": 0.7}}, headers=h)
    assert r.status_code == 429, r.json
    assert r.json["code"] == "rate_limited" and r.json["status"] == 429
    assert "queries for this analyst" in r.json["message"]
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.json["errors"]["retry_after"] == int(r.headers["Retry-After"])
    # nothing reserved, charged or audited for it
    assert _count(engine, ledger_entries, pid) == entries
    assert _count(engine, audit_log, pid) == audited
    assert SqlLedger(engine).remaining(pid, tight=False).spent_epsilon == pytest.approx(spent)

    # Another analyst has a window of their own.
    _, other = _analyst(worker_b, "calm")
    assert b.post("/v1/queries", json={"kind": "count"}, headers=other).status_code == 200


def test_a_refused_budget_is_rate_limited_too(apps: list[Flask]) -> None:
    """What the limit is for: an analyst with no budget cannot grow the audit log without
    bound (each refusal writes a row; beyond the limit nothing is written)."""
    app = apps[0]
    engine = app.extensions["privtext"].engine
    pid = create_principal(engine, name="broke", role="analyst")
    SqlLedger(engine).set_budget(pid, Budget(epsilon=0.01, delta=1e-6))
    h = bearer(issue_key(engine, pid))
    c = app.test_client()
    codes = [c.post("/v1/queries", json={"kind": "count", "privacy": {"epsilon": 1.0},
                                         "confidence_level": 0.5 + i / 100}, headers=h).status_code
             for i in range(6)]
    assert codes == [409, 409, 409, 429, 429, 429]
    assert _count(engine, audit_log, pid) == 3


def test_invalid_requests_are_not_counted(apps: list[Flask]) -> None:
    c = apps[0].test_client()
    _, h = _analyst(apps[0], "sloppy")
    for _ in range(4):
        assert c.post("/v1/queries", json={"kind": "nope"}, headers=h).status_code == 422
    assert c.post("/v1/queries", json={"kind": "count"}, headers=h).status_code == 200


def test_zero_means_no_limit(data_dir: Path, ingested: Any) -> None:
    app = create_app({"data_dir": str(data_dir), "testing": True, "query_rate_per_minute": 0})
    try:
        c = app.test_client()
        _, h = _analyst(app, "free")
        body = {"kind": "count", "dry_run": True}
        assert [c.post("/v1/queries", json=body, headers=h).status_code for _ in range(5)] == [
            200
        ] * 5
    finally:
        app.extensions["privtext"].engine.dispose()


def test_the_default_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.config import Settings

    monkeypatch.delenv("PRIVTEXT_QUERY_RATE_PER_MINUTE", raising=False)
    assert Settings.load().query_rate_per_minute == 600
    monkeypatch.setenv("PRIVTEXT_QUERY_RATE_PER_MINUTE", "30")
    assert Settings.load().query_rate_per_minute == 30


def test_a_count_skips_the_fsync_and_restores_the_setting(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")

    @event.listens_for(engine, "connect")
    def _full(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.execute("PRAGMA synchronous=FULL")  # as a durable ledger would set it

    ratelimit.create_tables(engine)
    seen: list[int] = []

    @event.listens_for(engine, "commit")
    def _level(conn):  # type: ignore[no-untyped-def]
        seen.append(conn.connection.driver_connection.execute("PRAGMA synchronous").fetchone()[0])

    ratelimit.hit_queries(engine, "an_1", 5)
    ratelimit.hit_queries(engine, "an_1", 5)
    assert seen == [1, 1]  # NORMAL: in WAL mode, no fsync at commit and no risk of corruption
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL again
        row = conn.execute(select(ratelimit.rate_windows)).one()
    assert (row.key_id, row.bucket, row.requests) == ("an_1", "queries", 2)
    engine.dispose()


def test_two_first_counts_at_once_do_not_fail(state_engine: Engine) -> None:
    """A key's first row is inserted with ON CONFLICT DO NOTHING inside the caller's
    transaction: a second first count that races it waits for it and counts on its row
    (PostgreSQL; on SQLite the write lock orders them), instead of failing the transaction."""
    import threading

    from service.store import writes

    ratelimit.create_tables(state_engine)
    counter = ratelimit.queries_counter("an_race", 10)
    assert counter is not None
    errors: list[BaseException] = []
    started = threading.Event()

    def second() -> None:
        started.set()
        try:
            counter.hit(state_engine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with writes.write(state_engine) as conn:
        counter.take(conn)  # the first row, not yet committed
        t = threading.Thread(target=second)
        t.start()
        started.wait(5)
        t.join(0.3)  # the second count waits on the first's row (or write lock)
    t.join(10)
    assert not t.is_alive() and errors == []
    with state_engine.connect() as conn:
        row = conn.execute(select(ratelimit.rate_windows)).one()
    assert (row.key_id, row.requests) == ("an_race", 2)
