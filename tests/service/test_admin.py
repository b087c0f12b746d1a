"""The admin API (``/v1/admin/*``) and the analysts' own budget routes (``/v1/budget``)."""

from __future__ import annotations

import csv
import io
import re
import uuid
from typing import Any

import pytest
from flask import Flask

from mechanisms.events import PrivacyEvent
from service import auth
from service.charging import run_charged
from tests.fixtures.app import bearer


@pytest.fixture
def api(backend_app: Flask, backend_admin_token: str):  # type: ignore[no-untyped-def]
    client = backend_app.test_client()

    def call(method: str, path: str, token: str | None = backend_admin_token, **kw: Any):  # type: ignore[no-untyped-def]
        headers = bearer(token) if token else {}
        return client.open(path, method=method, headers=headers, **kw)

    return call


def _new_analyst(api, budget: dict[str, float] | None = None) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    body: dict[str, Any] = {"name": f"ana-{uuid.uuid4().hex[:8]}"}  # names are unique
    if budget is not None:
        body["budget"] = budget
    r = api("POST", "/v1/admin/analysts", json=body)
    assert r.status_code == 201, r.json
    aid = r.json["id"]
    k = api("POST", f"/v1/admin/analysts/{aid}/keys")
    assert k.status_code == 201
    return aid, k.json["token"]


def test_analyst_lifecycle(api) -> None:  # type: ignore[no-untyped-def]
    aid, token = _new_analyst(api, {"epsilon": 1.0, "delta": 1e-6})
    assert api("GET", "/v1/me", token).json["id"] == aid
    listed = api("GET", "/v1/admin/analysts").json["analysts"]
    assert [a["id"] for a in listed] == [aid]
    assert listed[0]["budget"] == {"epsilon": 1.0, "delta": 1e-6}
    one = api("GET", f"/v1/admin/analysts/{aid}").json
    assert one["keys"][0]["revoked_at"] is None and "token" not in str(one["keys"])
    assert one["remaining"]["remaining_epsilon"] == pytest.approx(1.0)

    r = api("POST", f"/v1/admin/analysts/{aid}/disable")
    assert r.status_code == 200 and r.json["disabled"] is True
    assert api("GET", "/v1/me", token).status_code == 401


def test_keys_issue_rotate_revoke(api) -> None:  # type: ignore[no-untyped-def]
    aid, token = _new_analyst(api)
    key_id = api("GET", f"/v1/admin/analysts/{aid}").json["keys"][0]["key_id"]
    r = api("POST", f"/v1/admin/analysts/{aid}/keys/{key_id}/rotate")
    assert r.status_code == 201 and r.json["revoked_key_id"] == key_id
    new = r.json["token"]
    assert api("GET", "/v1/me", token).status_code == 401
    assert api("GET", "/v1/me", new).status_code == 200
    assert api("DELETE", f"/v1/admin/analysts/{aid}/keys/{r.json['key_id']}").status_code == 204
    assert api("GET", "/v1/me", new).status_code == 401
    assert api("DELETE", f"/v1/admin/analysts/{aid}/keys/{key_id}").status_code == 404
    # a key of another analyst cannot be revoked through this one
    other, other_token = _new_analyst(api)
    other_key = api("GET", f"/v1/admin/analysts/{other}").json["keys"][0]["key_id"]
    assert api("DELETE", f"/v1/admin/analysts/{aid}/keys/{other_key}").status_code == 404
    assert api("GET", "/v1/me", other_token).status_code == 200


