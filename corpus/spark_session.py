"""The query node's side of Spark: one Spark Connect client per process, a reachability probe
and a time limit per statement.

pyspark is an optional dependency (``pip install 'privtext[spark]'``): it is imported here
only when a client is first needed, so that the default install never loads it.

What leaves the query node for Spark is SQL text with named parameters: the query's public
filters and keys (keywords included) and the snapshot's path. What comes back is the exact,
bounded aggregates, which only the service noises. A failed statement is reported as
:class:`SparkQueryFailed` with one fixed message, never Spark's own (which can quote values
read from the data): the caller charges it like any failure after the read. pyspark's client
would also log that message to stderr on its own: those loggers are disabled
(:func:`silence_pyspark_logs`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["SparkConnect", "SparkQueryFailed", "SparkUnavailable", "parse_url"]


#: pyspark's own loggers that write a server error's text (which can quote values read from the
#: data) to stderr when the client receives it: switched off once pyspark is loaded.
PYSPARK_LOGGERS = (
    "SQLQueryContextLogger",
    "DataFrameQueryContextLogger",
    "pyspark.sql.connect.logging",
)


def silence_pyspark_logs() -> None:
    """Disable the loggers of :data:`PYSPARK_LOGGERS` in this process."""
    for name in PYSPARK_LOGGERS:
        logging.getLogger(name).disabled = True


class SparkUnavailable(RuntimeError):
    """Spark Connect could not be reached (decided before anything is charged or read)."""


class SparkQueryFailed(RuntimeError):
    """A statement failed or ran past its time limit after Spark may have read the data."""

    def __init__(self) -> None:
        super().__init__("the Spark statement failed")


def parse_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``sc://host:port[/;params]`` URL (port 15002 by default)."""
    parts = urlsplit(url)
    if parts.scheme != "sc" or not parts.hostname:
        raise ValueError("PRIVTEXT_ENGINE_URL must look like sc://host:port")
    return parts.hostname, parts.port or 15002


class SparkConnect:
    """One lazily created Spark Connect session per process (re-created after a fork).

    ``query_timeout_s``: each statement is interrupted on the server after this long (and then
    fails: charged). ``probe_timeout_s``: how long :meth:`probe` may wait. ``corpus_uri``: where
    Spark reads ``<data_dir>/corpus`` from (empty: the same local path, for a server on this
    machine or storage mounted at the same path on every executor; else e.g. ``s3a://b/corpus``).
    """

    def __init__(
        self,
        url: str,
        *,
        query_timeout_s: float = 60.0,
        probe_timeout_s: float = 5.0,
        corpus_uri: str = "",
    ) -> None:
        self.url = url
        self.host, self.port = parse_url(url)
        self.query_timeout_s = query_timeout_s
        self.probe_timeout_s = probe_timeout_s
        self.corpus_uri = corpus_uri.rstrip("/")
        self._lock = threading.Lock()
        self._session: Any = None
        self._pid = 0
        self._probed_at = -1e9

    # -- the session -------------------------------------------------------------------------
    def session(self) -> Any:
        with self._lock:
            if self._session is None or self._pid != os.getpid():
                self._session = self._create()
                self._pid = os.getpid()
            return self._session

    def _create(self) -> Any:
        silence_pyspark_logs()
        with warnings.catch_warnings():
            # pyspark 4.3 warns that it does not "fully support" pandas 3 when first imported;
            # this engine never goes through pandas (rows come back through Arrow).
            warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas")
            from pyspark.sql import SparkSession  # lazy: pyspark is the optional [spark] extra
            from pyspark.sql.connect.client.retries import (  # lazy: the [spark] extra
                DefaultPolicy,
            )

        spark = SparkSession.builder.remote(self.url).create()
        # A few quick retries, not the default ten minutes: a query waits on Spark only
        # within its time limit.
        spark.client.set_retry_policies(
            [DefaultPolicy(max_retries=3, initial_backoff=100, max_backoff=1000)]
        )
        spark.conf.set("spark.sql.session.timeZone", "UTC")
        return spark

    def close(self) -> None:
        with self._lock:
            if self._session is not None and self._pid == os.getpid():
                try:
                    self._session.stop()
                except Exception:  # noqa: BLE001 - closing a session that is gone
                    pass
            self._session = None

    # -- reachability ------------------------------------------------------------------------
    def probe(self) -> bool:
        """Whether Spark Connect answers now: a TCP connection, then (at most every 5 s) one
        round trip, each within ``probe_timeout_s``. Reads no data."""
        try:
            socket.create_connection((self.host, self.port), self.probe_timeout_s).close()
        except OSError:
            return False
        if time.monotonic() - self._probed_at < 5.0:
            return True
        ok = _within(self.probe_timeout_s, lambda: self.session().range(1).count() == 1)
        if ok:
            self._probed_at = time.monotonic()
        else:
            # A server that restarted no longer knows this session: the next probe (and the
            # queries after it) start a new one instead of failing for ever.
            self._forget()
        return ok

    def _forget(self) -> None:
        with self._lock:
            self._session = None

    def require(self) -> None:
        """Raise :class:`SparkUnavailable` unless :meth:`probe` succeeds."""
        if not self.probe():
            self._probed_at = -1e9
            raise SparkUnavailable(self.url)

    # -- statements --------------------------------------------------------------------------
    def snapshot_uri(self, messages_path: Path, data_dir: str | os.PathLike[str]) -> str:
        """Where Spark reads a snapshot's Parquet file."""
        path = Path(messages_path).resolve()
        if not self.corpus_uri:
            return str(path)
        rel = path.relative_to((Path(data_dir) / "corpus").resolve())
        return f"{self.corpus_uri}/{rel.as_posix()}"

    def rows(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run one statement within the time limit; its rows as tuples. Any failure,
        interruption included, raises :class:`SparkQueryFailed` (Spark's message dropped)."""
        spark = self.session()
        tag = f"privtext-{uuid.uuid4().hex}"
        timer = threading.Timer(self.query_timeout_s, _interrupt, (spark, tag))
        failed = False
        try:
            spark.addTag(tag)
            timer.start()
            rows = [tuple(r) for r in spark.sql(sql, args=params).collect()]
        except Exception:  # noqa: BLE001 - Spark's error can quote data: replaced below
            failed = True
        finally:
            timer.cancel()
            spark.removeTag(tag)
        if failed:
            raise SparkQueryFailed() from None
        return rows


def _interrupt(spark: Any, tag: str) -> None:
    try:
        spark.interruptTag(tag)
    except Exception:  # noqa: BLE001 - the statement fails anyway, or has ended
        pass


def _within(seconds: float, check: Any) -> bool:
    """``check()`` run in a thread: its truth, or False if it raised or took too long."""
    result: list[bool] = []

    def run() -> None:
        try:
            result.append(bool(check()))
        except Exception:  # noqa: BLE001 - unreachable, refused, wrong server: not ready
            result.append(False)

    t = threading.Thread(target=run, daemon=True, name="privtext-spark-probe")
    t.start()
    t.join(seconds)
    return bool(result and result[0])
