"""Hostile input gets a clear 4xx in the JSON error envelope, before any charge or rate limit.

Each case here reached a 500 (or a silent success) before issue 10: bodies nested 100,000
deep, lone surrogates in any string, strings and fractions where numbers and integers belong,
dates whose UTC instant overflows, chunked bodies over the limit, a text/plain body to an
admin route, and query parameters a route does not take.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from jobs import states as jobstore
from mechanisms.ledger import Budget
from service.app import create_app
from service.auth import create_principal, issue_key
from service.body import MAX_JSON_DEPTH, QUERY_ARGS
from service.charging import get_ledger
from service.store.ledger_tables import audit_log
from service.store.ratelimit import rate_windows
from tests.fixtures.app import bearer

pytestmark = pytest.mark.seconds  # a matrix of hostile requests, about 20 s in all

ENVELOPE = {"code", "status", "message", "errors"}


@pytest.fixture
def hostile_app(data_dir: Path, ingested: Any) -> Iterator[Flask]:
    application = create_app(
        {"data_dir": str(data_dir), "testing": True, "queue_url": "memory://"}
    )
    yield application
    application.extensions["privtext"].engine.dispose()


@pytest.fixture
def client(hostile_app: Flask) -> FlaskClient:
    return hostile_app.test_client()


def _key(app: Flask, role: str, budget: Budget | None = None) -> str:
    engine = app.extensions["privtext"].engine
    pid = create_principal(engine, name=role, role=role)
    if budget is not None:
        with app.app_context():
            get_ledger().set_budget(pid, budget)
    return issue_key(engine, pid)


@pytest.fixture
def keys(hostile_app: Flask) -> dict[str, str]:
    return {
        "admin": _key(hostile_app, "admin"),
        "analyst": _key(hostile_app, "analyst", Budget(epsilon=100.0, delta=1e-4)),
        "app": _key(hostile_app, "app"),
    }


def _error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)[:500]
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert ENVELOPE <= set(body) and body["status"] == status
    return body  # type: ignore[no-any-return]


def _post_raw(client: FlaskClient, path: str, raw: str | bytes, key: str) -> Any:
    return client.post(
        path, data=raw, headers={**bearer(key), "Content-Type": "application/json"}
    )


def _spent(app: Flask) -> tuple[int, int]:
    """(audit rows, rate-limit rows): neither may grow on a refused request."""
    engine = app.extensions["privtext"].engine
    with engine.connect() as conn:
        audits = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()
        rates = conn.execute(select(func.count()).select_from(rate_windows)).scalar_one()
    return audits, rates


# (route, role allowed to call it)
BODY_ROUTES = [
    ("/v1/queries", "analyst"),
    ("/v1/admin/analysts", "admin"),
    ("/v1/embeddings", "app"),
    ("/v1/embedding-jobs", "app"),
]


# -- nesting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "role"), BODY_ROUTES)
def test_body_nested_past_the_recursion_limit_is_400(
    hostile_app: Flask, client: FlaskClient, keys: dict[str, str], path: str, role: str
) -> None:
    # 30,000 levels fit the 64 KiB limit of every route and are far past Python's stack.
    for raw in ("[" * 30_000 + "]" * 30_000, '{"texts": ' + "[" * 30_000 + "]" * 30_000 + "}"):
        body = _error(_post_raw(client, path, raw, keys[role]), 400)
        assert "nested" in body["message"]
    assert _spent(hostile_app) == (0, 0)


def test_nesting_limit_is_exact(client: FlaskClient, keys: dict[str, str]) -> None:
    def nested(depth: int) -> str:  # an object at depth 1, then lists
        return '{"texts": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"

    resp = _post_raw(client, "/v1/embeddings", nested(MAX_JSON_DEPTH), keys["app"])
    assert _error(resp, 422)["code"] == "validation_error"  # past the body check, to the schema
    resp = _post_raw(client, "/v1/embeddings", nested(MAX_JSON_DEPTH + 1), keys["app"])
    assert "nested" in _error(resp, 400)["message"]


# -- lone surrogates --------------------------------------------------------------------------

SURROGATE_BODIES = [
    ("/v1/queries", "analyst", {"kind": "count", "filters": {"keywords": {"terms": ["\ud800"]}}}),
    ("/v1/queries", "analyst", {"kind": "top_terms", "terms": ["ok", "a\udfffb"]}),
    (
        "/v1/queries",
        "analyst",
        {"kind": "count", "filters": {"metadata": {"channel": ["\udc80"]}}},
    ),
    ("/v1/admin/analysts", "admin", {"name": "eve\ud800"}),
    ("/v1/embeddings", "app", {"texts": ["fine", "\ud800"]}),
    ("/v1/embedding-jobs", "app", {"texts": ["fine", "x\udbff"]}),
    ("/v1/queries", "analyst", {"kind": "count", "\ud800": 1}),  # a key
]


@pytest.mark.parametrize(
    ("path", "role", "payload"), SURROGATE_BODIES, ids=[str(i) for i in range(7)]
)
def test_lone_surrogates_are_400_before_any_charge_or_rate_limit(
    hostile_app: Flask,
    client: FlaskClient,
    keys: dict[str, str],
    path: str,
    role: str,
    payload: dict[str, Any],
) -> None:
    raw = json.dumps(payload)  # ensure_ascii: the surrogate travels as a \ud800 escape
    assert "\\ud" in raw or "\\udc" in raw
    body = _error(_post_raw(client, path, raw, keys[role]), 400)
    assert "surrogate" in body["message"]
    json.dumps(body, ensure_ascii=False).encode("utf-8")  # the answer itself is valid Unicode
    assert _spent(hostile_app) == (0, 0)
    engine = hostile_app.extensions["privtext"].engine
    assert jobstore.list_jobs(engine) == []


def test_surrogate_pairs_are_ordinary_text(client: FlaskClient, keys: dict[str, str]) -> None:
    raw = json.dumps({"kind": "count", "filters": {"keywords": {"terms": ["\U0001f600"]}}})
    assert "\\ud83d\\ude00" in raw
    assert _post_raw(client, "/v1/queries", raw, keys["analyst"]).status_code == 200


def test_embedding_rate_limit_is_untouched_by_a_refused_body(
    data_dir: Path, ingested: Any
) -> None:
    app = create_app(
        {
            "data_dir": str(data_dir),
            "testing": True,
            "queue_url": "memory://",
            "embedding_rate_requests": 1,
        }
    )
    key = _key(app, "app")
    client = app.test_client()
    for _ in range(3):
        resp = _post_raw(client, "/v1/embeddings", json.dumps({"texts": ["\ud800"]}), key)
        _error(resp, 400)
    resp = client.post("/v1/embeddings", json={"texts": ["x"] * 65}, headers=bearer(key))
    _error(resp, 422)  # a schema error is not counted either
    # The one request the window allows is still there.
    resp = client.post("/v1/embeddings", json={"texts": ["hi"]}, headers=bearer(key))
    assert resp.status_code == 200
    app.extensions["privtext"].engine.dispose()


# -- strict numbers, integers, booleans -------------------------------------------------------

STRICT_QUERIES = [
    ({"kind": "count", "privacy": {"epsilon": "1"}}, "privacy.epsilon"),
    ({"kind": "count", "privacy": {"epsilon": "1e-7"}}, "privacy.epsilon"),
    ({"kind": "count", "privacy": {"epsilon": True}}, "privacy.epsilon"),
    (
        {"kind": "count", "privacy": {"mechanism": "gaussian", "epsilon": 1, "delta": "1e-7"}},
        "privacy.delta",
    ),
    ({"kind": "top_terms", "k": 1.5}, "k"),
    ({"kind": "top_terms", "k": 2.0}, "k"),
    ({"kind": "top_terms", "k": "10"}, "k"),
    ({"kind": "top_terms", "k": True}, "k"),
    ({"kind": "top_terms", "terms": ["ok"], "max_terms_per_sender": "3"}, "max_terms_per_sender"),
    ({"kind": "top_terms", "bigrams": "true"}, "bigrams"),
    ({"kind": "top_terms", "bigrams": 1}, "bigrams"),
    ({"kind": "count", "dry_run": 1}, "dry_run"),
    ({"kind": "count", "dry_run": "false"}, "dry_run"),
    ({"kind": "mean", "feature": "chars", "bounds": {"lower": "0", "upper": 10}}, "bounds.lower"),
    ({"kind": "histogram", "feature": "chars", "bins": ["0", 5, 10]}, "bins.0"),
    ({"kind": "quantiles", "feature": "chars", "quantiles": ["0.5"]}, "quantiles.0"),
    ({"kind": "count", "confidence_level": "0.9"}, "confidence_level"),
    (
        {"kind": "histogram", "feature": "chars", "bins": [0, 5, 10],
         "privacy": {"accuracy": {"half_width": "5"}}},
        "privacy.accuracy.half_width",
    ),
    ({"kind": "topics", "clusters": 3.0}, "clusters"),
    ({"kind": "count", "max_messages_per_sender": 2.5}, "max_messages_per_sender"),
    ({"kind": "count", "max_messages_per_sender": "3"}, "max_messages_per_sender"),
]


@pytest.mark.parametrize(("payload", "field"), STRICT_QUERIES, ids=[str(i) for i in range(21)])
def test_query_numbers_and_booleans_have_their_json_type(
    hostile_app: Flask,
    client: FlaskClient,
    keys: dict[str, str],
    payload: dict[str, Any],
    field: str,
) -> None:
    body = _error(client.post("/v1/queries", json=payload, headers=bearer(keys["analyst"])), 422)
    errors: Any = body["errors"]
    for part in field.split("."):  # marshmallow nests errors by field (list items by index)
        assert isinstance(errors, dict), body
        errors = errors.get(part, errors.get(int(part)) if part.isdigit() else None)
    assert errors, body
    assert _spent(hostile_app) == (0, 0)


def test_json_integers_are_still_numbers(client: FlaskClient, keys: dict[str, str]) -> None:
    ok = {"kind": "mean", "feature": "chars", "bounds": {"lower": 0, "upper": 100},
          "privacy": {"epsilon": 1}, "confidence_level": 0.9, "dry_run": True}
    assert client.post("/v1/queries", json=ok, headers=bearer(keys["analyst"])).status_code == 200


@pytest.mark.parametrize(
    "budget",
    [
        {"epsilon": "1", "delta": 1e-6},
        {"epsilon": 1, "delta": "1e-6"},
        {"epsilon": True, "delta": 1e-6},
    ],
)
def test_admin_budgets_take_json_numbers_only(
    client: FlaskClient, keys: dict[str, str], budget: dict[str, Any]
) -> None:
    h = bearer(keys["admin"])
    resp = client.post("/v1/admin/analysts", json={"name": "a", "budget": budget}, headers=h)
    body = _error(resp, 422)
    assert "budget" in body["errors"]
    _error(client.put("/v1/admin/corpus-cap", json=budget, headers=h), 422)
    names = [a["name"] for a in client.get("/v1/admin/analysts", headers=h).get_json()["analysts"]]
    assert "a" not in names


@pytest.mark.parametrize(
    "fields",
    [{"steps": "10"}, {"steps": 1.5}, {"seed": 2.0}, {"target_epsilon": "1"}, {"activate": "yes"}],
)
def test_training_requests_take_json_types_only(
    hostile_app: Flask, client: FlaskClient, keys: dict[str, str], fields: dict[str, Any]
) -> None:
    payload = {"target_epsilon": 1.0, **fields}
    resp = client.post("/v1/admin/training-jobs", json=payload, headers=bearer(keys["admin"]))
    body = _error(resp, 422)
    assert set(fields) <= set(body["errors"]), body
    assert jobstore.list_jobs(hostile_app.extensions["privtext"].engine) == []


# -- dates ------------------------------------------------------------------------------------

EDGE_RANGES = [
    ("0001-01-01T00:00:00+05:00", "2024-01-01T00:00:00Z"),
    ("2024-01-01T00:00:00Z", "9999-12-31T23:59:59-05:00"),
    ("0001-01-01T00:00:00Z", "2024-01-01T00:00:00Z"),
    ("1899-12-31T23:59:59Z", "2024-01-01T00:00:00Z"),
    ("2024-01-01T00:00:00Z", "2200-01-01T00:00:01Z"),
    ("2024-01-01T00:00:00Z", "2199-12-31T23:00:00-05:00"),  # 2200-01-01T04:00Z
    ("1900-01-01T04:59:59+05:00", "2024-01-01T00:00:00Z"),  # 1899-12-31T23:59:59Z
]


@pytest.mark.parametrize(("start", "end"), EDGE_RANGES)
def test_time_ranges_outside_1900_to_2200_utc_are_422(
    hostile_app: Flask, client: FlaskClient, keys: dict[str, str], start: str, end: str
) -> None:
    h = bearer(keys["analyst"])
    rng = {"start": start, "end": end}
    for payload, field in (
        ({"kind": "count", "filters": {"time_range": rng}}, "filters"),
        ({"kind": "count", "group_by": {"time": "month", "range": rng}}, "group_by"),
    ):
        body = _error(client.post("/v1/queries", json=payload, headers=h), 422)
        assert field in body["errors"]
    assert _spent(hostile_app) == (0, 0)


def test_time_ranges_at_the_edges_are_accepted(client: FlaskClient, keys: dict[str, str]) -> None:
    rng = {"start": "1900-01-01T05:00:00+05:00", "end": "2200-01-01T00:00:00+00:00"}
    payload = {"kind": "count", "filters": {"time_range": rng}, "dry_run": True}
    resp = client.post("/v1/queries", json=payload, headers=bearer(keys["analyst"]))
    assert resp.status_code == 200, resp.get_json()


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
def test_audit_export_dates_outside_the_range_are_422(
    client: FlaskClient, keys: dict[str, str], when: str
) -> None:
    for name in ("since", "until"):
        h = bearer(keys["admin"])
        resp = client.get("/v1/admin/audit", query_string={name: when}, headers=h)
        assert name in _error(resp, 422)["errors"]


# -- size, media type, query parameters -------------------------------------------------------


def _chunked(client: FlaskClient, path: str, size: int, key: str) -> Any:
    """POST ``size`` bytes without a Content-Length, as a server that decodes chunked
    transfer coding (gunicorn, werkzeug's own) hands it to the app."""
    stream = io.BytesIO(b'{"texts": ["' + b"a" * size + b'"]}')
    return client.post(
        path,
        input_stream=stream,
        headers={**bearer(key), "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_chunked_body_over_the_limit_is_413(
    hostile_app: Flask, client: FlaskClient, keys: dict[str, str]
) -> None:
    limit = hostile_app.config["MAX_CONTENT_LENGTH"]
    assert _error(_chunked(client, "/v1/embeddings", 50 * 1024 * 1024, keys["app"]), 413)
    assert _error(_chunked(client, "/v1/queries", limit, keys["analyst"]), 413)
    # Under the limit, a chunked body is read as any other (here: a schema error).
    assert "texts" in _error(_chunked(client, "/v1/queries", 100, keys["analyst"]), 422)["errors"]
    assert _spent(hostile_app) == (0, 0)


def test_chunked_embedding_job_over_its_own_limit_is_413(
    hostile_app: Flask, client: FlaskClient, keys: dict[str, str]
) -> None:
    limit = hostile_app.extensions["privtext"].settings.embedding_job_max_bytes
    assert _error(_chunked(client, "/v1/embedding-jobs", limit, keys["app"]), 413)
    assert jobstore.list_jobs(hostile_app.extensions["privtext"].engine) == []


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("post", "/v1/admin/analysts", "admin"),
        ("put", "/v1/admin/corpus-cap", "admin"),
        ("post", "/v1/queries", "analyst"),
        ("post", "/v1/embeddings", "app"),
    ],
)
def test_a_body_that_is_not_json_is_415(
    client: FlaskClient, keys: dict[str, str], method: str, path: str, role: str
) -> None:
    resp = getattr(client, method)(
        path, data='{"name": "x"}', headers={**bearer(keys[role]), "Content-Type": "text/plain"}
    )
    assert _error(resp, 415)["code"] == "unsupported_media_type"


