"""A failure is an answer too: no query may tell, by failing or not, anything about the data.

Three properties, each of which failed on the code before issue 10:

1. **Pairs.** Every query kind, sent twice with filters that differ only in whether they match
   any message, gets the same status and the same charge (including the requests that used to
   fail only when rows matched: bounds far from zero, sums near 2**52 grid units, automatic
   caps whose noise would be out of range).
2. **Property (hypothesis).** Over random bounds, bins, filters, caps and privacy parameters, a
   request either is refused before the corpus is read (4xx, nothing charged, the store's read
   counter unchanged) or is charged; never an uncharged 500.
3. **Dominance.** For every kind and every pricing route (epsilon with Laplace or Gaussian,
   accuracy, automatic cap, key discovery), the privacy event charged covers every noisy
   part the answer spends, at every cap the release may end up with, and the delta that the
   partition-selection threshold spends.
"""

from __future__ import annotations

import copy
import math
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus.duckdb_engine import DuckDBEngine as CorpusQuery
from mechanisms.ledger import Budget
from service.auth import create_principal, issue_key
from service.charging import get_ledger
from service.queries.parts import rescale
from service.queries.plan import build_plan
from service.queries.pricing import Priced, parts_for, price
from service.schemas.query import QuerySchema

pytestmark = pytest.mark.seconds  # some 200 requests, about 30 s in all

Post = Callable[[dict[str, Any]], tuple[int, dict[str, Any], list[Any], int]]

MATCH = {
    "keywords": ({"keywords": {"terms": ["pizza"]}}, {"keywords": {"terms": ["zzqqxxnone"]}}),
    "time": (
        {"time_range": {"start": "2024-01-01T00:00:00Z", "end": "2024-04-01T00:00:00Z"}},
        {"time_range": {"start": "2031-01-01T00:00:00Z", "end": "2031-02-01T00:00:00Z"}},
    ),
    "metadata": ({"metadata": {"channel": ["web"]}}, {"metadata": {"channel": ["nowhere"]}}),
}

FAR = 2.0**39  # chars bounds this far from zero: every matched row is ~2**39 grid units
KINDS: list[dict[str, Any]] = [
    {"kind": "count"},
    {"kind": "count", "of": "senders"},
    {"kind": "count", "of": "conversations"},
    {"kind": "count", "of": "senders", "max_messages_per_sender": "auto"},
    {"kind": "sum", "feature": "chars"},
    {"kind": "mean", "feature": "tokens", "bounds": {"lower": 0, "upper": 20}},
    {"kind": "variance", "feature": "sentiment_compound"},
    {"kind": "quantiles", "feature": "chars", "quantiles": [0.5, 0.9]},
    {"kind": "histogram", "feature": "tokens", "bins": [0, 3, 6, 13]},
    {"kind": "sentiment"},
    {"kind": "top_terms", "terms": ["pizza", "refund", "nothere"]},
    {"kind": "top_terms", "privacy": {"epsilon": 1.0, "delta": 1e-7}},
    {"kind": "top_terms", "k": 10, "bigrams": True, "privacy": {"epsilon": 0.25, "delta": 1e-7}},
    {"kind": "top_terms", "privacy": {"accuracy": {"half_width": 30}, "delta": 1e-7}},
    {"kind": "count", "group_by": {"time": "hour_of_day"}},
    {
        "kind": "count",
        "group_by": {
            "time": "day",
            "range": {"start": "2024-01-01T00:00:00Z", "end": "2024-01-10T00:00:00Z"},
        },
    },
    {"kind": "mean", "feature": "chars", "group_by": {"metadata": "channel"}},
    {"kind": "count", "of": "senders", "group_by": {"metadata": "channel"}},
    {
        "kind": "count",
        "of": "senders",
        "group_by": {"metadata": "channel"},
        "privacy": {"accuracy": {"half_width": 10}},
    },
    {"kind": "count", "privacy": {"mechanism": "gaussian", "epsilon": 1.0, "delta": 1e-6}},
    {"kind": "count", "privacy": {"mechanism": "gaussian", "accuracy": {"half_width": 50}}},
    {"kind": "sum", "feature": "chars", "privacy": {"accuracy": {"half_width": 5000}}},
    {"kind": "mean", "feature": "chars", "max_messages_per_sender": "auto"},
    # the reproductions of issue 10: data-dependent failures before the fix
    {
        "kind": "mean",
        "feature": "chars",
        "bounds": {"lower": 1e23, "upper": 1.0000000000000003e23},
        "privacy": {"epsilon": 0.01},
    },
    {
        "kind": "sum",
        "feature": "chars",
        "bounds": {"lower": FAR, "upper": FAR + 1024},
        "max_messages_per_sender": 1,
        "privacy": {"epsilon": 10},
    },
    {"kind": "mean", "feature": "chars", "bounds": {"lower": FAR, "upper": FAR + 1024}},
    {
        "kind": "sum",
        "feature": "chars",
        "bounds": {"lower": FAR / 64, "upper": FAR / 64 + 1024},
        "max_messages_per_sender": "auto",
        "privacy": {"epsilon": 0.05},
    },
    {"kind": "mean_embedding"},
]


