"""What the Spark ingest runs on the executors: per-batch validation and per-message features.

Each function takes an iterator of pandas batches (``mapInPandas``) and reuses the embedded
ingest's own code, so that a message gets the same validation, timestamp, metadata text and
features whichever ingest reads it: :func:`corpus.readers._required`,
:func:`corpus.readers.parse_timestamp`, :func:`corpus.readers._meta_value` and
:func:`corpus.features.score_texts`. The driver ships this module, ``corpus.readers`` and
``corpus.features`` to the executors by value (cloudpickle), so they need only
``vaderSentiment`` (and pandas and pyarrow, which PySpark needs anyway), not privtext.

Imports pyspark and pandas (the ``[spark]`` extra): load it only for a Spark ingest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pandas as pd
from pyspark import TaskContext

from corpus import readers
from corpus.features import SENTIMENT_COLUMNS, score_texts

#: The kinds of source: JSONL arrives as raw lines (one column ``value``), CSV and Parquet as
#: columns (all strings for CSV; Parquet's converted to strings or epoch seconds by the driver).
JSONL, TABLE = "jsonl", "table"

#: What the validation pass yields: counts of rows, error reasons and metadata keys, and the
#: first position each was seen at (partition, row), to report keys in order of appearance.
CHECK_SCHEMA = "kind string, value string, n long, first long"

_ROW_BITS = 40  # a position is partition << 40 | row within the partition


def _json_row(line: str) -> dict[str, Any] | None:
    """The object on one JSONL line (``None`` for a blank line); raises IngestError as
    :func:`corpus.readers.read_jsonl` does (line 0: Spark does not tell the line number)."""
    text = line[1:] if line.startswith("\ufeff") else line
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise readers.IngestError("", 0, f"invalid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise readers.IngestError("", 0, "expected a JSON object")
    return obj


def _table_row(record: dict[str, Any]) -> dict[str, Any]:
    """A CSV or Parquet row as the embedded reader would see it: a null required column is
    the empty string (CSV's empty cell), a null metadata cell stays null."""
    return {
        k: ("" if v is None and k in readers.REQUIRED_COLUMNS else v) for k, v in record.items()
    }


def _rows(batch: pd.DataFrame, source: str) -> Iterator[dict[str, Any] | None]:
    if source == JSONL:
        for line in batch["value"]:
            yield _json_row(line)
    else:
        for record in batch.to_dict("records"):
            yield _table_row({k: (None if _isnull(v) else v) for k, v in record.items()})


def _isnull(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _validate(row: dict[str, Any]) -> tuple[str, str, int, str]:
    sender, conversation, text = readers._required(row, "", 0)
    try:
        ts = readers.parse_timestamp(row["timestamp"])
    except (ValueError, TypeError, OverflowError):
        raise readers.IngestError(
            "", 0, "unparseable timestamp (expected ISO-8601 or epoch seconds)"
        ) from None
    return sender, conversation, ts, text


def check_batches(batches: Iterator[pd.DataFrame], source: str) -> Iterator[pd.DataFrame]:
    """Validation pass: per batch, ``(kind, value, n, first)`` for ``kind`` in ``rows`` (valid
    messages), ``error`` (a reason, never message text) and ``key`` (a metadata column)."""
    ctx = TaskContext.get()
    base = (ctx.partitionId() if ctx is not None else 0) << _ROW_BITS
    seen: dict[tuple[str, str], list[int]] = {}
    pos = base
    for batch in batches:
        for row in _rows(batch, source):
            pos += 1
            if row is None:
                continue
            for kind, value in _check_row(row):
                entry = seen.setdefault((kind, value), [0, pos])
                entry[0] += 1
    yield pd.DataFrame(
        [(k, v, n, first) for (k, v), (n, first) in seen.items()],
        columns=["kind", "value", "n", "first"],
    )


def _check_row(row: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        _validate(row)
        found = [("rows", "")]
        for key in row:
            if key not in readers.REQUIRED_COLUMNS:
                readers._check_meta_name(key, "", 0)
                found.append(("key", key))
        return found
    except readers.IngestError as exc:
        return [("error", exc.reason)]


def feature_batches(
    batches: Iterator[pd.DataFrame], source: str, metadata: list[str]
) -> Iterator[pd.DataFrame]:
    """Feature pass over validated input: sender, conversation, ts_us, text, chars, tokens,
    the four VADER scores and the metadata columns (strings), as :mod:`corpus.ingest`."""
    for batch in batches:
        cols: dict[str, list[Any]] = {n: [] for n in ("sender", "conversation", "ts_us", "text")}
        meta: dict[str, list[Any]] = {name: [] for name in metadata}
        for row in _rows(batch, source):
            if row is None:
                continue
            for name, value in zip(cols, _validate(row), strict=True):
                cols[name].append(value)
            for name, column in meta.items():
                column.append(readers._meta_value(row.get(name)))
        tokens, scores = score_texts(cols["text"])
        out = pd.DataFrame(cols)
        out["ts_us"] = out["ts_us"].astype("int64")
        out["chars"] = pd.Series([len(t) for t in cols["text"]], dtype="int32")
        out["tokens"] = pd.Series(tokens, dtype="int32")
        for i, name in enumerate(SENTIMENT_COLUMNS):
            out[name] = pd.Series([s[i] for s in scores], dtype="float64")
        for name, column in meta.items():
            out[name] = pd.Series(column, dtype="object")
        yield out
