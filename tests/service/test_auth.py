"""API keys: stored only as salted hashes; 401 for a missing or bad key, 403 for the wrong role."""

from __future__ import annotations

from flask import Flask, jsonify
from sqlalchemy import select

from service.auth import (
    authenticate,
    create_principal,
    issue_key,
    parse_token,
    require,
    revoke_key,
)
from service.store.tables import api_keys, principals
from tests.fixtures.app import bearer


def _engine(app: Flask):  # type: ignore[no-untyped-def]
    return app.extensions["privtext"].engine


def test_keys_are_stored_only_as_salted_hashes(app: Flask) -> None:
    engine = _engine(app)
    pid = create_principal(engine, name="a", role="analyst")
    t1, t2 = issue_key(engine, pid), issue_key(engine, pid)
    with engine.connect() as conn:
        rows = conn.execute(select(api_keys)).mappings().all()
    secrets_ = {parse_token(t)[1] for t in (t1, t2)}
    for row in rows:
        stored = " ".join(str(v) for v in row.values())
        assert not any(s in stored for s in secrets_), "a key secret is stored in clear"
    assert len({r["salt"] for r in rows}) == len(rows), "salts must differ per key"
    assert len(secrets_) == 2


def test_authenticate_checks_secret_revocation_and_disabled(app: Flask) -> None:
    engine = _engine(app)
    pid = create_principal(engine, name="a", role="analyst")
    token = issue_key(engine, pid)
    assert authenticate(engine, token).id == pid  # type: ignore[union-attr]
    key_id, secret = parse_token(token)
    assert authenticate(engine, f"ptk_{key_id}_{secret}x") is None
    assert authenticate(engine, "ptk_ffffffffffffffff_nope") is None
    assert authenticate(engine, "garbage") is None
    assert revoke_key(engine, key_id)
    assert authenticate(engine, token) is None
    token2 = issue_key(engine, pid)
    with engine.begin() as conn:
        conn.execute(principals.update().where(principals.c.id == pid).values(disabled=True))
    assert authenticate(engine, token2) is None


def test_operator_supplied_admin_token_round_trips(app: Flask) -> None:
    engine = _engine(app)
    pid = create_principal(engine, name="ops", role="admin")
    token = "ptk_0123abcd_s3cretvalue-from-env"
    assert issue_key(engine, pid, token=token) == token
    assert authenticate(engine, token).role == "admin"  # type: ignore[union-attr]


def test_missing_or_bad_key_is_401_with_envelope(client) -> None:  # type: ignore[no-untyped-def]
    for headers in ({}, {"Authorization": "Basic abc"}, bearer("ptk_00_bad"), bearer("")):
        resp = client.get("/v1/me", headers=headers)
        assert resp.status_code == 401
        body = resp.get_json()
        assert body["code"] == "unauthorized" and body["status"] == 401
        assert "WWW-Authenticate" in resp.headers


def test_whoami_for_each_role(client, admin_token, analyst_token) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/v1/me", headers=bearer(admin_token)).get_json()["role"] == "admin"
    assert client.get("/v1/me", headers=bearer(analyst_token)).get_json()["role"] == "analyst"


def test_wrong_role_is_403(app: Flask, analyst_token: str, admin_token: str) -> None:
    @app.get("/_test/admin-only")
    @require("admin")
    def _admin_only():  # type: ignore[no-untyped-def]
        return jsonify({"ok": True})

    client = app.test_client()
    resp = client.get("/_test/admin-only", headers=bearer(analyst_token))
    assert resp.status_code == 403
    assert resp.get_json()["code"] == "forbidden"
    assert client.get("/_test/admin-only", headers=bearer(admin_token)).status_code == 200


def test_every_route_declares_its_roles(app: Flask) -> None:
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        assert hasattr(view, "required_roles"), f"{rule.rule} does not declare its roles"
