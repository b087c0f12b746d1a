"""gunicorn settings (``gunicorn --config python:service.gunicorn_conf service.wsgi:app``).

Each value can be overridden with the usual gunicorn flags or ``GUNICORN_*`` variables here.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from service.gunicorn_worker import graceful_signals, stagger_recycling
from service.hardening import UMASK, restrict_umask

# The master and the workers it forks create files readable by their owner only.
restrict_umask()
umask = UMASK

bind = os.environ.get("PRIVTEXT_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("PRIVTEXT_WORKERS", "2"))
threads = int(os.environ.get("PRIVTEXT_THREADS", "1"))
# sync, or gthread with more than one thread (what gunicorn picks for "sync"), each with JSON
# error pages; set the threads with PRIVTEXT_THREADS, which picks the class, not --threads.
worker_class = "service.gunicorn_worker." + (
    "JsonErrorThreadWorker" if threads > 1 else "JsonErrorWorker"
)
timeout = int(os.environ.get("PRIVTEXT_WORKER_TIMEOUT", "60"))
# SIGINT, SIGQUIT and SIGTERM all stop gracefully: requests in flight get this long to finish
# (service/gunicorn_worker.py).
graceful_timeout = 20
keepalive = 5
# Workers recycle after max_requests plus a per-worker offset (staggered, so that they never
# all recycle together: service/gunicorn_worker.py) and a random jitter.
max_requests = int(os.environ.get("PRIVTEXT_MAX_REQUESTS", "2000"))
max_requests_jitter = max_requests // 20
limit_request_line = 8190
limit_request_fields = 64
accesslog = None  # the app writes one structured JSON line per request itself
errorlog = "-"
loglevel = os.environ.get("PRIVTEXT_LOG_LEVEL", "info").lower()
preload_app = False  # each worker builds its own engine and corpus connection

# Prometheus multiprocess mode: each worker writes its samples here; /metrics merges them.
_prom_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"privtext-prom-{os.getpid()}")
)
# Only now: prometheus_client picks its multiprocess value class, which the forked workers
# inherit, from PROMETHEUS_MULTIPROC_DIR when it is first imported.
from prometheus_client import multiprocess  # noqa: E402


def post_fork(server, worker):  # type: ignore[no-untyped-def]
    stagger_recycling(server, worker)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    graceful_signals(worker)


def on_starting(server):  # type: ignore[no-untyped-def]
    shutil.rmtree(_prom_dir, ignore_errors=True)
    os.makedirs(_prom_dir, exist_ok=True)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    multiprocess.mark_process_dead(worker.pid)
