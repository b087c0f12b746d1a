"""The audit log: normalisation, append-only storage, replay lookup, JSON and CSV export."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, delete, update
from sqlalchemy.exc import DBAPIError

from service.auth import create_principal
from service.store import audit
from service.store.ledger_tables import audit_log


def _add(engine: Engine, pid: str, query: dict, status: str = "released") -> int:
    return audit.record(
        engine,
        principal_id=pid,
        status=status,
        snapshot_id="s1",
        normalised_query=audit.normalise_query(query),
        cost={"epsilon": 0.1},
        released={"value": 3, "note": 'a,b "quoted"'} if status == "released" else None,
    )


def test_normalisation_is_canonical() -> None:
    a = audit.normalise_query({"b": 1, "a": {"y": [1, 2], "x": "é"}})
    b = audit.normalise_query({"a": {"x": "é", "y": [1, 2]}, "b": 1})
    assert a == b == '{"a":{"x":"é","y":[1,2]},"b":1}'
    assert audit.query_hash(a) == audit.query_hash(b)
    assert audit.query_hash(a) != audit.query_hash(audit.normalise_query({"b": 2}))
    with pytest.raises(ValueError):
        audit.normalise_query({"x": float("nan")})


def test_audit_log_is_append_only(state_engine: Engine) -> None:
    pid = create_principal(state_engine, name="a", role="analyst")
    _add(state_engine, pid, {"q": 1})
    for stmt in (update(audit_log).values(status="x"), delete(audit_log)):
        with pytest.raises(DBAPIError, match="append-only"):
            with state_engine.begin() as conn:
                conn.execute(stmt)
    assert len(audit.entries(state_engine)) == 1


def test_replay_lookup_and_filters(state_engine: Engine) -> None:
    a = create_principal(state_engine, name="a", role="analyst")
    b = create_principal(state_engine, name="b", role="analyst")
    _add(state_engine, a, {"q": 1}, status="refused")
    qh = audit.query_hash(audit.normalise_query({"q": 1}))
    assert audit.find_replay(state_engine, principal_id=a, snapshot_id="s1", qhash=qh) is None
    _add(state_engine, a, {"q": 1})
    _add(state_engine, b, {"q": 2})
    found = audit.find_replay(state_engine, principal_id=a, snapshot_id="s1", qhash=qh)
    assert found is not None and found["value"] == 3
    assert audit.find_replay(state_engine, principal_id=b, snapshot_id="s1", qhash=qh) is None
    assert audit.find_replay(state_engine, principal_id=a, snapshot_id="s2", qhash=qh) is None

    assert [r["principal_id"] for r in audit.entries(state_engine, principal_id=b)] == [b]
    now = datetime.now(UTC)
    assert len(audit.entries(state_engine, since=now - timedelta(minutes=5))) == 3
    assert audit.entries(state_engine, since=now + timedelta(minutes=5)) == []
    assert audit.entries(state_engine, until=now - timedelta(minutes=5)) == []
    first = audit.entries(state_engine, limit=2)
    rest = audit.entries(state_engine, after_id=first[-1]["id"])
    assert len(first) == 2 and len(rest) == 1


def test_exports(state_engine: Engine) -> None:
    pid = create_principal(state_engine, name="a", role="analyst")
    _add(state_engine, pid, {"q": 1})
    _add(state_engine, pid, {"q": 2}, status="refused")
    rows = audit.entries(state_engine)
    assert json.loads(audit.to_json(rows)) == rows
    parsed = list(csv.DictReader(io.StringIO(audit.to_csv(rows))))
    assert [r["status"] for r in parsed] == ["released", "refused"]
    assert json.loads(parsed[0]["released"]) == {"value": 3, "note": 'a,b "quoted"'}
    assert json.loads(parsed[0]["query"]) == {"q": 1}
    assert parsed[1]["released"] == "null"
