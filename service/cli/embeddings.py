"""``privtext embed-corpus``: build the internal message embeddings and the public vocabulary.

Registered on the ``privtext`` group by ``service/cli/__init__.py``. The vectors are an
internal feature of the aggregate-embedding queries (``mean_embedding``, ``topics``) and are
never served.
"""

from __future__ import annotations

import sys
import time

import click

from corpus.store import SnapshotNotFound, SnapshotStore
from models import corpus_embeddings
from models.registry import ModelNotFound, ModelRegistry
from models.vocabulary import build_vocabulary, load_vocabulary
from service.cli.context import Context, pass_ctx


@click.command("embed-corpus")
@click.option("--snapshot", "snapshot_id", default=None, help="Snapshot id (default: live).")
@click.option("--model", "model_id", default=None, help="Model version id (default: active).")
@click.option("--batch-size", type=int, default=None, help="Encoder batch size.")
@click.option("--device", default=None, help="torch device for the encoder (default: cpu).")
@pass_ctx
def embed_corpus(
    ctx: Context,
    snapshot_id: str | None,
    model_id: str | None,
    batch_size: int | None,
    device: str | None,
) -> None:
    """Embed every message of a snapshot with a model version (cached; idempotent)."""
    data_dir = ctx.settings.data_dir
    try:
        snapshot = (
            SnapshotStore(data_dir).get(snapshot_id) if snapshot_id
            else SnapshotStore(data_dir).live()
        )
    except SnapshotNotFound as exc:
        raise click.ClickException(f"unknown snapshot {snapshot_id}") from exc
    if snapshot is None:
        raise click.ClickException("no snapshot is live; run `privtext ingest` first")
    registry = ModelRegistry(data_dir)
    try:
        version = registry.get(model_id) if model_id else registry.active()
    except ModelNotFound as exc:
        raise click.ClickException(f"unknown model version {model_id}") from exc

    if (
        corpus_embeddings.load(data_dir, snapshot.id, version.id) is not None
        and load_vocabulary(data_dir, version.id) is not None
    ):
        click.echo(f"embeddings of {snapshot.id} with model {version.id} are built; nothing to do")
        return
    encoder = corpus_embeddings.default_encoder(version, device)
    started = time.perf_counter()
    vocab = build_vocabulary(data_dir, version, encoder=encoder)
    seconds = time.perf_counter() - started
    click.echo(f"vocabulary: {len(vocab.words)} public words ({seconds:.1f} s)")

    def progress(done: int, total: int) -> None:
        click.echo(f"\r{done}/{total} messages", nl=False, err=True)

    kwargs = {"batch_size": batch_size} if batch_size else {}
    corpus_embeddings.build_corpus_embeddings(
        data_dir, snapshot.id, version, encoder=encoder,
        progress=progress if sys.stderr.isatty() else None, **kwargs,
    )
    info = corpus_embeddings.manifest(data_dir, snapshot.id, version.id)
    click.echo(
        f"embeddings of {snapshot.id} with model {version.id}: {info['rows']} messages "
        f"({info['seconds']} s, {info['messages_per_second']} messages/s)"
    )


COMMANDS: list[click.Command] = [embed_corpus]