def _fund(app: Flask, *, epsilon: float = 1e6, delta: float = 1e-3) -> tuple[str, str]:
    engine = app.extensions["privtext"].engine
    pid = create_principal(engine, name=f"probe-{uuid.uuid4().hex[:8]}", role="analyst")
    with app.app_context():
        get_ledger().set_budget(pid, Budget(epsilon=epsilon, delta=delta))
    return pid, issue_key(engine, pid)


@pytest.fixture
def post(app: Flask) -> Post:
    """POST a query as a fresh analyst: (status, body, events charged, corpus reads)."""
    store = app.extensions["privtext"].corpus
    client = app.test_client()

    def _post(body: dict[str, Any]) -> tuple[int, dict[str, Any], list[Any], int]:
        pid, token = _fund(app)
        reads = store.reads
        resp = client.post("/v1/queries", json=body, headers={"Authorization": f"Bearer {token}"})
        with app.app_context():
            charged = [(e.status, e.event.to_dict()) for e in get_ledger().history(pid)]
        return resp.status_code, resp.get_json(), charged, store.reads - reads

    return _post


def _with_filters(body: dict[str, Any], filters: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out["filters"] = {**out.get("filters", {}), **filters}
    return out


def _shape(status: int, body: dict[str, Any]) -> Any:
    """What may be compared between the two answers of a pair: an error whole (less its
    request id), an answer by its kind and keys."""
    if status >= 400:
        return {k: v for k, v in body.items() if k != "request_id"}
    return (body.get("kind"), "result" in body, "groups" in body, body["cost"]["event"])


@pytest.mark.parametrize("how", sorted(MATCH))
@pytest.mark.parametrize("body", KINDS, ids=lambda b: "-".join(str(v) for v in b.values())[:70])
def test_matching_or_not_gives_the_same_status_and_charge(
    post: Post, body: dict[str, Any], how: str
) -> None:
    matching, empty = MATCH[how]
    s1, b1, c1, _ = post(_with_filters(body, matching))
    s2, b2, c2, _ = post(_with_filters(body, empty))
    assert s1 == s2, (b1, b2)
    assert c1 == c2
    assert _shape(s1, b1) == _shape(s2, b2)
    assert s1 != 500, b1


def test_issue_reproductions_are_refused_or_answered(post: Post) -> None:
    """The issue's three data-dependent failures: now a 4xx before the read, or an answer."""
    status, body, charged, reads = post(_with_filters(KINDS[23], MATCH["keywords"][0]))
    assert status == 422 and body["errors"].get("bounds") and charged == [] and reads == 0
    for body_ in (KINDS[24], KINDS[25], KINDS[26]):
        status, out, charged, reads = post(body_)
        assert status == 200, out
        assert [s for s, _ in charged] == ["committed"] and reads == 1


EXTREME: list[dict[str, Any]] = [
    {"kind": "sum", "feature": "chars", "bounds": {"lower": -1e308, "upper": 1e308}},
    {"kind": "mean", "feature": "chars", "bounds": {"lower": 0, "upper": 5e-324}},
    {"kind": "histogram", "feature": "chars", "bins": [0, 5e-324]},
    {"kind": "histogram", "feature": "chars", "bins": [-1e308, 0, 1e308]},
    {"kind": "quantiles", "feature": "tokens", "bounds": {"lower": -1.7e308, "upper": 1.7e308}},
    {"kind": "count", "privacy": {"mechanism": "gaussian", "accuracy": {"half_width": 1e300}}},
    {"kind": "count", "privacy": {"accuracy": {"half_width": 1e300}}},
    {"kind": "count", "privacy": {"accuracy": {"half_width": 1e-9}}},
    {"kind": "sum", "feature": "chars", "privacy": {"epsilon": 1e-300}},
    {"kind": "count", "privacy": {"epsilon": 1e-300}, "max_messages_per_sender": "auto"},
    {
        "kind": "count",
        "filters": {
            "time_range": {"start": "0001-01-01T00:00:00+05:00", "end": "2024-01-01T00:00:00Z"}
        },
    },
    {
        "kind": "count",
        "filters": {
            "time_range": {"start": "2024-01-01T00:00:00Z", "end": "9999-12-31T23:59:59-05:00"}
        },
    },
    {
        "kind": "count",
        "group_by": {
            "time": "day",
            "range": {"start": "0001-01-01T00:00:00+14:00", "end": "0001-01-03T00:00:00Z"},
        },
    },
]


@pytest.mark.parametrize("body", EXTREME, ids=lambda b: str(b)[:70])
def test_extreme_inputs_get_a_clear_4xx_before_the_read(post: Post, body: dict[str, Any]) -> None:
    status, out, charged, reads = post(body)
    assert status == 422, out
    assert out["code"] in ("validation_error", "invalid_privacy_parameter") and out["message"]
    assert charged == [] and reads == 0


def test_aggregates_beyond_the_exact_range_are_clamped_not_refused() -> None:
    """An exact sum of 2**70 grid units (more rows than the old 2**52 check allowed) is clamped
    to +/- 2**50 before noise, a contraction that keeps the sensitivity, instead of failing."""
    from mechanisms.laplace import LaplaceMechanism
    from service.queries.parts import AGGREGATE_LIMIT, Part, noisy

    part = Part("sum", 1.0, 1.0, LaplaceMechanism(sensitivity=1.0, epsilon=1.0))
    out = noisy(part, [2**70, -(2**70), 5])
    assert abs(out[0] - AGGREGATE_LIMIT) < 1000 and abs(out[1] + AGGREGATE_LIMIT) < 1000
    assert abs(out[2] - 5) < 1000


def test_bigrams_are_discovered(post: Post) -> None:
    status, body, charged, _ = post(
        {"kind": "top_terms", "k": 10, "bigrams": True, "privacy": {"epsilon": 5, "delta": 1e-6}}
    )
    assert status == 200, body
    assert charged[0][1]["kind"] == "approx_dp"
    assert all(isinstance(t["term"], str) for t in body["result"]["terms"])


def test_count_of_senders_with_auto_cap_pays_for_no_cap(post: Post) -> None:
    _, fixed, _, _ = post({"kind": "count", "of": "senders", "privacy": {"epsilon": 1.0}})
    _, auto, _, _ = post(
        {
            "kind": "count",
            "of": "senders",
            "max_messages_per_sender": "auto",
            "privacy": {"epsilon": 1.0},
        }
    )
    # the whole epsilon buys the count: the same noise as with a fixed cap
    assert auto["mechanism"]["noise"] == fixed["mechanism"]["noise"]
    assert "auto_cap" not in auto["mechanism"]["noise"]


def test_no_sql_value_exceeds_the_priced_bound(app: Flask) -> None:
    """Bounds whose grid value Python rounds half to even (down) while DuckDB rounds half away
    from zero (up): chars in [0, 20.5078125] with step 2**-6 puts the upper bound at 1312.5
    steps. Every value the SQL yields must lie within [lower_q, upper_q] all the same."""
    store = app.extensions["privtext"].corpus
    for lower, upper in ((0.0, 20.5078125), (-20.5078125, 0.0), (2.5, 3.5), (0.5, 1.5)):
        req = QuerySchema().load(
            {"kind": "sum", "feature": "chars", "bounds": {"lower": lower, "upper": upper}}
        )
        plan = build_plan(req, metadata_columns=["channel"])
        grid = plan.grid
        assert grid is not None
        _, cur = store.cursor()
        try:
            q = CorpusQuery(cur, plan)
            sql, params = q.capped(f"{q._value_q()} + {grid.offset_q} AS v", 100)
            lo, hi = cur.execute(f"SELECT min(v), max(v) FROM ({sql})", params).fetchone()
        finally:
            cur.close()
        assert grid.lower_q <= lo <= hi <= grid.upper_q, (lower, upper, lo, hi, grid)


# -- property: refused before the read, or charged ------------------------------------------
_FEATURES = ["chars", "tokens", "sentiment_compound", "sentiment_pos"]
_EXTREMES = [0.0, 5e-324, 1e-300, 1e-12, 1.0, 300.0, 2.0**39, 2.0**52, 1e23, 1e300, 1.7e308]
_floats = st.one_of(
    st.sampled_from(_EXTREMES + [-x for x in _EXTREMES]),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.floats(min_value=-1000, max_value=1000),
)
_instants = st.sampled_from(
    [
        "1900-01-01T00:00:00Z",
        "1969-12-31T23:59:59-05:00",
        "2024-01-01T00:00:00Z",
        "2024-02-15T12:00:00+02:00",
        "2030-01-01T00:00:00Z",
        "2199-12-31T23:00:00-05:00",
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59-05:00",
    ]
)


@st.composite
def _requests(draw: st.DrawFn) -> dict[str, Any]:  # noqa: C901 - a hypothesis strategy: one branch per query kind's fields
    kind = draw(
        st.sampled_from(
            ["count", "sum", "mean", "variance", "quantiles", "histogram", "top_terms", "sentiment"]
        )
    )
    body: dict[str, Any] = {"kind": kind}
    if kind in ("sum", "mean", "variance", "quantiles", "histogram"):
        body["feature"] = draw(st.sampled_from(_FEATURES))
        if draw(st.booleans()):
            lo, hi = sorted([draw(_floats), draw(_floats)])
            if lo < hi:
                body["bounds"] = {"lower": lo, "upper": hi}
    if kind == "histogram":
        edges = sorted({draw(_floats) for _ in range(draw(st.integers(2, 6)))})
        body["bins"] = edges if len(edges) >= 2 else [0.0, 1.0]
    if kind == "count":
        body["of"] = draw(st.sampled_from(["messages", "senders", "conversations"]))
    if kind == "top_terms" and draw(st.booleans()):
        body["terms"] = draw(st.lists(st.sampled_from(["pizza", "refund", "zz"]), min_size=1))
    if kind == "top_terms" and "terms" not in body:
        body["bigrams"] = draw(st.booleans())
    filters: dict[str, Any] = {}
    if draw(st.booleans()):
        filters["keywords"] = {"terms": [draw(st.sampled_from(["pizza", "love", "zzqq"]))]}
    if draw(st.booleans()):
        start, end = sorted([draw(_instants), draw(_instants)])
        if start != end:
            filters["time_range"] = {"start": start, "end": end}
    if draw(st.booleans()):
        filters["metadata"] = {"channel": [draw(st.sampled_from(["web", "app", "none"]))]}
    if filters:
        body["filters"] = filters
    if kind not in ("top_terms", "quantiles") and draw(st.booleans()):
        body["group_by"] = draw(
            st.sampled_from(
                [
                    {"time": "weekday"},
                    {"metadata": "channel"},
                    {"metadata": "channel", "values": ["web"]},
                ]
            )
        )
    cap = draw(st.sampled_from([None, "auto", 1, 7, 100, 10_000]))
    if cap is not None:
        body["max_messages_per_sender"] = cap
    privacy: dict[str, Any] = {}
    if draw(st.booleans()):
        privacy["mechanism"] = draw(st.sampled_from(["laplace", "gaussian"]))
    route = draw(st.sampled_from(["epsilon", "accuracy", "default"]))
    if route == "epsilon":
        privacy["epsilon"] = draw(st.sampled_from([1e-300, 1e-9, 1e-3, 0.05, 1.0, 10.0]))
    elif route == "accuracy":
        privacy["accuracy"] = {"half_width": draw(st.sampled_from([1e-3, 0.5, 30.0, 1e6, 1e300]))}
    if draw(st.booleans()):
        privacy["delta"] = draw(st.sampled_from([1e-12, 1e-7, 1e-3]))
    if privacy:
        body["privacy"] = privacy
    return body


@pytest.mark.seconds
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=_requests())
def test_refused_before_the_read_or_charged(post: Post, body: dict[str, Any]) -> None:
    status, out, charged, reads = post(body)
    if status == 200:
        assert reads == 1 and [s for s, _ in charged] == ["committed"], out
    elif status == 500:
        # only the one fixed failure, and charged (it comes after the read)
        assert out["code"] == "query_failed", out
        assert reads == 1 and [s for s, _ in charged] == ["committed"]
    else:
        assert 400 <= status < 500, out
        assert reads == 0 and charged == [], (status, out)


