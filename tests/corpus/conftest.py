"""The corpus tests' fixtures: the loopback Spark Connect server and the corpus the engines are
compared on (``tests/fixtures/spark.py``)."""

from tests.fixtures.spark import *  # noqa: F403
