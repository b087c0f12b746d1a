"""The charged hot path: one write transaction before the answer leaves, nothing that grows
with the analyst's history, and short-lived caches of what a request only reads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event

from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Budget
from service.app import create_app
from service.auth import create_principal, issue_key, revoke_key
from service.charging import get_ledger


@pytest.fixture
def served(data_dir: Path, ingested: Any) -> Iterator[Flask]:
    """An app configured as it serves HTTP: settlement after the response, keys cached."""
    app = create_app(
        {
            "data_dir": str(data_dir),
            "testing": True,
            "settle_after_response": "on",
            "key_cache_s": 60,
        }
    )
    yield app
    app.extensions["privtext"].engine.dispose()


def _analyst(app: Flask) -> tuple[str, str]:
    engine = app.extensions["privtext"].engine
    pid = create_principal(engine, name="ana", role="analyst")
    with app.app_context():
        get_ledger().set_budget(pid, Budget(epsilon=1e6, delta=1e-5))
    return pid, issue_key(engine, pid)


class Statements:
    """Every SQL statement and transaction begin on an engine, in order."""

    def __init__(self, app: Flask) -> None:
        self.seen: list[str] = []
        engine = app.extensions["privtext"].engine
        event.listen(engine, "before_cursor_execute", self._stmt)
        event.listen(engine, "commit", self._commit)

    def _stmt(self, conn: Any, cur: Any, statement: str, *_: Any) -> None:
        self.seen.append(" ".join(statement.split()))

    def _commit(self, conn: Any) -> None:
        self.seen.append("COMMIT")


def _on_path(app: Flask, token: str, body: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Statements before the response was handed over, and after it was closed."""
    stmts = Statements(app)
    resp = app.test_client().post(
        "/v1/queries", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 200, resp.get_json()
    before = list(stmts.seen)
    resp.close()
    return before, stmts.seen[len(before) :]


def _writes(stmts: list[str]) -> list[str]:
    return [s for s in stmts if s.split()[0] in ("INSERT", "UPDATE", "DELETE")]


def test_one_write_transaction_before_the_answer(served: Flask) -> None:
    _, token = _analyst(served)
    _on_path(served, token, {"kind": "count", "confidence_level": 0.9})  # warm the key cache
    before, after = _on_path(served, token, {"kind": "count"})
    # one transaction: the rate-limit count, the claim, both spends, the entry; its commit
    assert [s.split()[0] for s in _writes(before)] == [
        "UPDATE",
        "INSERT",
        "UPDATE",
        "INSERT",
        "UPDATE",
    ], before
    assert "rate_windows" in _writes(before)[0] and "query_claims" in _writes(before)[1]
    assert before.count("COMMIT") == 1, before
    assert before[0] == "BEGIN IMMEDIATE" and before[-1] == "COMMIT", before
    assert len(before) <= 11, before
    # nothing on the path reads the history
    assert not any("FROM ledger_entries" in s for s in before), before
    # after the response: one transaction (commit the entry, the audit row, the claim)
    assert [s.split()[0] for s in _writes(after)] == ["UPDATE", "INSERT", "DELETE"]
    assert after.count("COMMIT") == 1


def test_only_the_charge_waits_for_the_disk(served: Flask) -> None:
    """The reservation commits with ``synchronous=FULL`` (an fsync before the answer leaves);
    the settlement after the response with ``NORMAL`` (lost in an OS crash, it leaves the
    entry reserved: charged all the same), and the connection gets FULL back."""
    _, token = _analyst(served)
    _on_path(served, token, {"kind": "count", "confidence_level": 0.9})
    engine = served.extensions["privtext"].engine
    levels: list[int] = []

    def level(conn: Any) -> None:
        raw = conn.connection.driver_connection
        levels.append(raw.execute("PRAGMA synchronous").fetchone()[0])

    event.listen(engine, "commit", level)
    try:
        _on_path(served, token, {"kind": "count"})
    finally:
        event.remove(engine, "commit", level)
    assert levels == [2, 1]  # FULL, then NORMAL
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2


@pytest.mark.seconds
def test_admission_does_not_grow_with_history(served: Flask) -> None:
    """The same statements, none scanning the history, at 0 and at 2,000 ledger entries."""
    pid, token = _analyst(served)
    _on_path(served, token, {"kind": "count", "confidence_level": 0.9})  # warm the key cache
    first, _ = _on_path(served, token, {"kind": "count", "confidence_level": 0.91})
    with served.app_context():
        ledger = get_ledger()
        for _ in range(2000):
            ledger.reserve(pid, PrivacyEvent.laplace(0.001))
    later, _ = _on_path(served, token, {"kind": "count", "confidence_level": 0.92})
    assert [s.split()[0] for s in first] == [s.split()[0] for s in later]
    assert not any("ledger_entries" in s and s.startswith("SELECT") for s in later)


def test_key_lookups_are_reused_briefly_and_never_for_a_wrong_secret(served: Flask) -> None:
    pid, token = _analyst(served)
    client = served.test_client()
    stmts = Statements(served)
    assert client.get("/v1/budget", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.get("/v1/budget", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert sum("api_keys" in s for s in stmts.seen) == 1
    wrong = token[:-4] + ("0000" if not token.endswith("0000") else "1111")
    assert client.get("/v1/budget", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401


def test_a_revoked_key_is_refused_once_the_cache_expires(data_dir: Path, ingested: Any) -> None:
    app = create_app({"data_dir": str(data_dir), "testing": True, "key_cache_s": 1})
    _, token = _analyst(app)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/v1/budget", headers=headers).status_code == 200
    revoke_key(app.extensions["privtext"].engine, token.split("_")[1])
    time.sleep(1.1)
    assert client.get("/v1/budget", headers=headers).status_code == 401
    app.extensions["privtext"].engine.dispose()


def test_tests_and_default_settings(data_dir: Path, ingested: Any) -> None:
    from service.config import Settings

    assert Settings.load({"data_dir": str(data_dir)}).settles_after_response is True
    assert Settings.load({"data_dir": str(data_dir)}).key_cache_seconds == 2.0
    testing = Settings.load({"data_dir": str(data_dir), "testing": True})
    assert testing.settles_after_response is False and testing.key_cache_seconds == 0.0
