"""The corpus: ingestion into immutable, versioned snapshots and read-only access to them.

No web framework here: the CLI and HTTP layers call these functions.
"""

from service.corpus.features import tokenize
from service.corpus.ingest import ingest_demo, ingest_file
from service.corpus.readers import IngestError
from service.corpus.store import SnapshotInfo, SnapshotNotFound, SnapshotStore

__all__ = [
    "IngestError",
    "SnapshotInfo",
    "SnapshotNotFound",
    "SnapshotStore",
    "ingest_demo",
    "ingest_file",
    "tokenize",
]
