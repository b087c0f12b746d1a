"""The Spark engine gives DuckDB's exact aggregates (tests/service/test_spark_kinds.py does it
per query kind): here, where the dialects differ most (lower-casing and tokens over every code
point, time buckets, the top-terms tie-break), and the engine's failure modes (a statement past
its time limit, an unreachable server). Against a real Spark Connect server on loopback
(``tests/fixtures/spark.py``); 20-30 s here with the server's start and warm-up, which the
service tests then share.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from corpus.duckdb_engine import TOKEN_SQL_RE, DuckDBEngine
from corpus.engine import Groups, Measure
from corpus.spark_engine import (
    _MORE_TOKEN_CHARS,
    _UNLOWERED,
    TOKEN_JAVA_RE,
    SparkEngine,
    lower_sql,
    quote_path,
)
from corpus.spark_session import SparkConnect, SparkQueryFailed, SparkUnavailable
from corpus.store import SnapshotInfo, SnapshotStore
from tests.fixtures.spark import TRICKY

pytestmark = pytest.mark.spark

#: Every code point up to U+2FFFF but the surrogates and the space that separates them (the
#: slow run); the default run takes the first 0x800 (Latin, Greek, Cyrillic...), every code
#: point the engine maps or adds and their neighbours, and every 61st of the rest (about 13%).
CODE_POINTS = [c for c in range(0x21, 0x30000) if not 0xD800 <= c <= 0xDFFF]
_MAPPED = {ord(ch) for ch in "\u0130\u03a3\u03c3\u03c2" + _UNLOWERED} | {
    c for a, b in _MORE_TOKEN_CHARS for c in range(a - 1, b + 2)
}
SAMPLE = [c for c in CODE_POINTS if c < 0x800 or c in _MAPPED or c % 61 == 0]
CHUNK = 5000
POINTS = [
    pytest.param(SAMPLE, id="sample"),
    pytest.param(CODE_POINTS, id="all", marks=pytest.mark.slow),
]


@dataclass(frozen=True)
class Scan:
    time_range: tuple[datetime, datetime] | None = None
    keywords: tuple[str, ...] = ()
    keywords_match: str = "any"
    metadata_filter: tuple[tuple[str, tuple[str, ...]], ...] = ()
    groups: Groups | None = None
    measure: Measure = field(default_factory=Measure)


def _texts(points: list[int]) -> list[str]:
    return [" ".join(chr(c) for c in points[i : i + CHUNK]) for i in range(0, len(points), CHUNK)]


def _spark_rows(spark: SparkConnect, select: str, texts: list[str], **more: str) -> list[tuple]:
    params = {**more, **{f"t{i}": t for i, t in enumerate(texts)}}
    union = " UNION ALL ".join(f"SELECT {i} AS i, :t{i} AS text" for i in range(len(texts)))
    return sorted(spark.rows(f"SELECT i, {select} FROM ({union})", params))


@pytest.mark.parametrize("points", POINTS)
def test_lower_is_duckdbs_on_every_code_point(spark: SparkConnect, points: list[int]) -> None:
    texts = _texts(points) + ["ΟΔΟΣ ΣΑΣ. Σ ΑΣ-Α İi"]  # the final sigma, in words and alone
    with duckdb.connect() as con:  # its own connection: the module's default keeps results
        want = [con.execute("SELECT lower(?)", [t]).fetchone()[0] for t in texts]
    got = [r[1] for r in _spark_rows(spark, f"{lower_sql('text')}", texts)]
    bad = [
        (hex(ord(c)), a, b)
        for t, x, y in zip(texts, want, got, strict=True)
        for c, a, b in zip(t.split(" "), x.split(" "), y.split(" "), strict=True)
        if a != b
    ]
    assert bad == []
    assert want == got


@pytest.mark.parametrize("points", POINTS)
def test_tokens_are_duckdbs_on_every_code_point(spark: SparkConnect, points: list[int]) -> None:
    """Each code point after a letter: in the token (``x`` + it) or not (``x``); and the
    apostrophes' rule on a few words."""
    texts = [
        "\n".join(f"x{chr(c)}" for c in points[i : i + CHUNK]) for i in range(0, len(points), CHUNK)
    ] + ["don't don’t x'' 'x' a'b'c 12'3 x`y Ab’CD"]
    con = duckdb.connect()  # its own connection: the module's default keeps results
    want = [
        [
            t
            for t in con.execute(
                "SELECT regexp_extract_all(lower(?), ?)", [text, TOKEN_SQL_RE]
            ).fetchone()[0]
            if t != "x"
        ]
        for text in texts
    ]
    got = _spark_rows(
        spark,
        f"filter(regexp_extract_all({lower_sql('text')}, :regex, 0), t -> t != 'x')",
        texts,
        regex=TOKEN_JAVA_RE,
    )
    assert sum(len(w) for w in want) > len(points) // 2  # letters and digits of many scripts
    assert want[-1] == ["don't", "don’t", "a'b'c", "12'3", "y", "ab’cd"]
    assert [list(r[1]) for r in got] == want


