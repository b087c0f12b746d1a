"""Fixtures shared by every test: a data directory with a small ingested corpus, the app,
its test client and CLI runner, and keys of each role."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.app import create_app

# One ONNX export of each model for the whole session, whatever data dir a test's app uses
# (an export takes seconds; tests of the cache itself pass their own directory).
os.environ.setdefault(
    "PRIVTEXT_EMBEDDING_CACHE_DIR", tempfile.mkdtemp(prefix="privtext-test-onnx-")
)
from service.auth import create_principal, issue_key
from tests.factories import make_messages, write_jsonl


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", make_messages())


@pytest.fixture
def ingested(data_dir: Path, corpus_file: Path):  # type: ignore[no-untyped-def]
    from corpus.ingest import ingest_file

    return ingest_file(corpus_file, data_dir, workers=1)


@pytest.fixture
def app(data_dir: Path, ingested) -> Iterator[Flask]:  # type: ignore[no-untyped-def]
    application = create_app({"data_dir": str(data_dir), "testing": True})
    yield application
    application.extensions["privtext"].engine.dispose()


@pytest.fixture
def empty_app(data_dir: Path) -> Iterator[Flask]:
    """An app with no corpus ingested yet."""
    application = create_app({"data_dir": str(data_dir), "testing": True})
    yield application
    application.extensions["privtext"].engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def admin_token(app: Flask) -> str:
    engine = app.extensions["privtext"].engine
    return issue_key(engine, create_principal(engine, name="root", role="admin"))


@pytest.fixture
def analyst_token(app: Flask) -> str:
    engine = app.extensions["privtext"].engine
    return issue_key(engine, create_principal(engine, name="ana", role="analyst"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# The ledger's fixtures (backends, a loopback PostgreSQL) and a loopback Redis (the job queue)
# live in their own modules.
pytest_plugins = ["tests.service.conftest_ledger", "tests.service.conftest_redis"]
