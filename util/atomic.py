"""Atomic publication on disk: a reader sees the old state or the new one, never half of one.

Every versioned artefact of the project is written this way: corpus snapshots
(``corpus/store.py``), model versions (``models/registry.py``), corpus embeddings
(``models/corpus_embeddings.py``) and vocabularies (``models/vocabulary.py``). Two moves:

* **A directory** is written in a fresh staging directory on the same file system, every file
  and directory in it is fsynced, and it is renamed to its final name in one step::

      with staging_dir(root / "tmp", prefix="ingest-") as tmp:
          (tmp / "data.bin").write_bytes(...)
          publish_dir(tmp, root / "snapshots" / snapshot_id)

  Whatever is left of the staging directory when the block ends (after an exception, or when
  it was never published) is removed, so a failure publishes nothing and leaves nothing.
  A process killed inside the block leaves its staging directory, never a partial target;
  :func:`remove_stale` sweeps such leftovers. A published directory is never overwritten:
  :func:`publish_dir` raises FileExistsError when the target already exists.

* **A pointer file** (a one-line file naming the live or active version) is flipped with
  :func:`write_pointer`: the new value goes to a temporary file beside it, is fsynced, and is
  renamed over the pointer with ``os.replace``, then the directory is fsynced. A concurrent
  :func:`read_pointer` reads either the old value or the new one.

Renames are atomic only within one file system, hence staging directories and pointer
temporaries live next to their targets. This module imports nothing from the project.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "fsync_path",
    "fsync_tree",
    "publish_dir",
    "read_pointer",
    "remove_stale",
    "staging_dir",
    "write_pointer",
]


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync one file or directory (directories best effort: some file systems refuse)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file and directory under ``root`` (``root`` itself last)."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)


@contextmanager
def staging_dir(tmp_root: str | os.PathLike[str], *, prefix: str) -> Iterator[Path]:
    """A fresh, unique directory under ``tmp_root`` (created if needed) for one write.

    Whatever of it still exists when the block ends is removed: everything after an exception,
    and an unpublished directory after a normal exit. Publish it with :func:`publish_dir`
    inside the block.
    """
    root = Path(tmp_root)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_dir(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """fsync ``staging``'s whole tree, rename it to ``target`` and fsync ``target``'s parent.

    ``target``'s parent is created if needed and must be on ``staging``'s file system.
    Raises FileExistsError when ``target`` already exists (as a non-empty directory or a file):
    nothing is overwritten. On any failure ``staging`` is removed and nothing is published.
    """
    staging, target = Path(staging), Path(target)
    try:
        fsync_tree(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging, target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise FileExistsError(exc.errno, f"{target} already exists") from exc
            raise
        fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_pointer(path: str | os.PathLike[str], value: str) -> None:
    """Atomically make the one-line file ``path`` hold ``value`` (written as ``value + "\\n"``,
    ASCII).

    The value is written to a temporary ``.<name>-*`` file in the same directory, fsynced and
    renamed over ``path`` (``os.replace``); the directory is fsynced afterwards. Raises
    ValueError for a value that is not one line of ASCII.
    """
    path = Path(path)
    if not value.isascii() or "\n" in value or "\r" in value:
        raise ValueError(f"a pointer holds one line of ASCII, got {value!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(value + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def read_pointer(path: str | os.PathLike[str]) -> str | None:
    """The value :func:`write_pointer` last wrote to ``path`` (stripped), None when no pointer
    exists yet."""
    try:
        return Path(path).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None


def remove_stale(tmp_root: str | os.PathLike[str], older_than_s: float) -> list[Path]:
    """Remove the entries of ``tmp_root`` untouched for ``older_than_s`` seconds: staging
    directories left by a killed writer (a failing one removes its own). A younger entry may
    belong to a write still running, so it is kept. Returns what was removed."""
    root = Path(tmp_root)
    if not root.is_dir():
        return []
    cutoff = time.time() - older_than_s
    removed = []
    for entry in root.iterdir():
        if entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
