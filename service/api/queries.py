"""``POST /v1/queries``: one endpoint for every statistics and sentiment query.

validate (schema) -> plan -> price -> [run_charged: replay | dry run | rate limit, claim,
reserve -> compute (read the corpus, add noise) -> audit -> commit]. The per-analyst rate
limit (every worker and host counted together: 429 ``rate_limited`` with Retry-After beyond
``query_rate_per_minute``) is counted inside the reservation's transaction. No data is read
before the reservation, and nothing is charged, read or audited for a request over the rate
limit; requests refused by the schema, the plan or the price (422) are not counted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from corpus.duckdb_engine import DuckDBEngine as CorpusQuery
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
        info, cur = store.cursor(snapshot.id)
        try:
            q = CorpusQuery(cur, plan) if embedding is None else embedding.query(cur, plan)
            answer = build_answer(plan, priced, q)
        finally:
            cur.close()
        return {"kind": plan.kind, **answer}

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
