"""The service's job queue and the context its jobs run in, shared by the web app (the jobs
and embeddings routes) and ``privtext worker``.

The queue is huey on SQLite in the data directory, on Redis (``PRIVTEXT_QUEUE_URL``), or
inline in the web worker (``memory://``, tests). The context gives a job the state store, the
data directory, the ledger it settles against, the active model and the encoder settings. In
the app both are made on first use and kept in its ``Services`` (``queue``, ``job_context``),
so an app that never queues a job opens no queue; they use the app's ledger.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask.sansio.app import App

from jobs import queue as jobqueue
from mechanisms.ledger import Ledger
from models import job_bodies as bodies
from models.registry import ModelRegistry
from service.config import Settings
from service.services import services
from service.store.ledger import SqlLedger


def active_model(data_dir: str | Path) -> tuple[str, Path]:
    """``(id, path)`` of the active model version ("base": the public weights)."""

    version = ModelRegistry(data_dir).active()
    return version.id, Path(version.path)


def encoder_options(settings: Settings) -> dict[str, Any]:
    runtime = settings.embedding_runtime or None
    if runtime is not None and runtime == os.environ.get("PRIVTEXT_EMBEDDING_RUNTIME"):
        # set for the host: the encoder reads it itself, and runs torch where it cannot apply
        runtime = None
    return {
        "device": settings.embedding_device or None,
        "precision": settings.embedding_precision,
        "runtime": runtime,
        "onnx_cache_dir": settings.embedding_cache_dir
        or str(Path(settings.data_dir) / "cache" / "onnx"),
    }


def job_context(
    settings: Settings, engine: Any, ledger: Ledger | None = None
) -> bodies.ModelJobContext:
    """The context jobs run in, in a web worker (inline queue) or in ``privtext worker``;
    ``ledger`` defaults to the SQL ledger over ``engine``."""
    data_dir = Path(settings.data_dir)
    return bodies.ModelJobContext(
        engine=engine,
        data_dir=data_dir,
        ledger=ledger if ledger is not None else SqlLedger(engine),
        model_source=lambda: active_model(data_dir),
        encoder_options=encoder_options(settings),
        result_ttl_s=settings.embedding_result_ttl_s,
        lease_s=float(settings.job_lease_s),
    )


def make_queue(settings: Settings, engine: Any, ledger: Ledger | None = None) -> jobqueue.Queue:
    """The queue of ``settings.queue_url`` with the model jobs' bodies registered on it; its
    jobs run in ``job_context(settings, engine, ledger)``, made when the first one runs."""
    huey = jobqueue.make_huey(settings.queue_url, settings.data_dir)
    ctx: dict[str, bodies.ModelJobContext] = {}

    def context() -> bodies.ModelJobContext:
        if "ctx" not in ctx:
            ctx["ctx"] = job_context(settings, engine, ledger)
        return ctx["ctx"]

    return jobqueue.make_queue(huey, context, bodies.BODIES)


def get_queue(app: App | None = None) -> jobqueue.Queue:
    """The app's job queue, made on first use."""
    svc = services(app)
    if svc.queue is None:
        svc.queue = make_queue(svc.settings, svc.engine, svc.ledger)
    return svc.queue


def get_context() -> bodies.ModelJobContext:
    """The context this web worker's jobs run in (the inline queue), made on first use."""
    svc = services()
    if svc.job_context is None:
        svc.job_context = job_context(svc.settings, svc.engine, svc.ledger)
    return svc.job_context
