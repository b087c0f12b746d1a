"""``POST /v1/queries``: one endpoint for every statistics and sentiment query.

validate (schema) -> plan -> price -> [run_charged: replay | dry run | rate limit, claim,
reserve -> compute (read the corpus, add noise) -> audit -> commit]. The per-analyst rate
limit (every worker and host counted together: 429 ``rate_limited`` with Retry-After beyond
``query_rate_per_minute``) is counted inside the reservation's transaction. No data is read
before the reservation, and nothing is charged, read or audited for a request over the rate
limit; requests refused by the schema, the plan or the price (422) are not counted.

With the Spark engine (``engine_url``), a kind Spark does not compute is refused (422
``unsupported_by_engine``) and an unreachable Spark answers 503 ``engine_unavailable``, both
before the reservation: nothing charged, read or audited.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from corpus.duckdb_engine import DuckDBEngine as CorpusQuery
from corpus.engine import Engine
from corpus.spark_engine import SparkEngine
from corpus.spark_session import SparkConnect, SparkUnavailable
from service.auth import current_principal, require
from service.body import json_body
from service.charging import run_charged
from service.errors import APIError
from service.queries.answer import build_answer
from service.queries.kinds.embedding import prepare
from service.queries.parts import half_width
from service.queries.plan import EMBEDDING_KINDS, build_plan
from service.queries.pricing import price
from service.schemas.query import QuerySchema
from service.store import ratelimit

bp = Blueprint("queries", __name__)
_schema = QuerySchema()


@bp.post("/v1/queries")
@require("analyst")
def create_query() -> Response:
    principal = current_principal()
    req = _schema.load(json_body())
    svc = current_app.extensions["privtext"]
    store = svc.corpus
    snapshot = store.live()
    if snapshot is None:
        raise APIError(503, "no_snapshot", "No corpus snapshot is live yet.")
    plan = build_plan(req, metadata_columns=list(snapshot.metadata_columns))
    spark = svc.spark
    if spark is not None and plan.kind in EMBEDDING_KINDS:
        raise APIError(
            422,
            "unsupported_by_engine",
            "This kind of query reads message embeddings, which the Spark engine does not; "
            "it is answered only by the embedded DuckDB engine.",
            {"kind": [f"{plan.kind} is not available with the Spark engine."]},
        )
    embedding = None
    if plan.kind in EMBEDDING_KINDS:
        # 409 when the embeddings are not built: decided before anything is charged
        cache = svc.vocabularies
        embedding = prepare(svc.settings.data_dir, snapshot, cache)
        plan = dataclasses.replace(plan, model_id=embedding.model_id)
    priced = price(plan, max_messages=plan.max_messages)
    predicted: dict[str, Any] = {
        name: {"half_width": half_width(p, plan.level), "sensitivity": p.sensitivity}
        for name, p in priced.parts.items()
    }
    if plan.max_messages is None:
        predicted["note"] = "with the automatic cap, half-widths are known only after it is chosen"

    def compute() -> dict[str, Any]:
        if spark is not None:
            return {"kind": plan.kind, **build_answer(plan, priced, _spark_engine(spark))}
        info, cur = store.cursor(snapshot.id)
        try:
            q = CorpusQuery(cur, plan) if embedding is None else embedding.query(cur, plan)
            answer = build_answer(plan, priced, q)
        finally:
            cur.close()
        return {"kind": plan.kind, **answer}

    def _spark_engine(spark: SparkConnect) -> Engine:
        store.reads += 1
        uri = spark.snapshot_uri(snapshot.messages_path, svc.settings.data_dir)
        return SparkEngine(spark, uri, plan)

    if spark is not None and not plan.dry_run:
        _require(spark)

    result = run_charged(
        principal,
        query=plan.normalised(),
        snapshot_id=snapshot.id,
        event=priced.event,
        compute=compute,
        dry_run=plan.dry_run,
        predicted={"confidence_level": plan.level, "parts": predicted},
        rate=ratelimit.queries_counter(principal.id, svc.settings.query_rate_per_minute),
    )
    return jsonify(result)


def _require(spark: SparkConnect) -> None:
    """503 ``engine_unavailable`` unless Spark Connect answers now (before the reservation)."""
    try:
        spark.require()
    except SparkUnavailable:
        raise APIError(
            503,
            "engine_unavailable",
            "The scan engine (Spark) cannot be reached; nothing was charged.",
            headers={"Retry-After": "5"},
        ) from None
