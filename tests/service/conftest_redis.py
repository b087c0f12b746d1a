"""A loopback Redis for the tests of the Redis job queue.

It comes from ``PRIVTEXT_TEST_REDIS_URL`` (set by ``scripts/test-services.sh``, which ``make
test`` sources). When that is unset, the session starts a throwaway server itself with the same
script; redis-marked tests are skipped only when neither works. The server named by
``PRIVTEXT_TEST_REDIS_DIR`` (exported by the script) is stopped when the session ends, whether
the script was run by ``scripts/test.sh`` or by the fixture.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.service_scripts import stop, url_or_start


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a loopback Redis; flushed before it is handed out."""
    url = url_or_start("redis", "PRIVTEXT_TEST_REDIS_URL", "Redis")
    import redis

    redis.Redis.from_url(url).flushdb()
    yield url


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the throwaway Redis that test-services.sh (or the fixture) started, if any."""
    directory = os.environ.get("PRIVTEXT_TEST_REDIS_DIR")
    if directory:
        stop("stop-redis", directory)
