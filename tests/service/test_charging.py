"""``run_charged``: charge before release, replay, dry run, refund, exhausted budget, audit."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from mechanisms.errors import BudgetExhaustedError
from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Budget
from service.auth import create_principal
from service.charging import QUERY_FAILED, get_ledger, run_charged
from service.errors import APIError
from service.store import audit
from service.store.ledger_tables import audit_log

EVENT = PrivacyEvent.laplace(0.3)
QUERY = {"kind": "count", "filters": {"channel": "web"}, "level": 0.95}


class Compute:
    """A compute step that records its calls and checks it runs after the reservation."""

    def __init__(self, app: Flask, pid: str, fail: bool = False) -> None:
        self.app, self.pid, self.fail, self.calls = app, pid, fail, 0

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        rem = get_ledger().remaining(self.pid, tight=False)
        assert rem.reserved == 1, "compute ran before the reservation"
        if self.fail:
            raise RuntimeError("corpus unavailable")
        return {"kind": "count", "value": 41 + self.calls, "interval": [30, 52]}


@pytest.fixture
def analyst(backend_app: Flask) -> str:
    engine = backend_app.extensions["privtext"].engine
    pid = create_principal(engine, name="ana", role="analyst")
    with backend_app.app_context():
        get_ledger().set_budget(pid, Budget(1.0, 1e-6))
    return pid


def _run(app: Flask, pid: str, compute: Compute, **kw: Any) -> dict[str, Any]:
    kw.setdefault("query", QUERY)
    kw.setdefault("snapshot_id", "snap-1")
    kw.setdefault("event", EVENT)
    with app.app_context():
        return run_charged(pid, compute=compute, **kw)


def _audit(app: Flask) -> list[str]:
    with app.extensions["privtext"].engine.connect() as conn:
        return [r.status for r in conn.execute(select(audit_log.c.status).order_by(audit_log.c.id))]


def test_release_is_charged_committed_and_audited(backend_app: Flask, analyst: str) -> None:
    compute = Compute(backend_app, analyst)
    out = _run(backend_app, analyst, compute)
    assert compute.calls == 1
    assert out["value"] == 42 and out["replay"] is False and out["dry_run"] is False
    assert out["cost"]["epsilon"] == pytest.approx(0.3)
    assert out["budget"]["remaining_epsilon"] == pytest.approx(0.7)
    with backend_app.app_context():
        rem = get_ledger().remaining(analyst)
        assert (rem.reserved, rem.committed) == (0, 1)
    rows = audit.entries(backend_app.extensions["privtext"].engine, principal_id=analyst)
    assert [r["status"] for r in rows] == ["released"]
    assert rows[0]["query"] == QUERY and rows[0]["released"]["value"] == 42
    assert rows[0]["cost"]["epsilon"] == pytest.approx(0.3)


def test_identical_query_is_replayed_free(backend_app: Flask, analyst: str) -> None:
    compute = Compute(backend_app, analyst)
    first = _run(backend_app, analyst, compute)
    reordered = {"level": 0.95, "filters": {"channel": "web"}, "kind": "count"}
    again = _run(backend_app, analyst, compute, query=reordered)
    assert compute.calls == 1
    assert again["replay"] is True and again["cost"]["epsilon"] == 0.0
    assert again["value"] == first["value"]
    assert again["budget"]["remaining_epsilon"] == pytest.approx(0.7)
    assert _audit(backend_app) == ["released", "replay"]
    # any change to the query, or another snapshot, is a new query and is charged
    _run(backend_app, analyst, compute, query={**QUERY, "level": 0.9})
    _run(backend_app, analyst, compute, snapshot_id="snap-2")
    assert compute.calls == 3


def test_replays_are_per_analyst(backend_app: Flask, analyst: str) -> None:
    engine = backend_app.extensions["privtext"].engine
    other = create_principal(engine, name="bob", role="analyst")
    with backend_app.app_context():
        get_ledger().set_budget(other, Budget(1.0, 1e-6))
    _run(backend_app, analyst, Compute(backend_app, analyst))
    out = _run(backend_app, other, Compute(backend_app, other))
    assert out["replay"] is False and out["cost"]["epsilon"] > 0


def test_dry_run_prices_without_charging_or_computing(backend_app: Flask, analyst: str) -> None:
    compute = Compute(backend_app, analyst)
    out = _run(backend_app, analyst, compute, dry_run=True, predicted={"half_width": 9.9})
    assert compute.calls == 0
    assert out["dry_run"] is True and out["affordable"] is True
    assert out["cost"]["epsilon"] == pytest.approx(0.3)
    assert out["predicted"] == {"half_width": 9.9}
    with backend_app.app_context():
        assert get_ledger().history(analyst) == []
    assert _audit(backend_app) == []


def test_exhausted_budget_refuses_before_computing(backend_app: Flask, analyst: str) -> None:
    compute = Compute(backend_app, analyst)
    for level in (0.9, 0.95, 0.99):
        _run(backend_app, analyst, compute, query={**QUERY, "level": level})
    with pytest.raises(BudgetExhaustedError) as exc:
        _run(backend_app, analyst, compute, query={**QUERY, "level": 0.5})
    assert compute.calls == 3
    assert exc.value.remaining_epsilon == pytest.approx(0.1)
    assert _audit(backend_app)[-1] == "refused"
    assert not _run(backend_app, analyst, compute, dry_run=True, query={"x": 1})["affordable"]


@pytest.mark.parametrize(
    "error", [RuntimeError("corpus unavailable"), MemoryError(), OverflowError("int64")]
)
def test_compute_failure_is_charged_with_one_fixed_error(
    backend_app: Flask, analyst: str, error: BaseException
) -> None:
    """A failure after the reservation could depend on the data: it is charged, audited as
    failed, and answered by one fixed error that says nothing about what failed."""

    def failing() -> dict[str, Any]:
        raise error

    with pytest.raises(APIError) as exc:
        _run(backend_app, analyst, failing)  # type: ignore[arg-type]
    assert (exc.value.status, exc.value.code) == QUERY_FAILED[:2]
    assert exc.value.message == QUERY_FAILED[2] and exc.value.errors == {}
    with backend_app.app_context():
        rem = get_ledger().remaining(analyst)
        assert rem.remaining_epsilon == pytest.approx(0.7)
        assert [e.status for e in get_ledger().history(analyst)] == ["committed"]
    rows = audit.entries(backend_app.extensions["privtext"].engine, principal_id=analyst)
    assert [r["status"] for r in rows] == ["failed"]
    assert rows[0]["cost"]["epsilon"] == pytest.approx(0.3) and rows[0]["released"] is None
    # a failed query is not a replay source: asking again computes (and charges) again
    out = _run(backend_app, analyst, Compute(backend_app, analyst))
    assert out["replay"] is False and out["budget"]["remaining_epsilon"] == pytest.approx(0.4)


def test_worker_exit_during_compute_is_charged_and_propagates(
    backend_app: Flask, analyst: str
) -> None:
    """gunicorn's timeout raises SystemExit in the worker: the charge stays, the exit goes on."""

    def timed_out() -> dict[str, Any]:
        raise SystemExit(1)

    with pytest.raises(SystemExit):
        _run(backend_app, analyst, timed_out)  # type: ignore[arg-type]
    with backend_app.app_context():
        assert [e.status for e in get_ledger().history(analyst)] == ["committed"]
        assert get_ledger().remaining(analyst).remaining_epsilon == pytest.approx(0.7)


