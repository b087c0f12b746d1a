"""The tests' loopback servers (PostgreSQL, Redis) from ``scripts/test-services.sh``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "test-services.sh"


def start(
    service: str, url_var: str, label: str, env: dict[str, str] | None = None
) -> dict[str, str]:
    """Start ``service`` with the script (in ``env``, default this process's environment) and
    return the variables it exports; skip the calling test when it cannot be started."""
    proc = subprocess.run(
        ["bash", str(SCRIPT), "start", service],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    found = dict(
        line.removeprefix("export ").split("=", 1)
        for line in proc.stdout.splitlines()
        if line.startswith("export ")
    )
    if proc.returncode != 0 or url_var not in found:
        pytest.skip(f"could not start {label}: {proc.stderr.strip()[-300:]}")
    return found


def url_or_start(service: str, url_var: str, label: str) -> str:
    """``$url_var`` when set (``scripts/test.sh`` sourced the script); else start ``service``
    and export what the script prints into this process's environment (the URL, for
    subprocesses of the session, and the directory that ``pytest_sessionfinish`` stops).
    Skips the calling test when neither works."""
    url = os.environ.get(url_var)
    if url:
        return url
    if os.environ.get("PRIVTEXT_TEST_NO_AUTOSTART") or not SCRIPT.exists():
        pytest.skip(f"{url_var} is not set")
    found = start(service, url_var, label)
    os.environ.update(found)
    return found[url_var]


def stop(action: str, directory: str) -> None:
    """``test-services.sh ACTION DIRECTORY`` (``stop`` a cluster, ``stop-redis`` a server)."""
    subprocess.run(["bash", str(SCRIPT), action, directory], check=False, timeout=60)
