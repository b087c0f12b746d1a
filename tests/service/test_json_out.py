"""No response body ever holds ``Infinity`` or ``NaN`` (not JSON): they are written as null."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask, jsonify
from flask.testing import FlaskClient
from sqlalchemy import update

from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Budget
from service.auth import create_principal, issue_key
from service.charging import get_ledger
from service.store.ledger_tables import budgets, corpus_cap


def _strict(body: bytes) -> Any:
    """Parse as RFC 8259 JSON: the bare constants Python's json accepts are refused."""

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(body, parse_constant=refuse)


def test_non_finite_floats_are_written_as_null(app: Flask) -> None:
    with app.test_request_context():
        body = jsonify({"a": math.inf, "b": [math.nan, 1.5, (-math.inf,)], "c": {"d": 2.0}})
    assert _strict(body.get_data()) == {"a": None, "b": [None, 1.5, [None]], "c": {"d": 2.0}}


def test_a_non_finite_float_the_mapping_cannot_see_is_an_error_not_invalid_json(
    app: Flask,
) -> None:
    @dataclass
    class Figure:  # the encoder converts dataclasses itself, after the mapping ran
        value: float

    with pytest.raises(ValueError, match="not JSON compliant"):
        app.json.dumps({"figure": Figure(math.nan)})


def test_infinite_spending_reads_as_null_on_every_budget_route(
    app: Flask, client: FlaskClient, admin_token: str
) -> None:
    """A budget and a cap stored with delta 0 before the delta limit, holding a Gaussian event:
    no finite epsilon holds at delta 0, and that used to be printed as a bare Infinity."""
    engine = app.extensions["privtext"].engine
    analyst = create_principal(engine, name="ana", role="analyst")
    analyst_token = issue_key(engine, analyst)
    with app.app_context():
        ledger = get_ledger()
        ledger.set_budget(analyst, Budget(2.0, 1e-6))
        ledger.set_corpus_cap(Budget(20.0, 1e-6))
        ledger.commit(ledger.reserve(analyst, PrivacyEvent.gaussian(3.0)).id)
    with engine.begin() as conn:
        conn.execute(update(budgets).values(delta=0.0))
        conn.execute(update(corpus_cap).values(delta=0.0))
    with app.app_context():
        assert math.isinf(get_ledger().remaining(analyst).spent_epsilon)

    admin = {"Authorization": f"Bearer {admin_token}"}
    mine = {"Authorization": f"Bearer {analyst_token}"}
    reads = [
        (mine, "/v1/budget"),
        (mine, "/v1/budget/history"),
        (admin, "/v1/admin/analysts"),
        (admin, f"/v1/admin/analysts/{analyst}"),
        (admin, f"/v1/admin/analysts/{analyst}/ledger"),
        (admin, "/v1/admin/corpus-cap"),
    ]
    for headers, path in reads:
        resp = client.get(path, headers=headers)
        assert resp.status_code == 200, (path, resp.get_data())
        body = resp.get_data()
        assert b"Infinity" not in body and b"NaN" not in body, path
        _strict(body)
    assert client.get("/v1/budget", headers=mine).get_json()["spent_epsilon"] is None
    cap = client.get("/v1/admin/corpus-cap", headers=admin).get_json()
    assert cap["spent_epsilon"] is None and cap["budget"]["delta"] == 0.0

    # A query against it is refused with finite figures, and the refusal is JSON too.
    resp = client.post(
        "/v1/queries",
        json={"kind": "count", "privacy": {"epsilon": 0.1}},
        headers=mine,
    )
    assert resp.status_code == 409, resp.get_data()
    _strict(resp.get_data())
