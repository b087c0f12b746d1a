"""Property-based conformance: every operation in openapi.yaml, generated inputs, no 5xx,
every response valid against its documented schema (schemathesis' default checks).

The app is built at import because schemathesis' fixture-based loader does not work with
pytest 9 here ('Function' object has no attribute '_nodeid'); its data directory is a
temporary one removed at exit.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from corpus.ingest import ingest_file
from service.app import create_app
from service.auth import create_principal, issue_key
from tests.factories import make_messages, write_jsonl


def _build():  # type: ignore[no-untyped-def]
    root = Path(tempfile.mkdtemp(prefix="privtext-st-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    data = root / "data"
    data.mkdir()
    ingest_file(write_jsonl(root / "c.jsonl", make_messages()), data, workers=1)
    app = create_app({"data_dir": str(data), "testing": True})
    engine = app.extensions["privtext"].engine
    tokens = {
        role: issue_key(engine, create_principal(engine, name=role, role=role))
        for role in ("admin", "analyst")
    }
    return app, tokens


pytestmark = pytest.mark.seconds  # a minute or more in all: out of `make test-fast`

APP, TOKENS = _build()
schema = schemathesis.openapi.from_wsgi("/openapi.yaml", APP)
#: Planning a training run calibrates its noise by bisection on the PLD accountant (seconds a
#: request); its route gets fewer examples in the default run, the same number in the slow one.
TRAINING = "/v1/admin/training-jobs"


@schema.exclude(path=TRAINING).parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms(case) -> None:  # type: ignore[no-untyped-def]
    """Each generated request is sent as an admin, as an analyst and with no key."""
    _call_as_each_role(case)


@schema.include(path=TRAINING).parametrize()
@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_training_route_conforms(case) -> None:  # type: ignore[no-untyped-def]
    """The same checks on the training route, with 4 examples (about 3 s each to plan)."""
    _call_as_each_role(case)


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms_with_300_examples(case) -> None:  # type: ignore[no-untyped-def]
    """The same checks with 20 times the examples per operation (``make test-slow``)."""
    _call_as_each_role(case)


def _call_as_each_role(case) -> None:  # type: ignore[no-untyped-def]
    for role in ("admin", "analyst", None):
        headers = {"Authorization": f"Bearer {TOKENS[role]}"} if role else {}
        case.call_and_validate(headers=headers)
