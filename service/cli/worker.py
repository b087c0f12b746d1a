"""``privtext worker``: the huey consumer that runs training and embedding jobs.

Started by ``make run`` beside gunicorn (same settings, same data directory), or on any host
that should run jobs when the queue is Redis. Beside the consumer it keeps the jobs honest
(``jobs.recovery``), on both queues:

* at start, jobs cut short by a worker that died are failed and their files deleted. With
  the default SQLite queue there is one consumer per data directory, so every job found
  running was its predecessor's; with Redis, only jobs whose lease (``jobs.leases``)
  has expired: the others belong to live workers on other hosts;
* then every ``job_lease_s / 2`` seconds, jobs whose lease expired are failed the same way,
  and leftover input files of ended jobs deleted;
* every hour, audit rows of refused queries older than ``refused_audit_retention_days`` are
  pruned (``service.store.retention``; charged rows are kept for ever).

A failed training job's reservation stays charged: whether the corpus was read, or a model
published, before the worker died is not known here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import click

from corpus.store import SnapshotStore
from jobs.recovery import recover
from jobs.table import create_tables
from models.registry import ModelRegistry
from service import observability
from service.cli.context import Context, pass_ctx
from service.job_queue import job_context, make_queue
from service.store.retention import prune_refused

log = logging.getLogger("privtext.worker")

#: How often the worker prunes refused-query audit rows (seconds).
PRUNE_EVERY_S = 3600.0


class Periodic:
    """Runs each ``(first_after_s, interval_s, task)`` after ``first_after_s`` seconds, then
    every ``interval_s``, in one daemon thread, until :meth:`stop`; a task that raises is
    logged and run again at its next turn."""

    def __init__(self, tasks: list[tuple[float, float, Callable[[], object]]]) -> None:
        self.tasks = tasks
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="privtext-periodic", daemon=True)

    def start(self) -> Periodic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        due = [time.monotonic() + first for first, _, _ in self.tasks]
        while True:
            wait = max(0.0, min(due) - time.monotonic())
            if self._stop.wait(wait):
                return
            for i, (_, interval, task) in enumerate(self.tasks):
                if time.monotonic() >= due[i]:
                    try:
                        task()
                    except Exception:  # noqa: BLE001 - logged; the next turn tries again
                        log.exception("periodic task %s failed", getattr(task, "__name__", task))
                    due[i] = time.monotonic() + interval


@click.command("worker")
@click.option("--workers", type=int, default=2, show_default=True,
              help="Jobs run at once (threads; torch releases the GIL).")
@pass_ctx
def worker(ctx: Context, workers: int) -> None:
    """Run queued jobs (huey consumer) until interrupted."""
    settings = ctx.settings
    if settings.queue_url == "memory://":
        raise click.ClickException("memory:// runs jobs inline; a worker needs SQLite or Redis")
    if settings.job_lease_s < 2:
        raise click.ClickException("PRIVTEXT_JOB_LEASE_S must be at least 2 (seconds)")
    observability.configure_logging(settings.log_level)
    engine = ctx.engine
    create_tables(engine)
    jobs_ctx = job_context(settings, engine)
    # SQLite: one consumer per data directory, so every running job is a dead worker's.
    first = recover(jobs_ctx, every_running=not settings.queue_url)
    for job_id in first.failed:
        click.echo(f"job {job_id} was running when its worker stopped: failed", err=True)
    # Staging directories left by a killed training or ingest (older than a day) are removed.
    for stale in [*ModelRegistry(settings.data_dir).clean_stale_tmp(),
                  *SnapshotStore(settings.data_dir).clean_stale_tmp()]:
        click.echo(f"removed stale staging directory {stale}", err=True)

    def recover_jobs() -> None:
        recover(jobs_ctx)

    def prune_audit() -> None:
        prune_refused(engine, retention_days=settings.refused_audit_retention_days)

    every = settings.job_lease_s / 2
    periodic = Periodic([(every, every, recover_jobs), (0.0, PRUNE_EVERY_S, prune_audit)]).start()
    queue = make_queue(settings, engine)
    click.echo(f"worker: {workers} thread(s) on queue {settings.queue_url or 'sqlite'}", err=True)
    try:
        queue.huey.create_consumer(workers=max(1, workers), worker_type="thread").run()
    finally:
        periodic.stop()


COMMANDS: list[click.Command] = [worker]
