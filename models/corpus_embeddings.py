"""Per-message embeddings of a corpus snapshot: an internal feature, never released.

Embeddings of private text are not protected by any model's DP (embedding inversion recovers
most of a short input from its vector), so these vectors never leave the service: the only
reader is the aggregate-embedding queries (``service/queries/kinds/embedding.py``), which release
DP sums of them through the ledger.

Layout under ``data_dir``::

    embeddings/<snapshot_id>/<model_id>/vectors.npy     float16, (rows, dim), unit norm,
                                                       row i = parquet row i of the snapshot
    embeddings/<snapshot_id>/<model_id>/manifest.json   rows, dim, model, timings
    embeddings/tmp/<unique>/                            builds in progress (never read)

A build writes into a unique directory under ``tmp/`` and renames it into place only when
complete (as corpus snapshots and model versions are, all with :mod:`util.atomic`), so
:func:`load` never sees a partial file; a crashed build leaves at most a ``tmp/`` directory.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb
import numpy as np

from corpus.store import MESSAGES_FILE, SnapshotStore
from models.encoder import Encoder
from models.registry import ModelRegistry
from util import atomic

__all__ = [
    "BATCH_SIZE",
    "TextEncoder",
    "active_model",
    "build_corpus_embeddings",
    "default_encoder",
    "embeddings_dir",
    "load",
    "messages_path",
]

VECTORS_FILE = "vectors.npy"
MANIFEST_FILE = "manifest.json"
BATCH_SIZE = 256
_SNAPSHOT_RE = re.compile(r"^snap-\d{8}T\d{6}Z-[0-9a-f]{8}(?:-\d+)?$")
_MODEL_RE = re.compile(r"^(?:base|m-\d{8}T\d{6}Z-[0-9a-f]{8})$")


class TextEncoder(Protocol):
    """What a build needs: ``models.encoder.Encoder`` has this shape."""

    def encode(self, texts: Sequence[str], batch_size: int = ...) -> np.ndarray: ...


class HasIdPath(Protocol):
    """A model version (``models.registry.ModelVersion``): its id and weights directory."""

    @property
    def id(self) -> str: ...

    @property
    def path(self) -> Path: ...


def _check_ids(snapshot_id: str, model_id: str) -> None:
    if not _SNAPSHOT_RE.match(snapshot_id):
        raise ValueError(f"invalid snapshot id {snapshot_id!r}")
    if not _MODEL_RE.match(model_id):
        raise ValueError(f"invalid model id {model_id!r}")


def embeddings_dir(data_dir: str | os.PathLike[str], snapshot_id: str, model_id: str) -> Path:
    _check_ids(snapshot_id, model_id)
    return Path(data_dir) / "embeddings" / snapshot_id / model_id


def messages_path(data_dir: str | os.PathLike[str], snapshot_id: str) -> Path:
    """The snapshot's parquet file (it need not exist)."""
    return SnapshotStore(data_dir).snapshots_dir / snapshot_id / MESSAGES_FILE


def active_model(data_dir: str | os.PathLike[str]) -> HasIdPath:
    """The active model version (``models.registry``), "base" = the public weights."""
    return ModelRegistry(data_dir).active()


def default_encoder(model_version: HasIdPath, device: str | None = None) -> TextEncoder:
    """``models.encoder.Encoder`` for the version's weights."""
    return Encoder(model_version.path, device=device)


def load(data_dir: str | os.PathLike[str], snapshot_id: str, model_id: str) -> np.memmap | None:
    """The cached vectors (read-only memmap, row-aligned with the snapshot), or None when no
    complete build exists."""
    try:
        d = embeddings_dir(data_dir, snapshot_id, model_id)
    except ValueError:
        return None
    try:
        manifest = json.loads((d / MANIFEST_FILE).read_text(encoding="utf-8"))
        vectors = np.load(d / VECTORS_FILE, mmap_mode="r")
    except (FileNotFoundError, NotADirectoryError, ValueError, json.JSONDecodeError):
        return None
    if manifest.get("status") != "finished" or vectors.shape != (manifest["rows"], manifest["dim"]):
        return None
    return vectors  # type: ignore[no-any-return]


