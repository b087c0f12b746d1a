"""Corpus ingestion: validate a source, compute per-message features, publish a snapshot.

``ingest_file`` and ``ingest_demo`` validate the whole source first (raising
:class:`IngestError` with file, line and reason), then score every message (VADER over a
process pool), write ``messages.parquet`` into a private temporary directory and publish it
as a new immutable snapshot, which becomes live only once complete.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import secrets
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import chitchat_dataset
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from corpus.features import SENTIMENT_COLUMNS, TOKEN_RE, score_texts, tokenize
from corpus.readers import IngestError, Records, add_row, read_file
from corpus.store import MESSAGES_FILE, SnapshotInfo, SnapshotStore

__all__ = ["IngestError", "ingest_demo", "ingest_file", "tokenize", "build_snapshot"]

FORMAT_VERSION = 1
CHUNK_SIZE = 4096
#: Below this many messages, scoring runs in-process (a pool's start-up would dominate).
MIN_PARALLEL = 4 * CHUNK_SIZE
DEMO_METADATA = ("prompt", "rating_witty", "rating_upbeat", "rating_interesting")


def default_workers() -> int:
    """CPUs available to this process, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _score(
    texts: list[str], workers: int, progress: bool
) -> tuple[list[int], list[tuple[float, float, float, float]]]:
    """Token counts and VADER scores, in chunks over ``workers`` processes (order kept)."""
    chunks = [texts[i : i + CHUNK_SIZE] for i in range(0, len(texts), CHUNK_SIZE)]
    tokens: list[int] = []
    scores: list[tuple[float, float, float, float]] = []
    with tqdm(total=len(texts), unit="msg", desc="scoring", disable=not progress) as bar:
        if workers == 1 or len(texts) < MIN_PARALLEL:
            results: Any = map(score_texts, chunks)
            pool = None
        else:
            # spawn, not fork: the caller may hold threads (DuckDB, a web server).
            pool = multiprocessing.get_context("spawn").Pool(min(workers, len(chunks)))
            results = pool.imap(score_texts, chunks)
        try:
            for chunk_tokens, chunk_scores in results:
                tokens.extend(chunk_tokens)
                scores.extend(chunk_scores)
                bar.update(len(chunk_tokens))
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    return tokens, scores


def _dense_random_ids(values: list[str], rng: np.random.Generator) -> np.ndarray:
    """Map each distinct string to an int in ``0..k-1``, the ints assigned in random order."""
    codes: dict[str, int] = {}
    idx = np.fromiter((codes.setdefault(v, len(codes)) for v in values), np.int64, len(values))
    return rng.permutation(len(codes)).astype(np.int32)[idx]


