"""The client's tests: ``client/src`` on the path (the client is its own distribution, not
installed by ``make test``), matplotlib on its file backend, and the ``make run``-like
service of the session (``served_demo`` in ``tests/conftest.py``: a 20,000-message demo
slice, gunicorn on loopback) with a funded analyst per test."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import matplotlib
import pytest
import requests

CLIENT_SRC = Path(__file__).resolve().parents[2] / "client" / "src"
if str(CLIENT_SRC) not in sys.path:
    sys.path.insert(0, str(CLIENT_SRC))
matplotlib.use("Agg")

from tests.served import Served  # noqa: E402


@pytest.fixture
def served(served_demo: Served) -> Served:
    return served_demo


def new_analyst(served: Served, epsilon: float = 20.0, delta: float = 1e-6) -> str:
    """A new analyst with a budget, through the admin API; returns its key."""
    admin = {"Authorization": f"Bearer {served.admin_key}"}
    name = f"analyst-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "budget": {"epsilon": epsilon, "delta": delta}}
    made = requests.post(f"{served.url}/v1/admin/analysts", json=body, headers=admin, timeout=30)
    made.raise_for_status()
    key = requests.post(
        f"{served.url}/v1/admin/analysts/{made.json()['id']}/keys", headers=admin, timeout=30
    )
    key.raise_for_status()
    return str(key.json()["token"])


@pytest.fixture
def key(served: Served) -> str:
    return new_analyst(served)
