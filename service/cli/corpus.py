"""``privtext ingest`` and ``privtext snapshots``: the corpus snapshots answers are computed on.

Registered on the ``privtext`` group by ``service/cli/__init__.py``.
"""

from __future__ import annotations

import os
import sys

import click

from corpus.ingest import IngestError, ingest_demo, ingest_file
from corpus.spark_session import SparkConnect, SparkUnavailable
from corpus.store import SnapshotInfo, SnapshotStore
from service.cli.context import Context, pass_ctx


@click.command()
@click.argument("path", required=False)
@click.option("--demo", is_flag=True, help="Ingest the bundled chitchat-dataset corpus.")
@click.option("--if-missing", is_flag=True, help="Do nothing when a snapshot is already live.")
@click.option("--workers", type=int, default=None, help="Processes for feature extraction.")
@click.option(
    "--engine",
    type=click.Choice(["duckdb", "spark"]),
    default="duckdb",
    show_default=True,
    help="spark: read PATH (JSONL, CSV or Parquet) and compute the snapshot on the Spark "
    "Connect server of PRIVTEXT_ENGINE_URL.",
)
@pass_ctx
def ingest(
    ctx: Context,
    path: str | None,
    demo: bool,
    if_missing: bool,
    workers: int | None,
    engine: str,
) -> None:
    """Ingest PATH (JSONL or CSV; with --engine spark also Parquet) or the demo corpus as a
    new snapshot, then make it live."""
    if demo == (path is not None):
        raise click.UsageError("give either PATH or --demo")
    spark = _spark_for_ingest(ctx) if engine == "spark" else None
    if spark is not None and demo:
        raise click.UsageError("--engine spark ingests a PATH, not --demo")
    if if_missing:
        live = SnapshotStore(ctx.settings.data_dir).live()
        if live is not None:
            click.echo(f"snapshot {live.id} is live; nothing to do")
            return
    try:
        info = _run_ingest(ctx, path, spark, workers)
    except IngestError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"snapshot {info.id} is live")


def _spark_for_ingest(ctx: Context) -> SparkConnect:
    """The Spark Connect client, or a usage error decided from the settings alone."""
    settings = ctx.settings
    if not settings.engine_url:
        raise click.UsageError("--engine spark needs PRIVTEXT_ENGINE_URL (sc://host:port)")
    if settings.spark_corpus_uri:
        raise click.UsageError(
            "--engine spark writes into the data directory at the same path on the Spark "
            "server; it does not support PRIVTEXT_SPARK_CORPUS_URI"
        )
    try:
        return SparkConnect(settings.engine_url)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _run_ingest(
    ctx: Context, path: str | None, spark: SparkConnect | None, workers: int | None
) -> SnapshotInfo:
    data_dir = ctx.settings.data_dir
    progress = sys.stderr.isatty()
    if path is None:
        return ingest_demo(data_dir, progress=progress, workers=workers)
    if spark is None:
        if os.path.isdir(path):
            raise click.BadParameter("a directory: give a JSONL or CSV file", param_hint="PATH")
        return ingest_file(path, data_dir, progress=progress, workers=workers)
    try:
        from corpus.spark_ingest import (  # lazy: loads pyspark and pandas ([spark])
            SparkIngestFailed,
            ingest_spark,
        )
    except ImportError:
        raise click.UsageError("--engine spark needs pip install 'privtext[spark]'") from None
    try:
        return ingest_spark(path, data_dir, spark=spark)
    except SparkUnavailable:
        url = ctx.settings.engine_url
        raise click.ClickException(f"Spark Connect at {url} does not answer") from None
    except SparkIngestFailed as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        spark.close()


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
