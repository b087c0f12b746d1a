"""What every test run shares, with nothing but the standard library and pytest: ``tests/
mechanisms`` runs in a virtual environment without the service's dependencies (``make
test-mechanisms``). The fixtures of the app, the ledger backends and the loopback servers are
in ``tests/fixtures/``, registered by the conftest of each package that uses them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service_scripts import stop

# One ONNX export of each model for the whole session, whatever data dir a test's app uses
# (an export takes seconds; tests of the cache itself pass their own directory).
os.environ.setdefault(
    "PRIVTEXT_EMBEDDING_CACHE_DIR", tempfile.mkdtemp(prefix="privtext-test-onnx-")
)


#: The loopback servers' fixtures, and the marker that a test asking for one gets.
SERVER_FIXTURES = {"postgres_url": "postgres", "pg_database_url": "postgres", "redis_url": "redis"}


@pytest.fixture(scope="session")
def served_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The service as ``make run`` sets it up (``tests/served.py``: a demo slice, ensure-admin,
    gunicorn on loopback), shared by the README tour's test and the client's tests: one start
    (8 s measured on a loaded 2-core machine) for both. Tests on it make their own analysts
    with names no other test uses; only the tour sets the corpus cap."""
    # imported here: tests/mechanisms runs without the service's dependencies
    from tests.served import make_run  # noqa: PLC0415

    with make_run(tmp_path_factory.mktemp("served")) as served:
        yield served


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``postgres`` or ``redis`` every test that asks for that server's fixture, so that
    ``-m "not postgres"`` deselects it (parameters over the backends carry the marker already)."""
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in SERVER_FIXTURES:
                item.add_marker(SERVER_FIXTURES[fixture])


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under ``-m "... not torch ..."`` (``make test-fast``), a module whose every test is
    marked torch (``pytestmark = pytest.mark.torch`` at module level) is not imported at all:
    its tests would be deselected anyway, and importing torch costs seconds."""
    if collection_path.suffix != ".py" or "not torch" not in (config.option.markexpr or ""):
        return None
    try:
        text = collection_path.read_text(encoding="utf-8")
    except OSError:
        return None
    return True if "\npytestmark = pytest.mark.torch" in text else None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the throwaway PostgreSQL cluster and Redis server that test-services.sh started
    (sourced by ``scripts/test.sh`` before pytest, or run by the ``postgres_url`` and
    ``redis_url`` fixtures), if any.

    Done here rather than in the fixtures so that a run that selects none of their tests still
    stops what ``scripts/test.sh`` started.
    """
    datadir = os.environ.get("PRIVTEXT_TEST_POSTGRES_DATADIR")
    if datadir:
        stop("stop", datadir)
    directory = os.environ.get("PRIVTEXT_TEST_REDIS_DIR")
    if directory:
        stop("stop-redis", directory)
