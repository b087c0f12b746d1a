"""Configuration: defaults, then environment (``PRIVTEXT_*``), then an explicit mapping.

Every setting lives here so that ``create_app`` and the CLI read the same values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


def _default_data_dir() -> str:
    return os.environ.get("PRIVTEXT_DATA_DIR", str(Path.cwd() / "data"))


@dataclass(frozen=True)
class Settings:
    """Service settings. Environment variable names are ``PRIVTEXT_`` + the upper-cased field."""

    data_dir: str = field(default_factory=_default_data_dir)
    # SQLAlchemy URL of the state store (analysts, keys, ledger, audit log).
    # Empty means SQLite in the data directory; set a postgresql+psycopg:// URL to scale out.
    database_url: str = ""
    # Bounds on the state store, so that an outage answers 503 instead of hanging a worker:
    # how long opening a PostgreSQL connection may take (libpq's connect_timeout, at least
    # 2 s), and how long one statement may run or wait for a lock (PostgreSQL's
    # statement_timeout, with the client giving up 1 s later if the server does not answer
    # at all; SQLite's busy timeout).
    db_connect_timeout_s: int = 5
    db_statement_timeout_ms: int = 5000
    # /readyz reports not ready when the data directory's filesystem is read-only or has
    # less than this much space left for an unprivileged user.
    min_free_disk_mb: int = 64
    # huey queue: empty means SQLite in the data directory; a redis:// URL to scale out.
    queue_url: str = ""
    # A running job's lease (jobs/leases.py): renewed every job_lease_s / 4 seconds by
    # the process running it; a job whose lease expired is failed by any `privtext worker`
    # (which looks every job_lease_s / 2 seconds), on the SQLite and the Redis queue alike.
    job_lease_s: int = 60
    max_request_bytes: int = 64 * 1024
    # POST /v1/queries: at most this many requests per analyst per minute, shared by every
    # worker and host (service/store/ratelimit.py; 429 beyond; 0: no limit). Refused queries' audit
    # rows are deleted after this many days (0: kept for ever; charged rows always are).
    query_rate_per_minute: int = 600
    refused_audit_retention_days: int = 30
    # Embeddings (models/encoder.py): per-key fixed-window rate limit shared by every worker
    # (requests and texts per window), the body limit of POST /v1/embedding-jobs alone, how
    # long a job's result file is kept, and the encoder's device ("": CUDA when present, else
    # CPU) and precision ("auto": fp16 autocast on CUDA, fp32 on the CPU; "bf16" trades a
    # little accuracy for about 2x on CPUs with AVX512-BF16; "fp32"; "int8", ONNX only, moves
    # vectors), and its runtime ("" or "auto": ONNX Runtime on the CPU, torch on CUDA; "torch";
    # "onnx").
    embedding_rate_requests: int = 120
    embedding_rate_texts: int = 60_000
    embedding_rate_window_s: int = 60
    embedding_job_max_bytes: int = 16 * 1024 * 1024
    embedding_result_ttl_s: int = 24 * 3600
    embedding_device: str = ""
    embedding_precision: str = "auto"
    embedding_runtime: str = ""
    embedding_cache_dir: str = ""  # ONNX exports; "": <data_dir>/cache/onnx
    # The scan engine: empty, DuckDB embedded in each worker; an sc://host:port URL, Spark
    # through Spark Connect (corpus/spark_session.py; needs the [spark] extra). Each Spark
    # statement is interrupted after engine_query_timeout_s (the query then fails, charged);
    # spark_corpus_uri is where Spark reads <data_dir>/corpus ("": the same local path).
    engine_url: str = ""
    engine_query_timeout_s: int = 60
    spark_corpus_uri: str = ""
    log_level: str = "INFO"
    testing: bool = False
    # When a charged query writes its audit row and commits its (already durable)
    # reservation: "auto" after the response has been sent, except in tests (testing=True),
    # where it is written before the response so that tests can read it at once; "on"; "off".
    settle_after_response: str = "auto"
    # How long a worker may reuse a successful API-key lookup (seconds): a revoked key or a
    # disabled analyst is refused by every worker at most this long after the change. -1:
    # 2 seconds, except in tests (testing=True), where lookups are never reused.
    key_cache_s: int = -1

    @property
    def key_cache_seconds(self) -> float:
        if self.key_cache_s >= 0:
            return float(self.key_cache_s)
        return 0.0 if self.testing else 2.0

    @property
    def settles_after_response(self) -> bool:
        mode = self.settle_after_response.strip().lower()
        if mode in ("on", "true", "1", "yes"):
            return True
        if mode in ("off", "false", "0", "no"):
            return False
        return not self.testing

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path(self.data_dir) / 'state.db'}"

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None) -> Settings:
        """Defaults, then ``PRIVTEXT_*`` environment variables, then ``overrides``."""
        settings = cls()
        env: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"PRIVTEXT_{f.name.upper()}")
            if raw is None:
                continue
            env[f.name] = _coerce(f.type, raw, f.name)
        settings = replace(settings, **env)
        if overrides:
            known = {f.name for f in fields(cls)}
            unknown = set(overrides) - known
            if unknown:
                raise ValueError(f"unknown settings: {sorted(unknown)}")
            settings = replace(settings, **dict(overrides))
        return settings


def _coerce(type_name: Any, raw: str, name: str) -> Any:
    t = str(type_name)
    if t in ("int", "<class 'int'>"):
        try:
            return int(raw)
        except ValueError as exc:
            raise ValueError(f"PRIVTEXT_{name.upper()} must be an integer") from exc
    if t in ("bool", "<class 'bool'>"):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw
