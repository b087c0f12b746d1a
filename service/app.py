"""The application factory: ``create_app(config=None)``.

Per-process resources (the database engine, the corpus store, the ledger, caches) are one
typed ``Services`` (``service/services.py``) at ``app.extensions["privtext"]``; there is no
module-level app and no process-global state that would differ between gunicorn workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from corpus.spark_session import SparkConnect
from corpus.store import SnapshotStore
from service import body, errors, hardening, json_out, observability
from service.accounts import Accounts
from service.api import (
    admin,
    budget,
    budget_page,
    embeddings,
    health,
    jobs,
    me,
    metrics,
    models,
    queries,
    snapshots,
    spec,
)
from service.auth import KeyCache
from service.charging import run_deferred
from service.config import Settings
from service.services import Services
from service.store.db import engine_for, init_db
from service.store.ledger import SqlLedger


def _spark(settings: Settings) -> SparkConnect | None:
    """The Spark Connect client when ``engine_url`` asks for one (connects on first use)."""
    if not settings.engine_url:
        return None
    return SparkConnect(
        settings.engine_url,
        query_timeout_s=float(settings.engine_query_timeout_s),
        corpus_uri=settings.spark_corpus_uri,
    )


def create_app(
    config: Mapping[str, Any] | None = None, *, ledger: SqlLedger | None = None
) -> Flask:
    """Build the app: defaults, then ``PRIVTEXT_*`` environment, then ``config``.

    ``ledger`` replaces the ledger over the app's state store (tests and benchmarks).
    """
    settings = Settings.load(config)
    hardening.private_dir(settings.data_dir)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["TESTING"] = settings.testing
    app.config["PRIVTEXT_SETTLE_AFTER_RESPONSE"] = settings.settles_after_response
    json_out.init_app(app)  # no Infinity or NaN in any body
    app.json.sort_keys = False  # type: ignore[attr-defined]

    engine = engine_for(settings)
    init_db(engine)
    ledger = ledger if ledger is not None else SqlLedger(engine)
    ttl = settings.key_cache_seconds
    svc = Services(
        settings=settings,
        engine=engine,
        corpus=SnapshotStore(settings.data_dir),
        ledger=ledger,
        accounts=Accounts(engine, ledger),
        metrics=observability.Metrics(),
        key_cache=KeyCache(ttl) if ttl > 0 else None,
        spark=_spark(settings),
    )
    app.extensions["privtext"] = svc

    observability.configure_logging(settings.log_level)
    observability.init_app(app, svc.metrics)
    errors.register_error_handlers(app)
    body.init_app(app)
    hardening.init_app(app)

    for bp in (
        health.bp,
        metrics.bp,
        spec.bp,
        me.bp,
        snapshots.bp,
        admin.bp,
        budget.bp,
        queries.bp,
        budget_page.bp,
        jobs.bp,
        models.bp,
        embeddings.bp,
    ):
        app.register_blueprint(bp)
    app.after_request(run_deferred)
    return app