def random_ranks(group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rank ``0..n_g-1`` of each element within its group.

    Independent of everything but group membership, so "at most m per group" is ``rank < m``.
    """
    n = len(group)
    order = np.lexsort((rng.random(n), group))
    sorted_group = group[order]
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_group[1:] != sorted_group[:-1]
    positions = np.arange(n)
    group_start = np.maximum.accumulate(np.where(first, positions, 0))
    ranks = np.empty(n, dtype=np.int32)
    ranks[order] = positions - group_start
    return ranks


def _to_table(records: Records, tokens: list[int], scores: list[Any]) -> pa.Table:
    # The generator is seeded from the OS CSPRNG on every ingest; ranks and ids are public
    # randomness, drawn once, independent of message content.
    rng = np.random.default_rng(secrets.randbits(128))
    sender_id = _dense_random_ids(records.sender, rng)
    score_arr = np.asarray(scores, dtype=np.float64).reshape(-1, 4)
    columns: dict[str, pa.Array] = {
        "sender_id": pa.array(sender_id, pa.int32()),
        "conversation_id": pa.array(_dense_random_ids(records.conversation, rng), pa.int32()),
        "msg_rank": pa.array(random_ranks(sender_id, rng), pa.int32()),
        "ts": pa.array(records.ts_us, pa.timestamp("us", tz="UTC")),
        "chars": pa.array([len(t) for t in records.text], pa.int32()),
        "tokens": pa.array(tokens, pa.int32()),
    }
    for i, name in enumerate(SENTIMENT_COLUMNS):
        columns[name] = pa.array(score_arr[:, i], pa.float64())
    columns["text"] = pa.array(records.text, pa.string())
    columns["sender"] = pa.array(records.sender, pa.string())
    columns["conversation"] = pa.array(records.conversation, pa.string())
    for name, values in records.metadata.items():
        columns[name] = pa.array(values, pa.string())
    return pa.table(columns)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_snapshot(
    records: Records,
    data_dir: str | os.PathLike[str],
    *,
    source: str,
    progress: bool = False,
    workers: int | None = None,
    activate: bool = True,
) -> SnapshotInfo:
    """Score validated ``records`` and publish them as a new snapshot (live if ``activate``).

    On failure nothing is left behind and the live snapshot is unchanged.
    """
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if not len(records):
        raise ValueError("no records")
    tokens, scores = _score(records.text, workers, progress)
    # Rows are stored in order of their random per-sender rank, so that the per-sender cap
    # ``msg_rank < m`` reads only the first row groups (parquet min/max statistics let DuckDB
    # skip the rest). The rank is drawn independently of content: the order reveals nothing.
    table = _to_table(records, tokens, scores).sort_by([("msg_rank", "ascending")])
    store = SnapshotStore(data_dir)
    with store.staging() as tmp:
        pq.write_table(table, tmp / MESSAGES_FILE, compression="zstd", row_group_size=16384)
        content_hash = _sha256(tmp / MESSAGES_FILE)
        created = datetime.now(UTC)
        manifest = {
            "id": f"snap-{created:%Y%m%dT%H%M%SZ}-{content_hash[:8]}",
            "created_at": created.isoformat(),
            "source": source,
            "metadata_columns": list(records.metadata),
            "format_version": FORMAT_VERSION,
            "content_sha256": content_hash,
            "columns": {f.name: str(f.type) for f in table.schema},
            "features": {
                "tokenizer": TOKEN_RE.pattern,
                "vaderSentiment": importlib_metadata.version("vaderSentiment"),
            },
        }
        return store.publish(tmp, manifest, activate=activate)


def ingest_file(
    path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    progress: bool = False,
    workers: int | None = None,
) -> SnapshotInfo:
    """Ingest a JSONL (.jsonl/.ndjson/.json, one object per line) or CSV file.

    Required columns: ``sender``, ``conversation``, ``timestamp`` (ISO-8601, naive = UTC, or
    epoch seconds), ``text``; every other column is kept as string metadata. Raises
    :class:`IngestError` (file, line, reason) before anything is written.
    """
    records = read_file(path, progress=progress)
    return build_snapshot(
        records, data_dir, source=f"file:{Path(path).name}", progress=progress, workers=workers
    )


def read_demo(limit: int | None = None, *, progress: bool = False) -> Records:
    """The chitchat-dataset corpus as records (the first ``limit`` utterances if given).

    Each utterance is a message: sender = its ``sender`` UUID, conversation = the conversation
    key, timestamp = its ``timestamp``. Metadata from the conversation: ``prompt`` and the
    ``ratings`` (``rating_witty``, ``rating_upbeat``, ``rating_interesting``), null if absent.
    """
    path = Path(chitchat_dataset.__file__).with_name("dataset.json")
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    records = Records(metadata={name: [] for name in DEMO_METADATA})
    file = str(path)
    for conv_key, conv in tqdm(data.items(), desc="reading", unit="conv", disable=not progress):
        ratings = conv.get("ratings") or {}
        meta = {
            "prompt": conv.get("prompt"),
            **{f"rating_{k}": ratings.get(k) for k in ("witty", "upbeat", "interesting")},
        }
        for turn in conv["messages"]:
            for utt in turn:
                if limit is not None and len(records) >= limit:
                    return records
                row = {**meta, "sender": utt["sender"], "conversation": conv_key,
                       "timestamp": utt["timestamp"], "text": utt["text"]}  # fmt: skip
                add_row(records, row, file, 0)
    return records


def ingest_demo(
    data_dir: str | os.PathLike[str],
    *,
    progress: bool = False,
    workers: int | None = None,
    limit: int | None = None,
) -> SnapshotInfo:
    """Ingest the chitchat-dataset corpus (258,145 utterances; ``limit`` for tests)."""
    version = importlib_metadata.version("chitchat-dataset")
    records = read_demo(limit, progress=progress)
    source = f"demo:chitchat-dataset {version}" + (f" (first {limit})" if limit else "")
    return build_snapshot(records, data_dir, source=source, progress=progress, workers=workers)
