"""``privtext ingest --engine spark``: validate a source, compute the features and the random
ranks in Spark, and publish the result as an ordinary snapshot (issue 14, "Ingest at scale").

The Spark Connect server reads the source (JSONL, CSV or Parquet; a path it can reach) and
writes into the store's staging directory, which it must therefore reach at the same path (a
server on this machine, or storage mounted at the same path on the query node and every
executor). The steps:

1. **Validate** (one pass, no VADER): every row goes through the embedded reader's own checks
   (:mod:`corpus.spark_rows`); any bad row raises :class:`IngestError` with the reader's reason
   and the number of rows, before anything is written. Spark does not say line numbers: the
   error's line is 0 (the whole file).
2. **Features** (mapInPandas, VADER on the executors), written once to ``staging/_features``
   so that the random draws below read a fixed input.
3. **Ids and ranks** in Spark SQL, from three seeds drawn from the OS CSPRNG (``secrets``):
   ``sender_id`` and ``conversation_id`` dense ``0..k-1`` in random order, and ``msg_rank`` the
   row number of each message in its sender's messages ordered by an independent uniform draw
   (a uniformly random order, as :func:`corpus.ingest.random_ranks`). Rows are written sorted
   by ``msg_rank`` to ``staging/_parts``.
4. **Publish**: the part files (in rank order) are copied row group by row group into one
   ``messages.parquet`` (zstd, 16,384-row groups, the embedded ingest's layout, so that both
   engines read it unchanged), the working directories are removed and the store publishes.

A failure at any step leaves nothing published and the live snapshot untouched.
"""

from __future__ import annotations

import csv
import secrets
import shutil
import socket
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark import cloudpickle
from pyspark.sql import functions as F  # noqa: N812 - pyspark's own convention
from pyspark.sql import types as T  # noqa: N812 - pyspark's own convention

from corpus import features, readers, spark_rows
from corpus.features import SENTIMENT_COLUMNS, TOKEN_RE
from corpus.ingest import FORMAT_VERSION, _sha256
from corpus.readers import IngestError
from corpus.spark_session import SparkConnect, SparkUnavailable
from corpus.store import MESSAGES_FILE, SnapshotInfo, SnapshotStore

__all__ = ["PARQUET_SUFFIXES", "SparkIngestFailed", "ingest_spark"]

PARQUET_SUFFIXES = (".parquet",)
ROW_GROUP_SIZE = 16384
_FEATURE_TYPES = (
    "sender string, conversation string, ts_us long, text string, chars int, tokens int, "
    + ", ".join(f"{name} double" for name in SENTIMENT_COLUMNS)
)
_READ_FAILED = "Spark could not read the source (is the path reachable from the Spark server?)"


class SparkIngestFailed(RuntimeError):
    """A Spark job of the ingest failed after validation; nothing was published. Spark's own
    message (which can quote the data) is dropped: see the Spark server's log."""

    def __init__(self) -> None:
        super().__init__("the Spark ingest failed; nothing was published")


def _require_listening(spark: SparkConnect) -> None:
    """Raise ``SparkUnavailable`` unless the server accepts a connection. Not
    :meth:`SparkConnect.require`: its round trip is bounded by a query's probe time, and a
    server's first job after a start takes longer (an operator's ingest may wait for it)."""
    try:
        socket.create_connection((spark.host, spark.port), spark.probe_timeout_s).close()
    except OSError:
        raise SparkUnavailable(spark.url) from None


def _source_kind(path: str) -> str:
    suffix = Path(urlsplit(path).path).suffix.lower()
    if suffix in readers.JSONL_SUFFIXES:
        return "jsonl"
    if suffix in readers.CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise IngestError(
        path, 0, "unsupported file type (expected .jsonl, .ndjson, .json, .csv, .parquet)"
    )


def _check_local(path: str) -> None:
    """A path without a scheme is local to this machine (and the server): it must exist."""
    if "://" not in path and not Path(path).exists():
        raise IngestError(path, 0, "file not found or not readable")


