"""Fixtures of the ledger tests: backends (memory, SQLite, PostgreSQL) and a fresh database each.

PostgreSQL comes from ``PRIVTEXT_TEST_POSTGRES_URL`` (set by ``scripts/test-services.sh``, which
``make test`` sources). When it is unset, the session starts a throwaway cluster itself with that
script; postgres-marked tests are skipped only when neither works.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from mechanisms.ledger import Ledger
from mechanisms.ledger_memory import InMemoryLedger
from service.auth import create_principal
from service.db import init_db, make_engine
from service.ledger.sql import SqlLedger
from tests.service_scripts import stop, url_or_start


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A superuser URL of a loopback PostgreSQL; the cluster is stopped at the end if ours."""
    yield url_or_start("postgres", "PRIVTEXT_TEST_POSTGRES_URL", "PostgreSQL")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the throwaway cluster that test-services.sh (or the fixture) started, if any.

    Done here rather than in the fixture so that a run that selects no postgres test still
    stops the cluster ``scripts/test.sh`` started before pytest.
    """
    datadir = os.environ.get("PRIVTEXT_TEST_POSTGRES_DATADIR")
    if datadir:
        stop("stop", datadir)


@pytest.fixture
def pg_database_url(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database on the test cluster, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _url(request: pytest.FixtureRequest, kind: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{request.getfixturevalue('tmp_path') / 'state.db'}"
    return str(request.getfixturevalue("pg_database_url"))


@pytest.fixture(params=BACKENDS)
def state_url(request: pytest.FixtureRequest) -> str:
    """A database URL of each real backend (SQLite file, fresh PostgreSQL database)."""
    return _url(request, request.param)


def _engine(request: pytest.FixtureRequest, url: str) -> Engine:
    engine = make_engine(url)
    init_db(engine)
    request.addfinalizer(engine.dispose)
    return engine


@pytest.fixture
def state_engine(request: pytest.FixtureRequest, state_url: str) -> Engine:
    return _engine(request, state_url)


@pytest.fixture(params=["memory", *BACKENDS])
def any_ledger(request: pytest.FixtureRequest) -> Ledger:
    """Every ledger backend: in memory, and SQL over each real database."""
    if request.param == "memory":
        return InMemoryLedger()
    return SqlLedger(_engine(request, _url(request, request.param)))


@pytest.fixture
def make_analyst(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Create an analyst principal where the ledger needs one (SQL backends)."""

    def _make(ledger: Ledger, name: str = "ana") -> str:
        if isinstance(ledger, SqlLedger):
            return create_principal(ledger.engine, name=name, role="analyst")
        return f"an_{uuid.uuid4().hex[:12]}"

    return _make


@pytest.fixture
def backend_app(request: pytest.FixtureRequest, state_url: str, data_dir: Path, ingested):  # type: ignore[no-untyped-def]
    """The app over each real state store (SQLite in the data directory, or PostgreSQL)."""
    from service.app import create_app

    app = create_app({"data_dir": str(data_dir), "database_url": state_url, "testing": True})
    yield app
    app.extensions["privtext"].engine.dispose()


@pytest.fixture
def backend_admin_token(backend_app) -> str:  # type: ignore[no-untyped-def]
    from service.auth import issue_key

    engine = backend_app.extensions["privtext"].engine
    return issue_key(engine, create_principal(engine, name="root", role="admin"))