def test_concurrent_identical_queries_are_charged_once(backend_app: Flask, analyst: str) -> None:
    """20 identical queries at once: one is charged and computed, the others replay it."""
    import threading

    calls: list[int] = []
    start = threading.Barrier(20)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def slow() -> dict[str, Any]:
        calls.append(1)
        threading.Event().wait(0.2)  # long enough that every thread arrives meanwhile
        return {"kind": "count", "value": len(calls)}

    def worker() -> None:
        start.wait()
        try:
            results.append(_run(backend_app, analyst, slow))  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(calls) == 1
    assert {r["value"] for r in results} == {1}
    assert sorted(r["replay"] for r in results) == [False] + [True] * 19
    with backend_app.app_context():
        assert [e.status for e in get_ledger().history(analyst)] == ["committed"]


def test_settlement_after_the_response_is_sent(data_dir: Any, ingested: Any) -> None:
    """Serving HTTP (settle_after_response on), the answer leaves after one write: the
    reservation (durable, charged). The audit row, the commit and the claim's release come in
    one more transaction once the server has written the response (WSGI close)."""
    from service.app import create_app
    from service.auth import issue_key
    from service.store.ledger_tables import query_claims

    app = create_app({"data_dir": str(data_dir), "testing": True, "settle_after_response": "on"})
    engine = app.extensions["privtext"].engine
    pid = create_principal(engine, name="ana", role="analyst")
    with app.app_context():
        get_ledger().set_budget(pid, Budget(10.0, 1e-6))
    headers = {"Authorization": f"Bearer {issue_key(engine, pid)}"}
    client = app.test_client()

    resp = client.post("/v1/queries", json={"kind": "count"}, headers=headers)
    assert resp.status_code == 200
    first = resp.get_json()
    with app.app_context():
        # sent, not yet closed: charged (reserved), audit row and commit still to come
        assert [e.status for e in get_ledger().history(pid)] == ["reserved"]
        assert get_ledger().remaining(pid).remaining_epsilon == pytest.approx(9.0)
    with engine.connect() as conn:
        assert conn.execute(select(query_claims)).all() != []
    resp.close()  # what the server does once the body is written
    with app.app_context():
        assert [e.status for e in get_ledger().history(pid)] == ["committed"]
    rows = audit.entries(engine, principal_id=pid)
    assert [r["status"] for r in rows] == ["released"]
    assert rows[0]["reservation_id"] == first["audit_id"]
    with engine.connect() as conn:
        assert conn.execute(select(query_claims)).all() == []
    again = client.post("/v1/queries", json={"kind": "count"}, headers=headers)
    assert again.get_json()["replay"] is True
    assert again.get_json()["result"] == first["result"]
    again.close()
    engine.dispose()