@pytest.fixture(scope="module")
def engines(
    spark: SparkConnect,
    spark_corpus: tuple[Path, SnapshotInfo],
):  # type: ignore[no-untyped-def]
    data_dir, info = spark_corpus
    _, cur = SnapshotStore(data_dir).cursor(info.id)
    uri = spark.snapshot_uri(info.messages_path, data_dir)

    def both(scan: Scan, salt: str = "s") -> tuple[DuckDBEngine, SparkEngine]:
        return DuckDBEngine(cur, scan, salt=salt), SparkEngine(spark, uri, scan, salt=salt)

    yield both
    cur.close()


JAN = datetime(2024, 1, 1, tzinfo=UTC)
MAR = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.mark.slow  # every bucket is also compared, through a kind, in test_spark_kinds.py
@pytest.mark.parametrize("column", ["hour_of_day", "weekday", "day", "week", "month"])
def test_time_buckets_match(engines, column: str) -> None:  # type: ignore[no-untyped-def]
    rng = None if column in ("hour_of_day", "weekday") else (JAN, MAR)
    duck, spark_engine = engines(Scan(groups=Groups(column, "time", None, rng)))
    want = duck.counts(1000)
    assert len(want) > 1 and sum(want.values()) > 300
    assert spark_engine.counts(1000) == want


def test_top_terms_ties_broken_alike(engines) -> None:  # type: ignore[no-untyped-def]
    """One term per sender out of many tied: the same salt picks the same terms, another
    salt other ones (so the tie-break is exercised, not absent)."""
    scan = Scan(measure=Measure(bigrams=True, max_terms_per_sender=1))
    duck, spark_engine = engines(scan, salt="a")
    want = duck.term_sender_counts(3)
    assert spark_engine.term_sender_counts(3) == want
    others = [engines(scan, salt=s)[0].term_sender_counts(3) for s in ("b", "c", "d")]
    assert any(o != want for o in others)


def test_a_statement_past_its_limit_fails(spark_url: str) -> None:
    slow = SparkConnect(spark_url, query_timeout_s=1.0)
    try:
        with pytest.raises(SparkQueryFailed) as err:
            slow.rows("SELECT count(*) FROM range(0, 200000000000)", {})
        assert str(err.value) == "the Spark statement failed"  # nothing of Spark's message
        assert slow.rows("SELECT 1", {}) == [(1,)]  # the session still works
    finally:
        slow.close()


def test_an_unreachable_server_is_refused_quickly() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    conn = SparkConnect(f"sc://127.0.0.1:{port}", probe_timeout_s=2)
    assert conn.probe() is False
    with pytest.raises(SparkUnavailable):
        conn.require()


def test_a_failed_statement_quotes_no_data(
    spark: SparkConnect,
    spark_corpus: tuple[Path, SnapshotInfo],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Spark's error for a value it cannot cast quotes that value (message text here); the
    engine's error, the log and stderr (where pyspark's client logs such errors itself) hold
    none of it."""
    import traceback

    data_dir, info = spark_corpus
    uri = spark.snapshot_uri(info.messages_path, data_dir)
    sql = f"SELECT sum(CAST(text AS INT)) FROM {quote_path(uri)} WHERE text = :t"
    value = TRICKY[3]  # "Straße CAFÉ café", a message of the corpus (not on the lines shown)
    with pytest.raises(Exception) as raw:  # Spark's own error, as the client receives it
        spark.session().sql(sql, args={"t": value}).collect()
    assert "CAF" in str(raw.value)  # so the check below is not vacuous
    caplog.set_level("DEBUG")
    with pytest.raises(SparkQueryFailed) as err:
        spark.rows(sql, {"t": value})
    out, errors = capfd.readouterr()
    shown = "".join(traceback.format_exception(err.value)) + caplog.text + out + errors
    assert "CAF" not in shown and "Stra" not in shown
    assert "the Spark statement failed" in shown


@pytest.mark.slow  # two server starts, about 50 s here
def test_a_restarted_server_gets_a_new_session(tmp_path: Path) -> None:
    """The new server does not know the old session: probes fail (so queries are refused
    before anything is charged) until one starts a new session, then statements run."""
    import os
    import subprocess
    import sys

    from tests.fixtures.spark import ROOT

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = {**os.environ, "PYTHON": sys.executable, "SPARK_CONNECT_PORT": str(port)}
    script = str(ROOT / "scripts" / "spark-connect.sh")

    def run(*args: str) -> None:
        subprocess.run(["bash", script, *args], env=env, check=True, capture_output=True)

    run("start", str(tmp_path / "a"))
    conn = SparkConnect(f"sc://127.0.0.1:{port}", probe_timeout_s=30)
    try:
        assert conn.probe() and conn.rows("SELECT 1", {}) == [(1,)]
        run("stop", str(tmp_path / "a"))
        run("start", str(tmp_path / "b"))
        conn._probed_at = -1e9  # as if the last good probe were old
        assert any(conn.probe() for _ in range(5))
        assert conn.rows("SELECT 2", {}) == [(2,)]
    finally:
        conn.close()
        run("stop", str(tmp_path / "a"))
        run("stop", str(tmp_path / "b"))