def test_budgets_and_cap(api) -> None:  # type: ignore[no-untyped-def]
    aid, token = _new_analyst(api)
    assert api("GET", "/v1/budget", token).json["budget"] is None
    r = api("PUT", f"/v1/admin/analysts/{aid}/budget", json={"epsilon": 1.0, "delta": 1e-6})
    assert r.status_code == 200 and r.json["budget"] == {"epsilon": 1.0, "delta": 1e-6}
    r = api("POST", f"/v1/admin/analysts/{aid}/budget/raise", json={"epsilon": 0.5})
    assert r.json["budget"] == {"epsilon": 1.5, "delta": 1e-6}
    assert api("GET", "/v1/budget", token).json["remaining_epsilon"] == pytest.approx(1.5)

    assert api("GET", "/v1/admin/corpus-cap").json["budget"] is None
    r = api("PUT", "/v1/admin/corpus-cap", json={"epsilon": 10.0, "delta": 1e-5})
    assert r.status_code == 200 and r.json["budget"] == {"epsilon": 10.0, "delta": 1e-5}
    assert api("GET", "/v1/admin/corpus-cap").json["spent_epsilon"] == 0.0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("budget", {"epsilon": 0, "delta": 0}),
        ("budget", {"epsilon": -1, "delta": 0}),
        ("budget", {"epsilon": 1, "delta": 1}),
        ("budget", {"epsilon": 1, "delta": -0.1}),
        ("budget", {"epsilon": 1}),
        ("budget", {"epsilon": 1, "delta": 0, "extra": 1}),
        ("budget", {"epsilon": "1e999", "delta": 0}),
        ("budget/raise", {}),
        ("budget/raise", {"epsilon": -0.1}),
        ("budget/raise", {"epsilon": 0, "delta": 0}),
        # delta in (0, 1e-3]: 0 printed Infinity later, 0.5 read past spending as 0
        ("budget", {"epsilon": 1, "delta": 0}),
        ("budget", {"epsilon": 1, "delta": 0.5}),
        ("budget", {"epsilon": 1, "delta": 1.5e-3}),
        ("budget/raise", {"delta": 2e-3}),
    ],
)
def test_budget_validation(api, path: str, body: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    aid, _ = _new_analyst(api)
    method = "PUT" if path == "budget" else "POST"
    r = api(method, f"/v1/admin/analysts/{aid}/{path}", json=body)
    assert r.status_code == 422 and r.json["code"] == "validation_error"


def test_delta_limit_on_every_budget_route(api) -> None:  # type: ignore[no-untyped-def]
    aid, _ = _new_analyst(api)
    for i, delta in enumerate((0, 0.0, 5e-324, 1e-12, 1e-3, 0.5, 1.0001e-3, 1)):
        ok = 0 < delta <= 1e-3
        body = {"name": f"d{i}", "budget": {"epsilon": 1, "delta": delta}}
        r = api("POST", "/v1/admin/analysts", json=body)
        assert r.status_code == (201 if ok else 422), (delta, r.json)
        r = api("PUT", f"/v1/admin/analysts/{aid}/budget", json={"epsilon": 1, "delta": delta})
        assert r.status_code == (200 if ok else 422), (delta, r.json)
        r = api("PUT", "/v1/admin/corpus-cap", json={"epsilon": 10, "delta": delta})
        assert r.status_code == (200 if ok else 422), (delta, r.json)


def test_a_raise_past_the_delta_limit_is_refused(api) -> None:  # type: ignore[no-untyped-def]
    aid, _ = _new_analyst(api)
    r = api("POST", f"/v1/admin/analysts/{aid}/budget/raise", json={"epsilon": 1.0})
    assert r.status_code == 422  # no budget yet: a first budget needs a delta
    assert r.json["code"] == "invalid_privacy_parameter"
    api("PUT", f"/v1/admin/analysts/{aid}/budget", json={"epsilon": 1.0, "delta": 6e-4})
    r = api("POST", f"/v1/admin/analysts/{aid}/budget/raise", json={"delta": 6e-4})
    assert r.status_code == 422 and r.json["code"] == "invalid_privacy_parameter"
    assert api("GET", f"/v1/admin/analysts/{aid}").json["budget"]["delta"] == 6e-4


def test_unknown_analyst_is_404(api) -> None:  # type: ignore[no-untyped-def]
    for method, path, body in [
        ("GET", "/v1/admin/analysts/nope", None),
        ("POST", "/v1/admin/analysts/nope/disable", None),
        ("POST", "/v1/admin/analysts/nope/keys", None),
        ("PUT", "/v1/admin/analysts/nope/budget", {"epsilon": 1, "delta": 1e-6}),
        ("GET", "/v1/admin/analysts/nope/ledger", None),
    ]:
        r = api(method, path, json=body)
        assert r.status_code == 404 and r.json["code"] == "not_found", (method, path)


def test_ledger_history_and_audit_export(api, backend_app: Flask) -> None:  # type: ignore[no-untyped-def]
    aid, token = _new_analyst(api, {"epsilon": 1.0, "delta": 1e-6})
    with backend_app.app_context():
        for i in range(3):
            run_charged(
                aid,
                query={"kind": "count", "i": i},
                snapshot_id="s",
                event=PrivacyEvent.laplace(0.2),
                compute=lambda: {"value": 7},
            )
    ledger = api("GET", f"/v1/admin/analysts/{aid}/ledger?limit=2").json
    assert len(ledger["entries"]) == 2 and ledger["remaining"]["committed"] == 3
    assert ledger["remaining"]["spent_epsilon"] == pytest.approx(0.6)
    own = api("GET", "/v1/budget/history", token).json["entries"]
    assert [e["status"] for e in own] == ["committed"] * 3

    page = api("GET", f"/v1/admin/audit?analyst={aid}&limit=2").json
    assert [e["query"]["i"] for e in page["entries"]] == [0, 1]
    rest = api("GET", f"/v1/admin/audit?after={page['next_after']}").json
    assert [e["query"]["i"] for e in rest["entries"]] == [2] and rest["next_after"] is None
    r = api("GET", "/v1/admin/audit?format=csv")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [row["status"] for row in rows] == ["released"] * 3
    assert api("GET", "/v1/admin/audit?since=2020-01-01T00:00:00").status_code == 422  # no tz
    assert api("GET", "/v1/admin/audit?since=2199-01-01T00:00:00Z").json["entries"] == []
    assert api("GET", "/v1/admin/audit?since=2999-01-01T00:00:00Z").status_code == 422


def _fill(rule: str) -> str:
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", "x", rule)


def test_analyst_keys_cannot_call_any_admin_route(api, backend_app: Flask) -> None:  # type: ignore[no-untyped-def]
    victim, _ = _new_analyst(api, {"epsilon": 1.0, "delta": 1e-6})
    _, token = _new_analyst(api, {"epsilon": 1.0, "delta": 1e-6})
    tried = 0
    for rule in backend_app.url_map.iter_rules():
        roles = getattr(backend_app.view_functions[rule.endpoint], "required_roles", None)
        if roles != ("admin",):
            continue  # every route declared admin-only, wherever it lives
        path = rule.rule.replace("<analyst_id>", victim)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            r = api(method, _fill(path), token, json={"epsilon": 9, "delta": 0.1, "name": "x"})
            assert r.status_code in (401, 403), (method, rule.rule, r.status_code)
            tried += 1
            r = api(method, _fill(path), None)
            assert r.status_code == 401, (method, rule.rule)
    assert tried >= 14
    # nothing changed for the victim
    assert api("GET", f"/v1/admin/analysts/{victim}").json["budget"]["epsilon"] == 1.0


def test_admin_keys_have_no_budget_routes(api, backend_admin_token: str) -> None:  # type: ignore[no-untyped-def]
    assert api("GET", "/v1/budget").status_code == 403
    assert api("GET", "/v1/budget/history").status_code == 403


def test_analyst_reads_only_own_budget(api) -> None:  # type: ignore[no-untyped-def]
    a, token_a = _new_analyst(api, {"epsilon": 1.0, "delta": 1e-6})
    b, _ = _new_analyst(api, {"epsilon": 5.0, "delta": 1e-6})
    assert api("GET", "/v1/budget", token_a).json["budget"]["epsilon"] == 1.0
    # query parameters cannot select another analyst: the route takes none
    assert api("GET", f"/v1/budget?analyst={b}", token_a).status_code == 422
    assert api("GET", f"/v1/budget/history?principal_id={b}", token_a).status_code == 422


def test_analyst_names_are_unique(api, backend_app: Flask) -> None:  # type: ignore[no-untyped-def]
    r = api("POST", "/v1/admin/analysts", json={"name": "alice"})
    assert r.status_code == 201
    first = r.json["id"]
    api("POST", f"/v1/admin/analysts/{first}/disable")  # a disabled analyst keeps its name
    body = {"name": "alice", "budget": {"epsilon": 1, "delta": 1e-6}}
    again = api("POST", "/v1/admin/analysts", json=body)
    assert again.status_code == 409 and again.json["code"] == "name_taken"
    assert list(again.json["errors"]) == ["name"]
    names = [a["name"] for a in api("GET", "/v1/admin/analysts").json["analysts"]]
    assert names.count("alice") == 1  # nothing was created
    assert api("POST", "/v1/admin/analysts", json={"name": "Alice"}).status_code == 201


def test_the_store_refuses_a_duplicate_name_too(backend_app: Flask) -> None:
    """Two creations racing past the check in ``Accounts``: the unique index decides."""
    engine = backend_app.extensions["privtext"].engine
    auth.create_principal(engine, name="bob", role="analyst")
    with pytest.raises(auth.DuplicateName):
        auth.create_principal(engine, name="bob", role="analyst")
    auth.create_principal(engine, name="bob", role="app")  # other roles' names may repeat


def test_corpus_cap_without_a_cap_is_unlimited_not_zero(api) -> None:  # type: ignore[no-untyped-def]
    cap = api("GET", "/v1/admin/corpus-cap").json
    assert cap["capped"] is False and cap["budget"] is None and cap["remaining_epsilon"] is None
    r = api("PUT", "/v1/admin/corpus-cap", json={"epsilon": 3, "delta": 1e-6})
    assert r.json["capped"] is True and r.json["remaining_epsilon"] == pytest.approx(3.0)
    assert api("GET", "/v1/admin/corpus-cap").json == r.json


def test_an_answers_budget_block_agrees_with_get_budget(api) -> None:  # type: ignore[no-untyped-def]
    _, token = _new_analyst(api, {"epsilon": 5, "delta": 1e-6})
    seen = []
    for body in (
        {"kind": "count", "privacy": {"epsilon": 0.5}},
        {"kind": "count", "privacy": {"epsilon": 0.5}},  # a replay
        {"kind": "mean", "feature": "chars", "dry_run": True},
    ):
        answer = api("POST", "/v1/queries", token, json=body).json
        block, own = answer["budget"], api("GET", "/v1/budget", token).json
        assert set(block) == {
            "budget", "delta", "spent_epsilon", "spent_epsilon_accounting", "remaining_epsilon"
        }  # fmt: skip
        assert block == {name: own[name] for name in block}, body
        seen.append(block["spent_epsilon"])
    assert seen[0] == pytest.approx(0.5, abs=0.01) and seen[0] == seen[1] == seen[2]
