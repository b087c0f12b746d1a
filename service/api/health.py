"""``GET /healthz`` and ``GET /readyz`` (public, no key): liveness and readiness.

Metrics are ``service/api/metrics.py``, the API contract ``service/api/spec.py``.
"""

from __future__ import annotations

import os

from flask import Blueprint, Response, current_app, jsonify

from corpus.store import SnapshotStore
from service.auth import public
from service.errors import error_response
from service.services import services
from service.store.db import probe_write

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@public
def healthz() -> Response:
    """The process is up."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
@public
def readyz() -> Response:
    """Ready when the service could answer a charged query now (503 otherwise).

    * ``state_store``: the store commits a write (the heartbeat row; a durable commit, so a
      full, read-only or failed disk, a frozen or unreachable database all fail it, within
      the statement timeout);
    * ``corpus``: a snapshot is live and its file can be read;
    * ``disk``: the data directory's filesystem is writable and has ``min_free_disk_mb`` left;
    * ``engine`` (only with the Spark engine): Spark Connect answers a round trip.
    """
    svc = services()
    checks = {"state_store": False, "corpus": False, "disk": False}
    try:
        probe_write(svc.engine)
        checks["state_store"] = True
    except Exception:  # noqa: BLE001 - readiness reports, it does not raise
        current_app.logger.warning("readiness: the state store does not accept a write")
    checks["corpus"] = _corpus_readable(svc.corpus)
    checks["disk"] = _disk_writable(svc.settings.data_dir, svc.settings.min_free_disk_mb)
    if svc.spark is not None:
        checks["engine"] = svc.spark.probe()
    if all(checks.values()):
        return jsonify({"status": "ready", "checks": checks})
    return error_response(503, "not_ready", "The service is not ready.", {"checks": checks})


def _corpus_readable(corpus: SnapshotStore) -> bool:
    """A snapshot is live and its Parquet file reads back (its trailing magic bytes)."""
    if not corpus.is_reachable():
        return False
    try:
        info = corpus.live()
        if info is None:
            return False
        with open(info.messages_path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            return fh.read(4) == b"PAR1"
    except Exception:  # noqa: BLE001 - switched or removed meanwhile, unreadable: not ready
        return False


def _disk_writable(path: str, min_free_mb: int) -> bool:
    """The filesystem of ``path`` is mounted read-write with ``min_free_mb`` MiB left for an
    unprivileged user (root's reserved blocks do not count: a disk that only root can still
    write to is full)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    if st.f_flag & os.ST_RDONLY:
        return False
    return st.f_bavail * st.f_frsize >= min_free_mb * 1024 * 1024
