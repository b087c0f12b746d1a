"""POST /v1/queries end to end: every kind answers, is charged, bounded and validated."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from corpus.ingest import ingest_file
from mechanisms.ledger import Budget
from service.app import create_app
from service.auth import create_principal, issue_key
from service.charging import get_ledger
from tests.factories import make_messages, write_jsonl

Post = Callable[..., Any]


def _fund(app: Flask, epsilon: float = 1000.0, delta: float = 1e-4) -> tuple[str, str]:
    engine = app.extensions["privtext"].engine
    pid = create_principal(engine, name="q", role="analyst")
    with app.app_context():
        get_ledger().set_budget(pid, Budget(epsilon=epsilon, delta=delta))
    return pid, issue_key(engine, pid)


@pytest.fixture
def post(app: Flask) -> Post:
    _, token = _fund(app)
    client = app.test_client()

    def _post(body: dict[str, Any], token_: str = token):  # type: ignore[no-untyped-def]
        return client.post("/v1/queries", json=body, headers={"Authorization": f"Bearer {token_}"})

    return _post


def _remaining(app: Flask, pid: str) -> float:
    with app.app_context():
        return get_ledger().remaining(pid, tight=False).remaining_epsilon  # type: ignore[no-any-return]


KINDS: list[dict[str, Any]] = [
    {"kind": "count"},
    {"kind": "count", "of": "senders"},
    {"kind": "count", "of": "conversations"},
    {"kind": "sum", "feature": "chars"},
    {"kind": "mean", "feature": "tokens", "bounds": {"lower": 0, "upper": 20}},
    {"kind": "variance", "feature": "sentiment_compound"},
    {"kind": "quantiles", "feature": "chars", "quantiles": [0.5, 0.9]},
    {"kind": "histogram", "feature": "tokens", "bins": [0, 3, 6, 13]},
    {"kind": "count", "group_by": {"time": "hour_of_day"}},
    {
        "kind": "mean",
        "feature": "chars",
        "group_by": {"metadata": "channel", "values": ["web", "app"]},
    },
    {"kind": "sentiment"},
    {
        "kind": "sentiment",
        "group_by": {"time": "weekday"},
        "filters": {"keywords": {"terms": ["refund"]}},
    },
    {"kind": "top_terms", "terms": ["pizza", "refund", "nothere"]},
    {"kind": "count", "privacy": {"mechanism": "gaussian", "epsilon": 1.0, "delta": 1e-6}},
    {"kind": "count", "max_messages_per_sender": "auto"},
    {
        "kind": "histogram",
        "feature": "chars",
        "bins": [0, 20, 40, 80],
        "privacy": {"accuracy": {"half_width": 40}},
    },
]


@pytest.mark.parametrize("body", KINDS, ids=lambda b: "-".join(str(v) for v in b.values())[:60])
def test_every_kind_answers_and_is_charged(app: Flask, body: dict[str, Any]) -> None:
    pid, token = _fund(app)
    before = _remaining(app, pid)
    resp = app.test_client().post(
        "/v1/queries", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 200, resp.get_json()
    out = resp.get_json()
    assert out["replay"] is False and out["dry_run"] is False
    assert out["snapshot_id"].startswith("snap-")
    assert out["cost"]["epsilon"] > 0
    assert ("result" in out) != ("groups" in out)
    assert out["mechanism"]["name"] == body.get("privacy", {}).get("mechanism", "laplace")
    assert isinstance(out["bias"], list)
    assert _remaining(app, pid) < before
    assert out["budget"]["remaining_epsilon"] == pytest.approx(_remaining(app, pid))


def test_answers_carry_no_raw_rows(post: Post) -> None:
    text = post({"kind": "count", "group_by": {"metadata": "channel", "values": ["web"]}}).get_data(
        as_text=True
    )
    for forbidden in ("user0", "conv0", "refund terrible"):
        assert forbidden not in text


def test_interval_contains_value_and_matches_level(post: Post) -> None:
    out = post({"kind": "count", "confidence_level": 0.9}).get_json()
    lo, hi = out["result"]["interval"]
    assert lo < out["result"]["value"] < hi
    scale = out["mechanism"]["noise"]["count"]["scale"]
    # discrete Laplace: P(|Z| > t) ~ exp(-t / scale); a 90% half-width is about scale * ln 10
    assert (hi - lo) / 2 == pytest.approx(scale * 2.302585, rel=0.15)


def test_empty_filter_is_a_noisy_zero_not_an_error(post: Post) -> None:
    body = {"kind": "count", "filters": {"keywords": {"terms": ["nowordlikethis"]}}}
    out = post(body).get_json()
    assert "value" in out["result"] and abs(out["result"]["value"]) < 2000


def test_replay_is_free_and_dry_run_charges_nothing(app: Flask) -> None:
    pid, token = _fund(app)
    c = app.test_client()
    h = {"Authorization": f"Bearer {token}"}
    dry = c.post("/v1/queries", json={"kind": "count", "dry_run": True}, headers=h).get_json()
    assert dry["dry_run"] is True and "result" not in dry
    assert dry["predicted"]["parts"]["count"]["half_width"] > 0
    start = _remaining(app, pid)
    assert start == pytest.approx(_remaining(app, pid))
    first = c.post("/v1/queries", json={"kind": "count"}, headers=h).get_json()
    after_first = _remaining(app, pid)
    assert after_first < start
    again = c.post("/v1/queries", json={"kind": "count"}, headers=h).get_json()
    assert again["replay"] is True and again["cost"]["epsilon"] == 0
    assert again["result"] == first["result"]
    assert _remaining(app, pid) == pytest.approx(after_first)


BAD = [
    ({"kind": "mean", "feature": "nope"}, "feature"),
    ({"kind": "mean", "feature": "chars", "bounds": {"lower": 5, "upper": 1}}, "bounds"),
    ({"kind": "count", "privacy": {"epsilon": 0}}, "privacy"),
    ({"kind": "count", "privacy": {"epsilon": float("inf")}}, None),
    ({"kind": "top_terms", "k": 100000}, "k"),
    ({"kind": "histogram", "feature": "chars", "bins": [3, 2, 1]}, "bins"),
    (
        {"kind": "count", "group_by": {"metadata": "undeclared_col", "values": ["x"]}},
        "group_by.metadata",
    ),
    ({"kind": "count", "surprise": 1}, "surprise"),
    ({"kind": "count", "group_by": {"time": "day"}}, "group_by"),
    ({"kind": "count", "privacy": {"delta": 1e-6}}, "privacy"),
    ({"kind": "mean", "feature": "chars", "privacy": {"accuracy": {"half_width": 1}}}, "privacy"),
    ({"kind": "count", "max_messages_per_sender": 0}, "max_messages_per_sender"),
]


@pytest.mark.parametrize(("body", "field"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_queries_are_4xx_and_free(app: Flask, body: dict[str, Any], field: str | None) -> None:
    pid, token = _fund(app)
    before = _remaining(app, pid)
    from service.store.ledger_tables import audit_log

    engine = app.extensions["privtext"].engine
    with engine.connect() as conn:
        rows_before = conn.execute(select(func.count()).select_from(audit_log)).scalar()
    resp = app.test_client().post(
        "/v1/queries",
        data=__import__("json").dumps(body, allow_nan=True),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert 400 <= resp.status_code < 500, resp.get_json()
    err = resp.get_json()
    assert err["status"] == resp.status_code
    if field is not None:
        assert field.split(".")[0] in str(err["errors"]) or field in err["message"]
    assert _remaining(app, pid) == before
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_log)).scalar() == rows_before


def test_no_answer_without_a_charge(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no budget left, the corpus is never read and nothing is released."""
    pid, token = _fund(app, epsilon=0.5)
    touched = []
    import service.api.queries as views

    real = views.CorpusQuery

    def spy(*a: Any, **k: Any) -> Any:
        touched.append(1)
        return real(*a, **k)

    monkeypatch.setattr(views, "CorpusQuery", spy)
    resp = app.test_client().post(
        "/v1/queries",
        json={"kind": "count", "privacy": {"epsilon": 1.0}},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status_code == 409
    body = resp.get_json()
    assert body["code"] == "budget_exhausted"
    assert body["errors"]["remaining_epsilon"] == pytest.approx(0.5)
    assert touched == []
    assert "result" not in body and "value" not in str(body)


def test_admins_cannot_query(client: FlaskClient, admin_token: str) -> None:
    resp = client.post(
        "/v1/queries", json={"kind": "count"}, headers={"Authorization": f"Bearer {admin_token}"}
    )
    assert resp.status_code == 403


@pytest.fixture
def heavy_app(tmp_path: Path):  # type: ignore[no-untyped-def]
    """300 light senders who all say 'pizza', and one heavy sender who repeats a secret."""
    rows = make_messages(n_senders=300, per_sender=4, seed=3)
    for i, r in enumerate(rows):
        r["text"] = f"pizza {('ok', 'fine', 'great')[i % 3]}"
    rows += [
        {
            "sender": "heavy",
            "conversation": "c-heavy",
            "timestamp": "2024-01-05T10:00:00+00:00",
            "text": "zzsecretphrase again",
            "channel": "web",
        }
        for _ in range(2000)
    ]
    data = tmp_path / "hd"
    ingest_file(write_jsonl(tmp_path / "h.jsonl", rows), data, workers=1)
    app = create_app({"data_dir": str(data), "testing": True})
    yield app
    app.extensions["privtext"].engine.dispose()


def test_per_sender_cap_is_applied(heavy_app: Flask) -> None:
    _, token = _fund(heavy_app)
    c = heavy_app.test_client()
    h = {"Authorization": f"Bearer {token}"}
    out = c.post(
        "/v1/queries",
        json={"kind": "count", "max_messages_per_sender": 4, "privacy": {"epsilon": 10}},
        headers=h,
    ).get_json()
    # 301 senders x at most 4 messages = 1204; without the cap it would be 3200.
    # Laplace scale 0.4: |noise| < 10 with probability 1 - e^-25.
    assert out["result"]["value"] == pytest.approx(1204, abs=10)


def test_partition_threshold_hides_one_senders_term(heavy_app: Flask) -> None:
    _, token = _fund(heavy_app, epsilon=10_000, delta=1e-3)
    c = heavy_app.test_client()
    h = {"Authorization": f"Bearer {token}"}
    seen_pizza = 0
    for i in range(20):
        body = {
            "kind": "top_terms",
            "k": 5 + i % 5,
            "max_terms_per_sender": 3,
            "privacy": {"epsilon": 2.0 + i / 100, "delta": 1e-6},
        }
        out = c.post("/v1/queries", json=body, headers=h).get_json()
        terms = [t["term"] for t in out["result"]["terms"]]
        assert "zzsecretphrase" not in terms
        seen_pizza += "pizza" in terms
    # 301 distinct senders say pizza: it should clear the threshold nearly always.
    assert seen_pizza >= 18
