"""A loopback Redis for the tests of the Redis job queue.

It comes from ``PRIVTEXT_TEST_REDIS_URL`` (set by ``scripts/test-services.sh``, which ``make
test`` sources). When that is unset, the session starts a throwaway server itself with the same
script; redis-marked tests are skipped only when neither works. The server named by
``PRIVTEXT_TEST_REDIS_DIR`` (exported by the script) is stopped when the session ends, whether
the script was run by ``scripts/test.sh`` or by the fixture.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "test-services.sh"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a loopback Redis; flushed before it is handed out."""
    url = os.environ.get("PRIVTEXT_TEST_REDIS_URL")
    if not url:
        if os.environ.get("PRIVTEXT_TEST_NO_AUTOSTART") or not SCRIPT.exists():
            pytest.skip("PRIVTEXT_TEST_REDIS_URL is not set")
        proc = subprocess.run(
            ["bash", str(SCRIPT), "start", "redis"], capture_output=True, text=True, timeout=600
        )
        found = dict(
            line.removeprefix("export ").split("=", 1)
            for line in proc.stdout.splitlines()
            if line.startswith("export ")
        )
        if proc.returncode != 0 or "PRIVTEXT_TEST_REDIS_URL" not in found:
            pytest.skip(f"could not start Redis: {proc.stderr.strip()[-300:]}")
        url = found["PRIVTEXT_TEST_REDIS_URL"]
        os.environ["PRIVTEXT_TEST_REDIS_URL"] = url  # for subprocesses of this session
        os.environ["PRIVTEXT_TEST_REDIS_DIR"] = found["PRIVTEXT_TEST_REDIS_DIR"]  # stopped at end
    import redis

    redis.Redis.from_url(url).flushdb()
    yield url


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the throwaway Redis that test-services.sh (or the fixture) started, if any."""
    directory = os.environ.get("PRIVTEXT_TEST_REDIS_DIR")
    if directory:
        subprocess.run(["bash", str(SCRIPT), "stop-redis", directory], check=False, timeout=60)