def _csv_frame(spark: Any, path: str) -> Any:
    """The CSV's rows, all strings; the header checked by the embedded reader's rules."""
    first = spark.read.text(path).limit(1).collect()
    if not first:
        raise IngestError(path, 0, "empty file")
    line = first[0][0].removeprefix("\ufeff")
    header = readers._checked_header(next(csv.reader([line], strict=True), None), path)
    frame = spark.read.csv(
        path, header=True, multiLine=True, escape='"', mode="FAILFAST", inferSchema=False,
        encoding="UTF-8", enforceSchema=False,
    )  # fmt: skip
    return frame.toDF(*header)


def _parquet_frame(spark: Any, path: str) -> Any:
    """The Parquet rows with the required string columns checked from the schema; timestamps
    typed as such become ISO-8601 text, other metadata becomes strings (JSON for nested)."""
    frame = spark.read.parquet(path)
    fields = {f.name: f.dataType for f in frame.schema.fields}
    for col in readers.REQUIRED_COLUMNS:
        if col not in fields:
            raise IngestError(path, 0, f"missing column {col!r}")
    for col in ("sender", "conversation", "text"):
        if not isinstance(fields[col], T.StringType):
            raise IngestError(path, 0, f"column {col!r} must be a string")
    out = []
    for name, dtype in fields.items():
        if name not in readers.REQUIRED_COLUMNS:
            readers._check_meta_name(name, path, 0)
        expr: Any = F.col(f"`{name}`")
        if isinstance(dtype, T.TimestampType | T.TimestampNTZType):
            expr = F.date_format(expr, "yyyy-MM-dd'T'HH:mm:ss.SSSSSS")
        elif isinstance(dtype, T.StructType | T.ArrayType | T.MapType):
            expr = F.to_json(expr)
        elif name != "timestamp" and not isinstance(dtype, T.StringType):
            expr = expr.cast("string")
        out.append(expr.alias(name))
    return frame.select(*out)


def _source_frame(spark: Any, path: str, kind: str) -> tuple[Any, str]:
    """``(DataFrame, spark_rows source kind)`` for the source; IngestError if unreadable."""
    try:
        if kind == "jsonl":
            return spark.read.text(path), spark_rows.JSONL
        if kind == "csv":
            return _csv_frame(spark, path), spark_rows.TABLE
        return _parquet_frame(spark, path), spark_rows.TABLE
    except IngestError:
        raise
    except Exception:  # noqa: BLE001 - Spark's message may quote the data
        raise IngestError(path, 0, _READ_FAILED) from None


def _validate(frame: Any, source: str, path: str) -> list[str]:
    """Run the validation pass; the metadata columns in order of first appearance."""

    def check(batches: Any) -> Any:
        return spark_rows.check_batches(batches, source)

    try:
        found = (
            frame.mapInPandas(check, spark_rows.CHECK_SCHEMA)
            .groupBy("kind", "value")
            .agg({"n": "sum", "first": "min"})
            .collect()
        )
    except Exception:  # noqa: BLE001 - Spark's message may quote the data
        raise IngestError(path, 0, _READ_FAILED) from None
    errors = sorted((r[3], r[1], r[2]) for r in found if r[0] == "error")
    if errors:
        _, reason, n = errors[0]
        more = f" ({n} rows; Spark does not report line numbers)"
        raise IngestError(path, 0, reason + more)
    if not any(r[0] == "rows" for r in found):
        raise IngestError(path, 0, "empty file: no messages")
    return [r[1] for r in sorted((r for r in found if r[0] == "key"), key=lambda r: r[3])]


def _ship_by_value() -> None:
    """Send the row code to the executors with the job, so that they need only its
    dependencies (vaderSentiment), not this version of privtext."""
    for module in (readers, features, spark_rows):
        cloudpickle.register_pickle_by_value(module)


def _write_features(frame: Any, source: str, metadata: list[str], out: str) -> None:
    schema = _FEATURE_TYPES + "".join(f", `{name}` string" for name in metadata)

    def score(batches: Any) -> Any:
        return spark_rows.feature_batches(batches, source, metadata)

    frame.mapInPandas(score, schema).write.parquet(out)