@pytest.mark.parametrize(
    ("path", "role"),
    [
        ("/v1/budget?analyst=someone-else", "analyst"),
        ("/v1/me?as=admin", "analyst"),
        ("/v1/snapshots/live?id=1", "analyst"),
        ("/v1/admin/corpus-cap?x=1", "admin"),
        ("/v1/models?all=1", "admin"),
        ("/healthz?verbose=1", None),
        ("/v1/admin/analysts?limit=5&role=admin", "admin"),
        ("/v1/budget/history?limit=5&analyst=x", "analyst"),
        ("/v1/jobs?kind=embedding&owner=x", "admin"),
    ],
)
def test_unknown_query_parameters_are_422(
    client: FlaskClient, keys: dict[str, str], path: str, role: str | None
) -> None:
    resp = client.get(path, headers=bearer(keys[role]) if role else {})
    body = _error(resp, 422)
    unknown = path.rsplit("&", 1)[-1].split("?")[-1].split("=")[0]
    assert body["errors"] == {unknown: ["Unknown field."]}


@pytest.mark.parametrize(
    ("path", "role"),
    [
        ("/v1/admin/analysts?limit=5&offset=0", "admin"),
        ("/v1/budget/history?limit=5", "analyst"),
        ("/v1/jobs?kind=embedding", "admin"),
        ("/v1/admin/audit?format=csv&limit=10", "admin"),
    ],
)
def test_declared_query_parameters_still_work(
    client: FlaskClient, keys: dict[str, str], path: str, role: str
) -> None:
    assert client.get(path, headers=bearer(keys[role])).status_code == 200


def test_declared_query_parameters_are_the_spec_s(hostile_app: Flask) -> None:
    """body.QUERY_ARGS and openapi.yaml name the same query parameters for every route."""
    spec = yaml.safe_load((Path(__file__).parents[2] / "openapi.yaml").read_text())

    def resolve(param: dict[str, Any]) -> dict[str, Any]:
        ref = param.get("$ref")
        return spec["components"]["parameters"][ref.rsplit("/", 1)[1]] if ref else param

    for rule in hostile_app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        item = spec["paths"][re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)]
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            params = item.get("parameters", []) + item[method.lower()].get("parameters", [])
            in_query = {p["name"] for p in map(resolve, params) if p["in"] == "query"}
            assert set(QUERY_ARGS.get(rule.endpoint, ())) == in_query, (rule.rule, method)