def manifest(data_dir: str | os.PathLike[str], snapshot_id: str, model_id: str) -> dict[str, Any]:
    """The build's manifest (FileNotFoundError when none): operator information only."""
    d = embeddings_dir(data_dir, snapshot_id, model_id)
    return json.loads((d / MANIFEST_FILE).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _texts(parquet: Path, batch: int) -> tuple[int, Any]:
    conn = duckdb.connect(":memory:")
    quoted = str(parquet.resolve()).replace("'", "''")
    src = f"read_parquet('{quoted}', file_row_number=true)"
    rows = int(conn.execute(f"SELECT count(*) FROM {src}").fetchone()[0])  # type: ignore[index]

    def gen():  # type: ignore[no-untyped-def]
        try:
            res = conn.execute(f"SELECT text FROM {src} ORDER BY file_row_number")
            while True:
                chunk = res.fetchmany(batch)
                if not chunk:
                    return
                yield [r[0] or "" for r in chunk]
        finally:
            conn.close()

    return rows, gen()


def _write_vectors(
    path: Path,
    parquet: Path,
    encoder: TextEncoder,
    *,
    batch_size: int,
    chunk: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[int, int]:
    """Embed the snapshot's texts into ``path`` (float16, unit rows, parquet row order);
    returns (rows, dim)."""
    total, batches = _texts(parquet, chunk)
    out: np.memmap | None = None
    done = 0
    dim = 0
    for texts in batches:
        vecs = np.asarray(encoder.encode(texts, batch_size=batch_size), dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(texts):
            raise ValueError(f"encoder returned shape {vecs.shape} for {len(texts)} texts")
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs = (vecs / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        if out is None:
            dim = vecs.shape[1]
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(total, dim))
        out[done : done + len(texts)] = vecs.astype(np.float16)
        done += len(texts)
        if progress is not None:
            progress(done, total)
    if out is None:  # an empty snapshot
        dim = 0
        np.save(path, np.zeros((0, 0), dtype=np.float16))
    else:
        out.flush()
        del out
    if done != total:
        raise ValueError(f"read {done} of {total} rows")
    return total, dim


def build_corpus_embeddings(
    data_dir: str | os.PathLike[str],
    snapshot_id: str,
    model_version: HasIdPath,
    *,
    encoder: TextEncoder,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = BATCH_SIZE,
    chunk: int = 4096,
) -> Path:
    """Embed every message of ``snapshot_id`` with ``encoder`` (the weights of
    ``model_version``) and cache them; returns the final directory.

    Rows are in parquet file order, so row i of ``vectors.npy`` is ``file_row_number`` i.
    Vectors are re-normalised to unit L2 norm before the float16 cast. ``progress(done,
    total)`` is called after each chunk. An existing complete build is kept (returned as is).
    Raises FileNotFoundError when the snapshot has no parquet file, ValueError for bad ids or
    an encoder returning the wrong shape.
    """
    final = embeddings_dir(data_dir, snapshot_id, model_version.id)
    if load(data_dir, snapshot_id, model_version.id) is not None:
        return final
    parquet = messages_path(data_dir, snapshot_id)
    if not parquet.is_file():
        raise FileNotFoundError(f"snapshot {snapshot_id} has no messages file")
    started = time.perf_counter()
    with atomic.staging_dir(Path(data_dir) / "embeddings" / "tmp", prefix="embed-") as tmp:
        total, dim = _write_vectors(tmp / VECTORS_FILE, parquet, encoder, batch_size=batch_size,
                                    chunk=chunk, progress=progress)  # fmt: skip
        seconds = time.perf_counter() - started
        info = {
            "snapshot_id": snapshot_id,
            "model_id": model_version.id,
            "rows": total,
            "dim": dim,
            "dtype": "float16",
            "status": "finished",
            "created_at": datetime.now(UTC).isoformat(),
            "seconds": round(seconds, 3),
            "messages_per_second": round(total / seconds, 1) if seconds > 0 else None,
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(info, indent=2, sort_keys=True), "utf-8")
        try:
            atomic.publish_dir(tmp, final)
        except FileExistsError:
            # another build finished first
            if load(data_dir, snapshot_id, model_version.id) is None:
                raise
    return final
