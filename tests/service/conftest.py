"""The service tests' fixtures, from ``tests/fixtures/``: the app over a small ingested corpus,
its client and keys; the ledger backends over SQLite and a loopback PostgreSQL; a loopback
Redis; a loopback Spark Connect server."""

from tests.fixtures.app import *  # noqa: F403
from tests.fixtures.ledger import *  # noqa: F403
from tests.fixtures.redis_server import *  # noqa: F403
from tests.fixtures.spark import *  # noqa: F403
