"""For every registered query kind and every pricing route, the event charged dominates the sum
of the parts the answer spends (issue 12).

Routes: epsilon with Laplace noise, epsilon (and delta) with Gaussian noise (rho), an accuracy
target (kinds that take one; the others are refused before anything is read), a dry run
(nothing charged, nothing read), and the automatic per-sender cap. Each request goes through
``POST /v1/queries``; the event is the one the ledger recorded, and the parts are the
mechanisms the release actually used (caught at ``build_answer``), so a kind whose parts cost
more than its event fails here. The same is checked in process at every cap the release may end
up with. Every kind in the registry must have examples below: a new kind is covered or fails.
"""

from __future__ import annotations

import copy
import math
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from marshmallow import ValidationError

from mechanisms.errors import InvalidParameterError
from mechanisms.events import PrivacyEvent
from mechanisms.gaussian import GaussianMechanism
from mechanisms.laplace import LaplaceMechanism
from mechanisms.ledger import Budget
from service.api import queries as views
from service.auth import create_principal, issue_key
from service.charging import get_ledger
from service.errors import APIError
from service.queries.kinds import KINDS
from service.queries.parts import Part, rescale
from service.queries.plan import Plan, build_plan
from service.queries.pricing import Priced, parts_for, price
from service.schemas.query import QuerySchema
from tests.service.test_embedding_queries import build_embeddings

#: Requests of each kind (the route's privacy settings are added to each).
EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "count": [
        {"kind": "count"},
        {"kind": "count", "of": "senders", "group_by": {"time": "weekday"}},
        {"kind": "count", "of": "senders", "group_by": {"metadata": "channel"}},
        {"kind": "count", "of": "conversations", "group_by": {"metadata": "channel"}},
    ],
    "sum": [
        {"kind": "sum", "feature": "chars", "group_by": {"time": "hour_of_day"}},
        {"kind": "sum", "feature": "sentiment_pos", "max_messages_per_sender": 2},
    ],
    "mean": [
        {"kind": "mean", "feature": "tokens", "bounds": {"lower": 0, "upper": 20}},
        {"kind": "mean", "feature": "chars", "group_by": {"metadata": "channel"}},
    ],
    "variance": [{"kind": "variance", "feature": "sentiment_compound"}],
    "quantiles": [{"kind": "quantiles", "feature": "chars", "quantiles": [0.5, 0.9]}],
    "histogram": [
        {"kind": "histogram", "feature": "tokens", "bins": [0, 3, 6, 13]},
        {"kind": "histogram", "feature": "chars", "bins": [0, 50, 300], "group_by": {
            "metadata": "channel", "values": ["web", "app"]}},
    ],
    "top_terms": [
        {"kind": "top_terms", "terms": ["pizza", "refund", "nothere"]},
        {"kind": "top_terms", "k": 5, "max_terms_per_sender": 3},
    ],
    "sentiment": [{"kind": "sentiment", "group_by": {"time": "weekday"}}],
    "mean_embedding": [{"kind": "mean_embedding", "max_messages_per_sender": 8}],
    "topics": [{"kind": "topics", "clusters": 3, "iterations": 2}],
}
#: The Laplace routes get a delta only where keys are found in the data (``_body``).
ROUTES: dict[str, dict[str, Any]] = {
    "epsilon": {"privacy": {"epsilon": 0.7}},
    "gaussian": {"privacy": {"mechanism": "gaussian", "epsilon": 0.7, "delta": 1e-6}},
    "accuracy": {"privacy": {"accuracy": {"half_width": 40.0}}},
    "dry_run": {"privacy": {"epsilon": 0.7}, "dry_run": True},
    "auto_cap": {"privacy": {"epsilon": 0.7}, "max_messages_per_sender": "auto"},
}
DELTA = 1e-6


def _body(example: dict[str, Any], route: str) -> dict[str, Any]:
    body = copy.deepcopy(example)
    for key, value in ROUTES[route].items():
        body[key] = copy.deepcopy(value)
    plain = {**body, "privacy": {"epsilon": 1.0}, "dry_run": False}
    plain.pop("max_messages_per_sender", None)
    plan = build_plan(QuerySchema().load(plain), metadata_columns=["channel"])
    if plan.needs_partition_selection:
        body["privacy"].setdefault("delta", DELTA)
    return body


def _cases() -> list[Any]:
    return [
        pytest.param(_body(example, route), id=f"{name}{i}-{route}")
        for name, examples in EXAMPLES.items()
        for i, example in enumerate(examples)
        for route in ROUTES
    ]


