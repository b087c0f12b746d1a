"""The application factory: ``create_app(config=None)``.

Per-process resources (the database engine, the corpus store) hang off
``app.extensions["privtext"]``; there is no module-level app and no process-global state
that would differ between gunicorn workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from sqlalchemy import Engine

from corpus.store import SnapshotStore
from service import body, errors, hardening, json_out, observability
from service.config import Settings
from service.db import engine_for, init_db


@dataclass
class Services:
    settings: Settings
    engine: Engine
    corpus: SnapshotStore
    extra: dict[str, Any] = field(default_factory=dict)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then ``PRIVTEXT_*`` environment, then ``config``."""
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
    app.extensions["privtext"] = Services(
        settings=settings, engine=engine, corpus=SnapshotStore(settings.data_dir)
    )

    observability.configure_logging(settings.log_level)
    observability.init_app(app)
    errors.register_error_handlers(app)
    body.init_app(app)
    hardening.init_app(app)

    from service import health, snapshots, whoami

    app.register_blueprint(health.bp)
    app.register_blueprint(whoami.bp)
    app.register_blueprint(snapshots.bp)

    from service import admin, budget

    app.register_blueprint(admin.bp)
    app.register_blueprint(budget.bp)

    from service.charging import run_deferred
    from service.queries import views as queries

    app.register_blueprint(queries.bp)
    app.after_request(run_deferred)

    from service import budget_page

    app.register_blueprint(budget_page.bp)

    from service import embeddings, jobs

    app.register_blueprint(jobs.bp)
    app.register_blueprint(embeddings.bp)
    return app


def services(app: Flask | None = None) -> Services:
    from flask import current_app

    return (app or current_app).extensions["privtext"]  # type: ignore[no-any-return]
