"""``privtext worker``: the huey consumer that runs training and embedding jobs.

Started by ``make run`` beside gunicorn (same settings, same data directory). With the default
SQLite queue there is one consumer per data directory, so jobs found ``running`` at start were
cut short by a previous worker's crash: they are marked failed (their training reservations
stay charged, since whether a model was published is not known).
"""

from __future__ import annotations

import click

from service.cli import Context, pass_ctx


@click.command("worker")
@click.option("--workers", type=int, default=2, show_default=True,
              help="Jobs run at once (threads; torch releases the GIL).")
@pass_ctx
def worker(ctx: Context, workers: int) -> None:
    """Run queued jobs (huey consumer) until interrupted."""
    from models.jobs import create_tables, fail_interrupted
    from service import observability
    from service.jobs import make_queue

    settings = ctx.settings
    if settings.queue_url == "memory://":
        raise click.ClickException("memory:// runs jobs inline; a worker needs SQLite or Redis")
    observability.configure_logging(settings.log_level)
    engine = ctx.engine
    create_tables(engine)
    if not settings.queue_url:
        for job_id in fail_interrupted(engine):
            click.echo(f"job {job_id} was running when the last worker stopped: failed", err=True)
    # Staging directories left by a killed training or ingest (older than a day) are removed.
    from models.registry import ModelRegistry
    from service.corpus.store import SnapshotStore

    for stale in [*ModelRegistry(settings.data_dir).clean_stale_tmp(),
                  *SnapshotStore(settings.data_dir).clean_stale_tmp()]:
        click.echo(f"removed stale staging directory {stale}", err=True)
    queue = make_queue(settings, engine)
    click.echo(f"worker: {workers} thread(s) on queue {settings.queue_url or 'sqlite'}", err=True)
    queue.huey.create_consumer(workers=max(1, workers), worker_type="thread").run()
