"""``Services``: what one app holds for the life of its process, made once by ``create_app``.

Views reach them with :func:`services` (``services().ledger``), never through an untyped dict:
every resource has its own typed attribute. There are no module-level resources: each gunicorn
worker builds its own app, and two apps in one process (tests) share nothing.

* ``settings``: defaults, then ``PRIVTEXT_*`` environment, then the test mapping;
* ``engine``: the state store (``service/store/db.py``);
* ``corpus``: the corpus snapshots;
* ``ledger``: the ledger over the state store (``create_app(ledger=...)`` injects another,
  e.g. one over a second engine, or one that counts its calls);
* ``accounts``: analysts, keys, budgets and the cap (``service/accounts.py``), over ``engine``
  and ``ledger``;
* ``metrics``: the Prometheus counters of this process;
* ``key_cache``: successful key lookups, kept ``settings.key_cache_seconds`` (None when 0);
* ``vocabularies``: public vocabularies of model versions, by model id, loaded on first use;
* ``spark``: the Spark Connect client when ``engine_url`` names one (None: DuckDB, embedded);
  it imports pyspark only when it first connects;
* ``queue`` and ``job_context``: the job queue and the context jobs run in, made on first use
  (``service/job_queue.py``), so an app that never queues a job opens no queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import current_app
from flask.sansio.app import App
from sqlalchemy import Engine

from corpus.spark_session import SparkConnect
from corpus.store import SnapshotStore
from service.accounts import Accounts
from service.auth import KeyCache
from service.config import Settings
from service.observability import Metrics
from service.store.ledger import SqlLedger

if TYPE_CHECKING:
    from jobs.queue import Queue
    from models.job_bodies import ModelJobContext
    from models.vocabulary import Vocabulary


@dataclass
class Services:
    settings: Settings
    engine: Engine
    corpus: SnapshotStore
    ledger: SqlLedger
    accounts: Accounts
    metrics: Metrics
    key_cache: KeyCache | None = None
    spark: SparkConnect | None = None
    vocabularies: dict[str, Vocabulary] = field(default_factory=dict)
    queue: Queue | None = None
    job_context: ModelJobContext | None = None


def services(app: App | None = None) -> Services:
    """The services of ``app`` (default: the app of the current request or app context)."""
    svc = (app or current_app).extensions["privtext"]
    assert isinstance(svc, Services)
    return svc
