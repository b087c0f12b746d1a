"""The DuckDB engine for embedding queries: the same scan, plus each message's cached vector.

:class:`DuckDBEmbeddingEngine` selects messages exactly as :class:`DuckDBEngine` does (the
filters, then at most ``m`` per sender by random rank), reading the snapshot's parquet with its
row numbers so that they index the cached vectors, and sums the selected vectors after
:func:`corpus.engine.quantise` (exact int64 sums, from which the embedding kinds' sensitivities
follow). It implements :class:`corpus.engine.EmbeddingEngine`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from corpus.duckdb_engine import DuckDBEngine
from corpus.engine import Scan, quantise

CHUNK_ROWS = 16_384


class DuckDBEmbeddingEngine(DuckDBEngine):
    """``DuckDBEngine`` over the snapshot's parquet with row numbers, plus the cached vectors
    (one row per parquet row) and the public vocabulary the answer names terms from."""

    def __init__(
        self,
        cursor: duckdb.DuckDBPyConnection,
        scan: Scan,
        *,
        parquet: Path,
        vectors: np.ndarray,
        vocabulary: Any,
    ) -> None:
        super().__init__(cursor, scan)
        quoted = str(Path(parquet).resolve()).replace("'", "''")
        self.source = f"read_parquet('{quoted}', file_row_number=true)"
        self.vectors = vectors
        self.vocabulary = vocabulary

    def positions(self, max_messages: int) -> np.ndarray:
        """Parquet row numbers of the filtered, capped messages (sorted)."""
        sql, params = self.capped("file_row_number AS _pos", max_messages)
        res = self.cur.execute(f"SELECT _pos FROM ({sql}) ORDER BY _pos", params).fetchnumpy()
        return np.asarray(res["_pos"], dtype=np.int64)

    def _quantised(self, positions: np.ndarray) -> Iterator[np.ndarray]:
        for i in range(0, len(positions), CHUNK_ROWS):
            yield quantise(self.vectors[positions[i : i + CHUNK_ROWS]])

    def bounded_sum(self, max_messages: int) -> tuple[int, np.ndarray]:
        """(count, exact int64 vector sum in grid units) of the capped messages."""
        pos = self.positions(max_messages)
        total = np.zeros(self.vectors.shape[1], dtype=np.int64)
        for q in self._quantised(pos):
            total += q.sum(axis=0, dtype=np.int64)
        return len(pos), total

    def cluster_sums(
        self, positions: np.ndarray, centres: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-cluster (counts, int64 vector sums) with each message in its nearest centre."""
        k = centres.shape[0]
        counts = np.zeros(k, dtype=np.int64)
        sums = np.zeros((k, self.vectors.shape[1]), dtype=np.int64)
        for q in self._quantised(positions):
            nearest = np.argmax(q.astype(np.float64) @ centres.T, axis=1)
            counts += np.bincount(nearest, minlength=k)
            for j in np.unique(nearest):
                sums[j] += q[nearest == j].sum(axis=0, dtype=np.int64)
        return counts, sums