# -- dominance: the event charged covers every part spent -----------------------------------
ROUTES: list[dict[str, Any]] = [
    {"epsilon": 0.7},
    {"mechanism": "gaussian", "epsilon": 0.7, "delta": 1e-6},
    {"accuracy": {"half_width": 40.0}},
    {"mechanism": "gaussian", "accuracy": {"half_width": 40.0}, "delta": 1e-6},
]
DOMINANCE_KINDS: list[dict[str, Any]] = [
    *KINDS[:23],
    {"kind": "mean_embedding"},
    {"kind": "topics", "clusters": 3, "iterations": 2},
]


def _plans() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for body in DOMINANCE_KINDS:
        for route in ROUTES:
            for cap in (None, "auto"):
                b = copy.deepcopy(body)
                b["privacy"] = {**b.get("privacy", {}), **route}
                if "accuracy" in b["privacy"] and "epsilon" in b["privacy"]:
                    del b["privacy"]["epsilon"]
                if cap and "max_messages_per_sender" not in b:
                    b["max_messages_per_sender"] = cap
                out.append((str(b)[:90], b))
    return out


def _priced(body: dict[str, Any]) -> tuple[Any, Priced] | None:
    from marshmallow import ValidationError

    from mechanisms.errors import InvalidParameterError
    from service.errors import APIError

    try:
        plan = build_plan(QuerySchema().load(body), metadata_columns=["channel"])
        return plan, price(plan, max_messages=plan.max_messages)
    except (ValidationError, APIError, InvalidParameterError):
        return None  # refused before anything is read: nothing spent


