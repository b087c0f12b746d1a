"""``privtext ingest`` and ``privtext snapshots``: the corpus snapshots answers are computed on.

Registered on the ``privtext`` group by ``service/cli/__init__.py``.
"""

from __future__ import annotations

import sys

import click

from corpus.ingest import IngestError, ingest_demo, ingest_file
from corpus.store import SnapshotStore
from service.cli.context import Context, pass_ctx


@click.command()
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--demo", is_flag=True, help="Ingest the bundled chitchat-dataset corpus.")
@click.option("--if-missing", is_flag=True, help="Do nothing when a snapshot is already live.")
@click.option("--workers", type=int, default=None, help="Processes for feature extraction.")
@pass_ctx
def ingest(
    ctx: Context, path: str | None, demo: bool, if_missing: bool, workers: int | None
) -> None:
    """Ingest PATH (JSONL or CSV) or the demo corpus as a new snapshot, then make it live."""
    if demo == (path is not None):
        raise click.UsageError("give either PATH or --demo")
    if if_missing:
        live = SnapshotStore(ctx.settings.data_dir).live()
        if live is not None:
            click.echo(f"snapshot {live.id} is live; nothing to do")
            return
    progress = sys.stderr.isatty()
    try:
        if demo:
            info = ingest_demo(ctx.settings.data_dir, progress=progress, workers=workers)
        else:
            assert path is not None
            info = ingest_file(path, ctx.settings.data_dir, progress=progress, workers=workers)
    except IngestError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"snapshot {info.id} is live")


@click.group()
def snapshots() -> None:
    """List and switch corpus snapshots."""


@snapshots.command("list")
@pass_ctx
def snapshots_list(ctx: Context) -> None:
    store = SnapshotStore(ctx.settings.data_dir)
    live = store.live()
    for snap in store.list():
        mark = "*" if live is not None and snap.id == live.id else " "
        click.echo(f"{mark} {snap.id}  {snap.created_at}  {snap.source}")


@snapshots.command("activate")
@click.argument("snapshot_id")
@pass_ctx
def snapshots_activate(ctx: Context, snapshot_id: str) -> None:
    try:
        SnapshotStore(ctx.settings.data_dir).activate(snapshot_id)
    except (KeyError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"unknown snapshot {snapshot_id}") from exc
    click.echo(f"snapshot {snapshot_id} is live")


COMMANDS: list[click.Command] = [ingest, snapshots]