def _priced(body: dict[str, Any]) -> tuple[Plan, Priced] | None:
    """Plan and price in process, as the view does; None if refused before the read."""
    try:
        plan = build_plan(QuerySchema().load(body), metadata_columns=["channel"])
        return plan, price(plan, max_messages=plan.max_messages)
    except (ValidationError, APIError, InvalidParameterError):
        return None


def _spent(plan: Plan, parts: list[Part]) -> float:
    """What the parts spend together: the sum of their epsilons (Laplace, basic composition)
    or of their rhos (Gaussian, zCDP)."""
    if plan.mechanism == "laplace":
        assert all(isinstance(p.mechanism, LaplaceMechanism) for p in parts)
        return math.fsum(float(p.mechanism.epsilon) for p in parts)
    assert all(isinstance(p.mechanism, GaussianMechanism) for p in parts)
    return math.fsum(float(p.mechanism.rho) for p in parts)


def _assert_dominates(plan: Plan, event: PrivacyEvent, parts: list[Part]) -> None:
    spent = _spent(plan, parts)
    # the mechanisms report their cost rounded up to the next float: allow 1e-12
    if plan.mechanism == "laplace":
        assert event.kind in ("laplace", "approx_dp") and event.epsilon is not None
        assert spent <= event.epsilon * (1 + 1e-12), (spent, event)
    else:
        assert event.kind == "gaussian" and event.rho is not None
        assert spent <= event.rho * (1 + 1e-12), (spent, event)
    if plan.needs_partition_selection:
        # the threshold spends plan.delta: the event must charge at least that much delta
        assert event.kind == "approx_dp" and event.delta is not None
        assert event.delta >= plan.delta


@pytest.fixture(scope="module")
def kinds_app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from corpus.ingest import ingest_file
    from service.app import create_app
    from tests.factories import make_messages, write_jsonl

    tmp = tmp_path_factory.mktemp("kinds")
    data = tmp / "data"
    data.mkdir()
    ingest_file(write_jsonl(tmp / "c.jsonl", make_messages()), data, workers=1)
    app = create_app({"data_dir": str(data), "testing": True})
    build_embeddings(Path(data))
    yield app
    app.extensions["privtext"].engine.dispose()


def test_every_registered_kind_has_examples() -> None:
    assert set(EXAMPLES) == set(KINDS)


@pytest.mark.parametrize("body", _cases())
def test_the_event_charged_dominates_the_parts_spent(
    kinds_app: Flask, body: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    released: list[tuple[Plan, Priced]] = []
    real = views.build_answer

    def spy(plan: Plan, priced: Priced, q: Any) -> dict[str, Any]:
        out = real(plan, priced, q)
        released.append((plan, priced))  # priced.parts now hold the mechanisms used
        return out

    monkeypatch.setattr(views, "build_answer", spy)
    engine = kinds_app.extensions["privtext"].engine
    pid = create_principal(engine, name=f"k-{uuid.uuid4().hex[:8]}", role="analyst")
    with kinds_app.app_context():
        get_ledger().set_budget(pid, Budget(epsilon=1e6, delta=1e-3))
    got = _priced(body)
    resp = kinds_app.test_client().post(
        "/v1/queries", json=body, headers={"Authorization": f"Bearer {issue_key(engine, pid)}"}
    )
    with kinds_app.app_context():
        charged = [e.event for e in get_ledger().history(pid)]

    if got is None:  # refused before the read: nothing charged, nothing released
        assert 400 <= resp.status_code < 500, resp.get_json()
        assert charged == [] and released == []
        return
    plan, priced = got
    assert resp.status_code == 200, resp.get_json()
    if plan.dry_run:
        assert charged == [] and released == []
        predicted = resp.get_json()["predicted"]["parts"]
        assert set(predicted) - {"note"} == set(priced.parts)
        return
    (event,) = charged
    assert event == priced.event
    # the parts the release spent, at the cap it chose, and the automatic cap's choice
    ((_, used),) = released
    spent = [*used.parts.values(), *([used.cap_part] if used.cap_part else [])]
    _assert_dominates(plan, event, spent)
    # every cap the release may end up with, rebuilt from the priced parts at their cost
    for cap in priced.cap_candidates:
        parts = []
        for fresh in parts_for(plan, cap):
            part = copy.copy(priced.parts[fresh.name])
            if part.sensitivity != fresh.sensitivity:
                rescale(part, plan, fresh.sensitivity)
            parts.append(part)
        _assert_dominates(plan, event, [*parts, *([priced.cap_part] if priced.cap_part else [])])
