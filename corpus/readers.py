"""Parse and validate a corpus source (JSONL, CSV or the chitchat demo) into columns.

Everything is validated here, before any snapshot directory exists. Errors name the file,
the 1-based physical line and a reason that never quotes message content.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tqdm import tqdm

REQUIRED_COLUMNS = ("sender", "conversation", "timestamp", "text")
#: Names produced at ingest; a metadata column may not use them.
RESERVED_COLUMNS = frozenset(REQUIRED_COLUMNS) | {
    "ts", "sender_id", "conversation_id", "msg_rank", "chars", "tokens",
    "sentiment_compound", "sentiment_pos", "sentiment_neu", "sentiment_neg",
}  # fmt: skip
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv",)
_META_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_NUMBER_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_MIN_EPOCH_S, _MAX_EPOCH_S = -62135596800, 253402300799  # years 1 to 9999


class IngestError(ValueError):
    """A corpus source is malformed; nothing was ingested.

    ``line`` is 1-based (for CSV the physical line, header included); 0 means the whole file.
    ``reason`` never contains message text.
    """

    def __init__(self, file: str, line: int, reason: str) -> None:
        super().__init__(f"{file}:{line}: {reason}")
        self.file = file
        self.line = line
        self.reason = reason


@dataclass
class Records:
    """Validated messages as parallel columns; timestamps in microseconds since the epoch."""

    sender: list[str] = field(default_factory=list)
    conversation: list[str] = field(default_factory=list)
    ts_us: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    metadata: dict[str, list[str | None]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.text)


def parse_timestamp(value: Any) -> int:
    """ISO-8601 (naive means UTC) or epoch seconds -> microseconds since the epoch (UTC).

    Raises ``ValueError`` for anything else.
    """
    if isinstance(value, bool):
        raise ValueError("boolean timestamp")
    if isinstance(value, str):
        value = value.strip()
        if _NUMBER_RE.match(value):
            value = float(value)
    if isinstance(value, int | float):
        seconds = float(value)
        if not math.isfinite(seconds) or not _MIN_EPOCH_S <= seconds <= _MAX_EPOCH_S:
            raise ValueError("epoch seconds out of range")
        return round(seconds * 1_000_000)
    if not isinstance(value, str):
        raise ValueError("timestamp must be a string or a number")
    dt = datetime.fromisoformat(value)
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return (dt - _EPOCH) // _US


def _meta_value(value: Any) -> str | None:
    """Metadata is stored as strings: scalars as their JSON text, objects as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _check_meta_name(name: str, file: str, line: int) -> None:
    if name in RESERVED_COLUMNS:
        raise IngestError(file, line, f"metadata column {name!r} uses a reserved name")
    if not _META_NAME_RE.match(name):
        raise IngestError(file, line, "metadata column name must match [A-Za-z_][A-Za-z0-9_]*")


def _required(row: Mapping[str, Any], file: str, line: int) -> tuple[str, str, str]:
    """The row's sender, conversation and text: present, strings, the first two not blank."""
    for col in REQUIRED_COLUMNS:
        if col not in row:
            raise IngestError(file, line, f"missing column {col!r}")
    sender, conversation, text = row["sender"], row["conversation"], row["text"]
    for col, val in (("sender", sender), ("conversation", conversation), ("text", text)):
        if not isinstance(val, str):
            raise IngestError(file, line, f"column {col!r} must be a string")
    if not sender.strip():
        raise IngestError(file, line, "empty sender")
    if not conversation.strip():
        raise IngestError(file, line, "empty conversation")
    return sender, conversation, text


def add_row(records: Records, row: Mapping[str, Any], file: str, line: int) -> None:
    """Validate one message and append it to ``records`` (new metadata columns are back-filled
    with nulls for earlier rows)."""
    sender, conversation, text = _required(row, file, line)
    try:
        ts = parse_timestamp(row["timestamp"])
    except (ValueError, TypeError, OverflowError):
        raise IngestError(
            file, line, "unparseable timestamp (expected ISO-8601 or epoch seconds)"
        ) from None
    meta = records.metadata
    n = len(records.text)
    for key in row:
        if key not in meta and key not in REQUIRED_COLUMNS:
            _check_meta_name(key, file, line)
            meta[key] = [None] * n
    for key, column in meta.items():
        column.append(_meta_value(row.get(key)))
    records.sender.append(sender)
    records.conversation.append(conversation)
    records.ts_us.append(ts)
    records.text.append(text)


def _decoded_lines(fh: Any, file: str, bar: tqdm) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` for each physical line, decoding UTF-8 strictly."""
    for lineno, raw in enumerate(fh, 1):
        bar.update(len(raw))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise IngestError(file, lineno, f"not valid UTF-8 (byte {exc.start})") from None
        if lineno == 1 and text.startswith("\ufeff"):
            text = text[1:]
        yield lineno, text


def read_jsonl(path: Path, records: Records, bar: tqdm) -> None:
    """One JSON object per line; blank lines are skipped."""
    file = str(path)
    with open(path, "rb") as fh:
        for lineno, text in _decoded_lines(fh, file, bar):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise IngestError(file, lineno, f"invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise IngestError(file, lineno, "expected a JSON object")
            add_row(records, obj, file, lineno)


def _checked_header(header: list[str] | None, file: str) -> list[str]:
    """The CSV header: present, no name twice, the required columns, valid metadata names."""
    if header is None:
        raise IngestError(file, 0, "empty file")
    if len(set(header)) != len(header):
        raise IngestError(file, 1, "duplicate column name in header")
    for col in REQUIRED_COLUMNS:
        if col not in header:
            raise IngestError(file, 1, f"missing column {col!r}")
    for name in header:
        if name not in REQUIRED_COLUMNS:
            _check_meta_name(name, file, 1)
    return header


def read_csv(path: Path, records: Records, bar: tqdm) -> None:
    """A header line, then one message per record (quoted fields may span lines).

    Empty metadata cells are stored as null.
    """
    file = str(path)
    with open(path, "rb") as fh:
        lines = (text for _, text in _decoded_lines(fh, file, bar))
        reader = csv.reader(lines, strict=True)
        start = 1
        try:
            header = _checked_header(next(reader, None), file)
            start = reader.line_num + 1
            for fields in reader:
                if fields:
                    if len(fields) != len(header):
                        raise IngestError(
                            file, start, f"expected {len(header)} fields, found {len(fields)}"
                        )
                    row = {k: (v if v != "" or k in REQUIRED_COLUMNS else None)
                           for k, v in zip(header, fields, strict=True)}  # fmt: skip
                    add_row(records, row, file, start)
                start = reader.line_num + 1
        except csv.Error as exc:
            raise IngestError(file, start, f"malformed CSV ({exc})") from None


def read_file(path: str | os.PathLike[str], *, progress: bool = False) -> Records:
    """Read and validate a JSONL or CSV corpus file (format chosen by extension)."""
    path = Path(path)
    file = str(path)
    suffix = path.suffix.lower()
    if suffix not in JSONL_SUFFIXES + CSV_SUFFIXES:
        raise IngestError(file, 0, "unsupported file type (expected .jsonl, .ndjson, .json, .csv)")
    try:
        size = path.stat().st_size
    except OSError:
        raise IngestError(file, 0, "file not found or not readable") from None
    records = Records()
    with tqdm(total=size, unit="B", unit_scale=True, desc="reading", disable=not progress) as bar:
        if suffix in CSV_SUFFIXES:
            read_csv(path, records, bar)
        else:
            read_jsonl(path, records, bar)
    if not len(records):
        raise IngestError(file, 0, "empty file: no messages")
    return records
