"""Immutable, versioned corpus snapshots on disk, and read-only DuckDB access to them.

Layout under ``data_dir``::

    corpus/
      LIVE                         the id of the live snapshot (replaced atomically)
      snapshots/<id>/messages.parquet
      snapshots/<id>/manifest.json
      tmp/<unique>/                 ingests in progress (never read by queries)

A snapshot is written in a unique directory under ``tmp/``, fsynced, renamed into
``snapshots/<id>`` and only then made live (:mod:`util.atomic`), so a reader never sees a
half-written snapshot and a failed ingest leaves the live one untouched. Snapshots are never
modified afterwards.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from util import atomic

MESSAGES_FILE = "messages.parquet"
MANIFEST_FILE = "manifest.json"
_ID_RE = re.compile(r"^snap-\d{8}T\d{6}Z-[0-9a-f]{8}(?:-\d+)?$")


class SnapshotNotFound(KeyError):
    """No snapshot with the given id exists (or no snapshot is live)."""


@dataclass(frozen=True)
class SnapshotInfo:
    """Public description of one snapshot: safe to report with every answer.

    It deliberately holds no message or sender counts.
    """

    id: str
    created_at: datetime
    source: str
    metadata_columns: list[str] = field(default_factory=list)
    path: Path = Path()

    @property
    def messages_path(self) -> Path:
        """The snapshot's parquet file."""
        return self.path / MESSAGES_FILE

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (``path`` omitted: it is an operator detail)."""
        return {
            "id": self.id,
            "created_at": self.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "source": self.source,
            "metadata_columns": list(self.metadata_columns),
        }


class SnapshotStore:
    """The snapshots of one data directory.

    Thread- and process-safe for reading; concurrent ingests each write their own temporary
    directory. The live pointer is last-writer-wins.
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "corpus"
        self.snapshots_dir = self.root / "snapshots"
        self.tmp_dir = self.root / "tmp"
        self.live_file = self.root / "LIVE"
        self._lock = threading.Lock()
        self._cache: dict[str, duckdb.DuckDBPyConnection] = {}
        self._cache_pid = os.getpid()
        #: How many times this store handed out access to a snapshot's messages (``cursor``
        #: and ``connect``): tests use it to check that a refused request read nothing.
        self.reads = 0
        self._infos: dict[str, SnapshotInfo] = {}

    # -- reading -------------------------------------------------------------------------
    def get(self, snapshot_id: str) -> SnapshotInfo:
        """Return the snapshot ``snapshot_id``; raise :class:`SnapshotNotFound` if absent.

        A snapshot never changes once published, so its parsed manifest is kept per process
        (checked to still exist, one stat, on every call).
        """
        if not _ID_RE.match(snapshot_id):
            raise SnapshotNotFound(snapshot_id)
        path = self.snapshots_dir / snapshot_id
        known = self._infos.get(snapshot_id)
        if known is not None and path.is_dir():
            return known
        info = self._read_manifest(snapshot_id, path)
        self._infos[snapshot_id] = info
        return info

    def _read_manifest(self, snapshot_id: str, path: Path) -> SnapshotInfo:
        try:
            manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            raise SnapshotNotFound(snapshot_id) from None
        return SnapshotInfo(
            id=manifest["id"],
            created_at=datetime.fromisoformat(manifest["created_at"]),
            source=manifest["source"],
            metadata_columns=list(manifest["metadata_columns"]),
            path=path,
        )

    def list(self) -> list[SnapshotInfo]:
        """All complete snapshots, oldest first."""
        if not self.snapshots_dir.is_dir():
            return []
        infos = []
        for entry in self.snapshots_dir.iterdir():
            try:
                infos.append(self.get(entry.name))
            except SnapshotNotFound:
                continue
        return sorted(infos, key=lambda s: (s.created_at, s.id))

    def live(self) -> SnapshotInfo | None:
        """The live snapshot, or ``None`` before the first ingest."""
        snapshot_id = atomic.read_pointer(self.live_file)
        return None if snapshot_id is None else self.get(snapshot_id)

    def is_reachable(self) -> bool:
        """Readiness: a snapshot is live and its parquet file can be read."""
        try:
            info = self.live()
        except (OSError, SnapshotNotFound, ValueError, KeyError):
            return False
        return info is not None and os.access(info.messages_path, os.R_OK)

    # -- switching -----------------------------------------------------------------------
    def activate(self, snapshot_id: str) -> SnapshotInfo:
        """Make ``snapshot_id`` the live snapshot (atomic replace of the LIVE file)."""
        info = self.get(snapshot_id)
        atomic.write_pointer(self.live_file, info.id)
        return info

    # -- writing (used by ingest) --------------------------------------------------------
    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh working directory for one ingest (under ``tmp/``); write
        ``messages.parquet`` into it and :meth:`publish` it inside the block. Removed when the
        block ends, so a failed ingest leaves nothing behind."""
        with atomic.staging_dir(self.tmp_dir, prefix="ingest-") as tmp:
            yield tmp

    def clean_stale_tmp(self, older_than_s: float = 24 * 3600) -> builtins.list[Path]:
        """Remove ingest working directories untouched for ``older_than_s`` seconds.

        They are left only by an ingest that was killed (a failing ingest cleans up after
        itself). A younger directory may belong to an ingest still running, so it is kept.
        Returns the directories removed.
        """
        return atomic.remove_stale(self.tmp_dir, older_than_s)

    def publish(
        self, tmp: Path, manifest: dict[str, Any], *, activate: bool = True
    ) -> SnapshotInfo:
        """Seal ``tmp`` (a :meth:`staging` directory holding ``messages.parquet``) as snapshot
        ``manifest['id']``.

        Writes the manifest, makes both files read-only, fsyncs, renames into ``snapshots/``
        (FileExistsError if that snapshot exists) and, if ``activate``, flips LIVE. On any
        failure nothing is published and LIVE is untouched (the staging block removes ``tmp``).
        """
        snapshot_id = manifest["id"]
        if not _ID_RE.match(snapshot_id):
            raise ValueError(f"invalid snapshot id {snapshot_id!r}")
        (tmp / MANIFEST_FILE).write_text(
            json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8"
        )
        for name in (MESSAGES_FILE, MANIFEST_FILE):
            os.chmod(tmp / name, 0o400)  # read-only, and for the owner only
        atomic.publish_dir(tmp, self.snapshots_dir / snapshot_id)
        return self.activate(snapshot_id) if activate else self.get(snapshot_id)

    # -- querying ------------------------------------------------------------------------
    def _resolve(self, snapshot: str | SnapshotInfo | None) -> SnapshotInfo:
        """The snapshot named by an id or an info; the live one for ``None``."""
        if snapshot is None:
            info = self.live()
            if info is None:
                raise SnapshotNotFound("no live snapshot")
            return info
        if isinstance(snapshot, SnapshotInfo):
            return snapshot
        return self.get(snapshot)

    def connect(self, snapshot: str | SnapshotInfo | None = None) -> duckdb.DuckDBPyConnection:
        """A new DuckDB connection with a read-only view ``messages`` over one snapshot.

        ``snapshot`` is an id, a :class:`SnapshotInfo` or ``None`` for the live snapshot.
        The session time zone is UTC, and file access is locked to that snapshot's parquet
        file (no other file can be read or written; the configuration cannot be changed).
        A DuckDB connection is not thread-safe: create one per process (see
        :meth:`cursor`) and give each thread its own ``conn.cursor()``.
        """
        info = self._resolve(snapshot)
        self.reads += 1
        return self._open(info)

    def _open(self, info: SnapshotInfo) -> duckdb.DuckDBPyConnection:
        parquet = str(info.messages_path.resolve())
        quoted = parquet.replace("'", "''")
        conn = duckdb.connect(":memory:")
        try:
            conn.execute("SET TimeZone = 'UTC'")
            # A snapshot's file never changes once published: its footer is parsed once per
            # process, not on every query (BENCHMARKS.md, "Charged hot path").
            conn.execute("SET parquet_metadata_cache = true")
            conn.execute(f"CREATE VIEW messages AS SELECT * FROM read_parquet('{quoted}')")
            conn.execute(f"SET allowed_paths = ['{quoted}']")
            conn.execute("SET enable_external_access = false")
            conn.execute("SET lock_configuration = true")
        except BaseException:
            conn.close()
            raise
        return conn

    def cursor(
        self, snapshot: str | SnapshotInfo | None = None
    ) -> tuple[SnapshotInfo, duckdb.DuckDBPyConnection]:
        """Per-process cached access: ``(snapshot info, fresh cursor)`` for the calling thread.

        One base connection per snapshot is cached for this process (re-created after a fork);
        each call returns a new cursor on it, which the caller uses from one thread and closes.
        With ``snapshot=None`` the LIVE pointer is re-read on every call, so a switch takes
        effect on the next request.
        """
        info = self._resolve(snapshot)
        self.reads += 1
        with self._lock:
            if self._cache_pid != os.getpid():
                self._cache = {}  # connections do not survive a fork
                self._cache_pid = os.getpid()
            conn = self._cache.get(info.id)
            if conn is None:
                conn = self._cache[info.id] = self._open(info)
            return info, conn.cursor()

    def close(self) -> None:
        """Close this process's cached connections."""
        with self._lock:
            for conn in self._cache.values():
                conn.close()
            self._cache = {}