@pytest.mark.parametrize("body", [b for _, b in _plans()], ids=[i for i, _ in _plans()])
def test_the_event_charged_dominates_every_part(body: dict[str, Any]) -> None:
    got = _priced(body)
    if got is None:
        return
    plan, priced = got
    event = priced.event
    # Every cap the release may end up with, and the parts rebuilt at it (cost is kept).
    for cap in priced.cap_candidates:
        parts = []
        for fresh in parts_for(plan, cap):
            part = copy.copy(priced.parts[fresh.name])
            if part.sensitivity != fresh.sensitivity:
                rescale(part, plan, fresh.sensitivity)
            parts.append(part)
        if priced.cap_part is not None:
            parts.append(priced.cap_part)
        if plan.mechanism == "laplace":
            spent = math.fsum(float(p.mechanism.epsilon) for p in parts)
            assert event.kind in ("laplace", "approx_dp")
            # the mechanisms report epsilon rounded up to the next float: allow 1e-12
            assert spent <= event.epsilon * (1 + 1e-12), (spent, event)
        else:
            spent_rho = math.fsum(float(p.mechanism.rho) for p in parts)
            assert event.kind == "gaussian"
            assert spent_rho <= event.rho * (1 + 1e-12), (spent_rho, event)
    if plan.needs_partition_selection:
        # the threshold spends plan.delta: the event must charge at least that delta
        assert event.kind == "approx_dp" and event.delta >= plan.delta
        assert priced.threshold is not None
