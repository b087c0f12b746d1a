"""The corpus: ingestion into immutable, versioned snapshots and read-only access to them.

Readers (``readers``), per-message features (``features``), ingestion (``ingest``) and the
snapshot store (``store``). It sits above ``mechanisms`` and ``util`` and below ``jobs``,
``models`` and ``service``, and imports none of those three: the CLI, the HTTP layer and
training call these functions. No web framework here.
"""

from corpus.features import tokenize
from corpus.ingest import ingest_demo, ingest_file
from corpus.readers import IngestError
from corpus.store import SnapshotInfo, SnapshotNotFound, SnapshotStore

__all__ = [
    "IngestError",
    "SnapshotInfo",
    "SnapshotNotFound",
    "SnapshotStore",
    "ingest_demo",
    "ingest_file",
    "tokenize",
]