def _ranked(spark: Any, features_uri: str, metadata: list[str]) -> Any:
    """The features with random dense ids and per-sender random ranks, in the embedded
    ingest's column order, sorted by ``msg_rank``.

    The distinct senders and conversations (far fewer than messages) are numbered on one
    partition; the ranks are numbered per sender.
    """
    s_seed, c_seed, r_seed = (secrets.randbits(63) for _ in range(3))
    meta = "".join(f", `{name}`" for name in metadata)
    sql = f"""
        WITH s AS (SELECT sender, rand({s_seed}) AS _r FROM (SELECT DISTINCT sender FROM {{f}})),
        c AS (SELECT conversation, rand({c_seed}) AS _r
              FROM (SELECT DISTINCT conversation FROM {{f}})),
        sid AS (SELECT sender, CAST(row_number() OVER (ORDER BY _r, sender) - 1 AS INT)
                AS sender_id FROM s),
        cid AS (SELECT conversation, CAST(row_number() OVER (ORDER BY _r, conversation) - 1
                AS INT) AS conversation_id FROM c),
        m AS (SELECT f.*, sid.sender_id, cid.conversation_id, rand({r_seed}) AS _r
              FROM {{f}} f JOIN sid USING (sender) JOIN cid USING (conversation))
        SELECT sender_id, conversation_id,
            CAST(row_number() OVER (PARTITION BY sender_id ORDER BY _r) - 1 AS INT) AS msg_rank,
            timestamp_micros(ts_us) AS ts, chars, tokens, {", ".join(SENTIMENT_COLUMNS)},
            text, sender, conversation{meta}
        FROM m ORDER BY msg_rank
    """
    return spark.sql(sql, f=spark.read.parquet(features_uri))


def _merge_parts(parts: Path, target: Path) -> Any:
    """Copy the part files, in order, into one Parquet file; returns its Arrow schema."""
    files = sorted(parts.glob("part-*.parquet"))
    spark_schema = pq.read_schema(files[0])
    # Spark marks the ids and the rank NOT NULL and adds its own metadata: the embedded
    # ingest's schema has neither.
    schema = pa.schema([f.with_nullable(True) for f in spark_schema])
    with pq.ParquetWriter(target, schema, compression="zstd") as writer:
        for file in files:
            table = pq.read_table(file).replace_schema_metadata(None)
            if table.num_rows:
                writer.write_table(table.cast(schema), row_group_size=ROW_GROUP_SIZE)
    return schema


def ingest_spark(
    path: str, data_dir: str, *, spark: SparkConnect, activate: bool = True
) -> SnapshotInfo:
    """Ingest ``path`` (JSONL, CSV or Parquet, read by Spark) as a new snapshot.

    Raises :class:`IngestError` before anything is written for a source the embedded ingest
    would refuse (same reasons, line 0), and ``SparkUnavailable`` when the server does not
    answer, and :class:`SparkIngestFailed` when a Spark job fails after validation. Nothing is
    published unless every step succeeds.
    """
    kind = _source_kind(path)
    _check_local(path)
    _require_listening(spark)
    session = spark.session()
    session.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    _ship_by_value()
    frame, source = _source_frame(session, path, kind)
    metadata = _validate(frame, source, path)
    store = SnapshotStore(data_dir)
    with store.staging() as tmp:
        try:
            _write_features(frame, source, metadata, str(tmp / "_features"))
            _ranked(session, str(tmp / "_features"), metadata).write.parquet(str(tmp / "_parts"))
        except Exception:  # noqa: BLE001 - Spark's message may quote the data
            raise SparkIngestFailed() from None
        schema = _merge_parts(tmp / "_parts", tmp / MESSAGES_FILE)
        for work in ("_features", "_parts"):
            shutil.rmtree(tmp / work)
        return store.publish(tmp, _manifest(tmp, path, metadata, schema), activate=activate)


def _manifest(tmp: Path, path: str, metadata: list[str], schema: Any) -> dict[str, Any]:
    content_hash = _sha256(tmp / MESSAGES_FILE)
    created = datetime.now(UTC)
    return {
        "id": f"snap-{created:%Y%m%dT%H%M%SZ}-{content_hash[:8]}",
        "created_at": created.isoformat(),
        "source": f"file:{Path(urlsplit(path).path).name} (spark)",
        "metadata_columns": list(metadata),
        "format_version": FORMAT_VERSION,
        "content_sha256": content_hash,
        "columns": {f.name: str(f.type) for f in schema},
        "features": {
            "tokenizer": TOKEN_RE.pattern,
            "vaderSentiment": importlib_metadata.version("vaderSentiment"),
            "engine": "spark",
        },
    }
