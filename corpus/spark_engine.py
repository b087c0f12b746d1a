"""The Spark scan engine: the same exact, bounded aggregates as ``corpus.duckdb_engine``, in
Spark SQL, run through Spark Connect (``corpus.spark_session``).

Every method builds the SQL that :class:`corpus.duckdb_engine.DuckDBEngine` builds, in Spark's
dialect, and must give the same integers on the same snapshot (tests/corpus/test_spark_engine.py
checks it for every aggregate, filter and group-by). Where the two dialects differ the SQL here
is written so that the answers do not:

- **Time buckets** from the timestamp's microseconds since the epoch (``unix_micros``), with the
  DuckDB engine's shift, so every division is a floor; the month from the shifted day number
  (``date_from_unix_date``), so no session time zone enters.
- **Time ranges** compare those microseconds with the range's, computed exactly in Python.
- **Lower-casing**: Spark's ``lower`` is Java's ``String.toLowerCase``, DuckDB's maps each code
  point alone (utf8proc). They differ on U+0130 (Java: two code points), on a final capital
  sigma (Java: final small sigma) and on code points that the JVM's Unicode tables lower and
  DuckDB's do not (``_UNLOWERED``). :func:`lower_sql` maps those first so that both give the
  same string (checked over every code point up to U+2FFFF by the tests).
- **Grid values** are rounded half away from zero in doubles in both (Spark's ``round`` is
  HALF_UP on the double's exact value); parameters are doubles, not decimal literals.
- **Sums** are DECIMAL(38, 0) (DuckDB: HUGEINT): exact, never an overflow.
- **Activity buckets** are ``floor(log2(n))`` as integer comparisons (exact in both).
- **Top terms' ties** are broken by ``md5(term, sender, salt)`` in both engines: the same
  choice for the same salt (a fresh random salt per query unless given).
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from corpus.duckdb_engine import STOPWORDS, TOKEN_SQL_RE
from corpus.engine import AUTO_CAP_BUCKETS, NEGATIVE_AT, POSITIVE_AT, Scan, time_bucket_sql
from corpus.engine import EPOCH as _EPOCH
from corpus.engine import SHIFT_DAYS as _SHIFT_DAYS

__all__ = ["TOKEN_JAVA_RE", "SparkEngine", "SqlRunner", "lower_sql", "quote_path"]

#: ``corpus.engine``'s integer time buckets of ``ts`` in Spark's SQL.
_BUCKETS = time_bucket_sql("unix_micros(ts)", "DIV")
_SHIFTED_DAYS = _BUCKETS["day"]
_EPOCH_DT = datetime(1970, 1, 1, tzinfo=UTC)
#: A rank added to messages that do not match (as in the DuckDB engine).
_UNMATCHED = 2**31

#: Code points that Java 17 (as Spark 4.3 runs it) lower-cases and DuckDB 2.0 does not: they
#: are swapped for private-use code points around ``lower`` and back (tests check the list).
_UNLOWERED = (
    "\u1c89\ua7cb\ua7cc\ua7ce\ua7d2\ua7d4\ua7da\ua7dc"
    + "".join(chr(c) for c in range(0x10D50, 0x10D66))
    + "".join(chr(c) for c in range(0x16EA0, 0x16EB9))
)
_PRIVATE = "".join(chr(0xF0000 + i) for i in range(len(_UNLOWERED)))

#: Letters and digits (lower-cased) that DuckDB's regular expressions (RE2, newer Unicode
#: tables) put in ``\p{L}`` or ``\p{N}`` and Java 17's do not: added to the token class
#: (none the other way round; tests check every code point up to U+2FFFF).
_MORE_TOKEN_CHARS = (
    (0x870, 0x887),
    (0x889, 0x88E),
    (0x8B5, 0x8B5),
    (0x8C8, 0x8C9),
    (0xC5D, 0xC5D),
    (0xCDD, 0xCDD),
    (0x170D, 0x170D),
    (0x171F, 0x171F),
    (0x1B4C, 0x1B4C),
    (0x2C5F, 0x2C5F),
    (0x9FFD, 0x9FFF),
    (0xA7C1, 0xA7C1),
    (0xA7D1, 0xA7D1),
    (0xA7D3, 0xA7D3),
    (0xA7D5, 0xA7D5),
    (0xA7D7, 0xA7D7),
    (0xA7D9, 0xA7D9),
    (0xA7F2, 0xA7F4),
    (0x10597, 0x105A1),
    (0x105A3, 0x105B1),
    (0x105B3, 0x105B9),
    (0x105BB, 0x105BC),
    (0x10780, 0x10785),
    (0x10787, 0x107B0),
    (0x107B2, 0x107BA),
    (0x10F70, 0x10F81),
    (0x11071, 0x11072),
    (0x11075, 0x11075),
    (0x1123F, 0x11240),
    (0x11740, 0x11746),
    (0x11AB0, 0x11ABF),
    (0x11F02, 0x11F02),
    (0x11F04, 0x11F10),
    (0x11F12, 0x11F33),
    (0x11F50, 0x11F59),
    (0x12F90, 0x12FF0),
    (0x1342F, 0x1342F),
    (0x13441, 0x13446),
    (0x16A70, 0x16ABE),
    (0x16AC0, 0x16AC9),
    (0x1AFF0, 0x1AFF3),
    (0x1AFF5, 0x1AFFB),
    (0x1AFFD, 0x1AFFE),
    (0x1B11F, 0x1B122),
    (0x1B132, 0x1B132),
    (0x1B155, 0x1B155),
    (0x1D2C0, 0x1D2D3),
    (0x1DF00, 0x1DF1E),
    (0x1DF25, 0x1DF2A),
    (0x1E030, 0x1E06D),
    (0x1E290, 0x1E2AD),
    (0x1E4D0, 0x1E4EB),
    (0x1E4F0, 0x1E4F9),
    (0x1E7E0, 0x1E7E6),
    (0x1E7E8, 0x1E7EB),
    (0x1E7ED, 0x1E7EE),
    (0x1E7F0, 0x1E7FE),
    (0x2A6DE, 0x2A6DF),
    (0x2B735, 0x2B739),
)
#: ``corpus.duckdb_engine.TOKEN_SQL_RE`` for Java's regular expressions.
TOKEN_JAVA_RE = TOKEN_SQL_RE.replace(
    r"[\p{L}\p{N}]",
    r"[\p{L}\p{N}" + "".join(f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in _MORE_TOKEN_CHARS) + "]",
)


def lower_sql(column: str) -> str:
    """Spark SQL that lower-cases ``column`` exactly as DuckDB's ``lower`` does."""
    before = "\u0130\u03a3" + _UNLOWERED  # İ -> i and Σ -> σ (no final-sigma rule), then hide
    after = "i\u03c3" + _PRIVATE
    return (
        f"translate(lower(translate({column}, '{before}', '{after}')), '{_PRIVATE}', "
        f"'{_UNLOWERED}')"
    )


def quote_path(uri: str) -> str:
    """A file (or object-store URI) as a Spark SQL relation: ``parquet.`uri```."""
    return "parquet.`" + uri.replace("`", "``") + "`"


def _quote(column: str) -> str:
    return "`" + column.replace("`", "``") + "`"


def _micros(t: datetime) -> int:
    """Exact microseconds since the epoch (a naive time is taken as UTC)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - _EPOCH_DT) // timedelta(microseconds=1)


def _group_expr(scan: Scan) -> str | None:
    g = scan.groups
    if g is None:
        return None
    if g.kind == "metadata":
        return _quote(g.column)
    month = (
        f"CAST(trunc(date_from_unix_date(CAST({_SHIFTED_DAYS} - {_SHIFT_DAYS} AS INT)), 'MM') "
        "AS STRING)"
    )
    return {**_BUCKETS, "month": month}[g.column]


def _key_decoder(scan: Scan) -> Any:
    g = scan.groups
    if g is not None and g.kind == "time" and g.column in ("day", "week"):
        return lambda raw: (_EPOCH + timedelta(days=int(raw) - _SHIFT_DAYS)).isoformat()
    return lambda raw: raw


class SqlRunner(Protocol):
    """Runs one Spark SQL statement with named parameters and returns its rows."""

    def rows(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]: ...


class _Params:
    """Named parameters (``:p0``, ``:p1``...) collected while SQL is built."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def __call__(self, value: Any) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f":{name}"

    def many(self, values: Any) -> str:
        return ", ".join(self(v) for v in values)


class SparkEngine:
    """The bounded SQL of one scan over one snapshot, run by a :class:`SqlRunner` (an
    ``Engine``). ``source`` is the snapshot's Parquet as Spark reaches it; ``salt`` fixes the
    tie-breaking of top terms (tests give both engines the same)."""

    def __init__(
        self, runner: SqlRunner, source_uri: str, scan: Scan, *, salt: str | None = None
    ) -> None:
        self.run = runner
        self.source = quote_path(source_uri)
        self.scan = scan
        self.measure = scan.measure
        self.group = _group_expr(scan)
        self._key = _key_decoder(scan)
        self.salt = salt if salt is not None else secrets.token_hex(8)

    # -- building blocks ------------------------------------------------------------------
    def _where(self, p: _Params) -> list[str]:
        s = self.scan
        where: list[str] = []
        if s.time_range:
            where.append(
                f"unix_micros(ts) >= {p(_micros(s.time_range[0]))} AND "
                f"unix_micros(ts) < {p(_micros(s.time_range[1]))}"
            )
        if s.keywords:
            joiner = " OR " if s.keywords_match == "any" else " AND "
            low = lower_sql("text")
            where.append("(" + joiner.join(f"contains({low}, {p(k)})" for k in s.keywords) + ")")
        for col, values in s.metadata_filter:
            where.append(f"{_quote(col)} IN ({p.many(values)})")
        g = s.groups
        if g is not None and g.range is not None:
            where.append(
                f"unix_micros(ts) >= {p(_micros(g.range[0]))} AND "
                f"unix_micros(ts) < {p(_micros(g.range[1]))}"
            )
        if g is not None and g.kind == "metadata" and g.keys is not None:
            where.append(f"{_quote(g.column)} IN ({p.many(g.keys)})")
        elif g is not None and g.kind == "metadata":
            where.append(f"{_quote(g.column)} IS NOT NULL")
        return where

    def _match(self, p: _Params) -> str:
        where = " AND ".join(self._where(p)) or "TRUE"
        return f"coalesce(({where}), false)"

    def _cols(self, *cols: str) -> str:
        parts = list(cols)
        if self.group is not None:
            parts.append(f"{self.group} AS _g")
        return ", ".join(parts)

    def capped(self, columns: str, max_messages: int, p: _Params) -> str:
        """The filtered messages, at most ``max_messages`` per sender (smallest rank first)."""
        where = self._where(p)
        if not where:
            return f"SELECT {columns} FROM {self.source} WHERE msg_rank < {p(max_messages)}"
        return (
            f"SELECT {columns} FROM (SELECT *, row_number() OVER (PARTITION BY sender_id "
            f"ORDER BY msg_rank) AS _rn FROM {self.source} WHERE {' AND '.join(where)}) "
            f"WHERE _rn <= {p(max_messages)}"
        )

    def _value_q(self, p: _Params) -> str:
        """A message's grid value, centred (see ``DuckDBEngine._value_q``)."""
        grid = self.measure.grid
        assert grid is not None and self.measure.feature is not None
        col = f"CAST({_quote(self.measure.feature)} AS DOUBLE)"
        lo, hi, step = p(float(grid.lower)), p(float(grid.upper)), p(float(grid.step))
        rounded = f"CAST(round(least(greatest({col}, {lo}), {hi}) / {step}) AS BIGINT)"
        return f"least(greatest({rounded}, {grid.lower_q}), {grid.upper_q}) - {grid.offset_q}"

    def _grouped(self, select: str, sql: str, p: _Params) -> dict[Any, tuple[Any, ...]]:
        if self.group is None:
            rows = self.run.rows(f"SELECT {select} FROM ({sql})", p.values)
            return {None: tuple(rows[0]) if rows else ()}
        rows = self.run.rows(f"SELECT _g, {select} FROM ({sql}) GROUP BY _g", p.values)
        return {self._key(r[0]): tuple(r[1:]) for r in rows}

    # -- aggregates (private) ---------------------------------------------------------------
    def counts(self, max_messages: int) -> dict[Any, int]:
        p = _Params()
        of = self.measure.of
        if of == "senders":
            gcol = ", _g" if self.group is not None else ""
            src = (
                f"SELECT bool_or({self._match(p)}) AS _any{gcol} FROM (SELECT "
                f"{self._cols('*')} FROM {self.source}) GROUP BY sender_id{gcol}"
            )
            res = self._grouped("count_if(_any)", src, p)
            if self.group is not None:
                res = {k: v for k, v in res.items() if v[0]}
        elif of == "conversations":
            src = self.capped(self._cols("conversation_id"), max_messages, p)
            res = self._grouped("count(DISTINCT conversation_id)", src, p)
        elif self.group is None and self._where(_Params()):
            match = self._match(p)
            rows = self.run.rows(
                f"SELECT sum(least(n, {p(max_messages)})) FROM (SELECT count_if({match}) AS n "
                f"FROM {self.source} GROUP BY sender_id)",
                p.values,
            )
            return {None: int(rows[0][0] or 0) if rows else 0}
        else:
            src = self.capped(self._cols("1 AS one"), max_messages, p)
            res = self._grouped("count(*)", src, p)
        return {k: int(v[0] or 0) for k, v in res.items()}

    def moments(self, max_messages: int) -> dict[Any, tuple[int, int, int, int]]:
        assert self.measure.grid is not None
        p = _Params()
        off = self.measure.grid.offset_q
        src = self.capped(self._cols(f"{self._value_q(p)} AS v"), max_messages, p)
        dec = "CAST(v AS DECIMAL(38, 0))"
        res = self._grouped(
            f"count(*), sum({dec}), sum({dec} * {dec}), sum(CAST(v + {off} AS DECIMAL(38, 0)))",
            src,
            p,
        )
        return {k: tuple(int(x or 0) for x in v) for k, v in res.items()}  # type: ignore[misc]

    def bin_counts(self, edges: tuple[float, ...], max_messages: int) -> dict[Any, list[int]]:
        assert self.measure.feature is not None
        p = _Params()
        col = _quote(self.measure.feature)
        nbins = len(edges) - 1
        cases = " ".join(f"WHEN {col} < {p(float(e))} THEN {i}" for i, e in enumerate(edges[1:-1]))
        expr = f"CASE {cases} ELSE {nbins - 1} END" if cases else "0"
        sql = self.capped(self._cols(f"{expr} AS b"), max_messages, p)
        gsel = "_g, " if self.group is not None else "NULL AS _g, "
        gby = "_g, b" if self.group is not None else "b"
        out: dict[Any, list[int]] = defaultdict(lambda: [0] * nbins)
        for row in self.run.rows(
            f"SELECT {gsel} b, count(*) FROM ({sql}) GROUP BY {gby}", p.values
        ):
            out[self._key(row[0])][int(row[1])] = int(row[2])
        return dict(out)

    def sentiment(self, max_messages: int) -> dict[Any, tuple[int, int, int, int]]:
        p = _Params()
        v = self._value_q(p)
        src = self.capped(self._cols("sentiment_compound AS c", f"{v} AS v"), max_messages, p)
        pos, neg = p(float(POSITIVE_AT)), p(float(NEGATIVE_AT))
        res = self._grouped(
            f"count_if(c >= {pos}), count_if(c > {neg} AND c < {pos}), count_if(c <= {neg}), "
            "sum(CAST(v AS DECIMAL(38, 0)))",
            src,
            p,
        )
        return {k: tuple(int(x or 0) for x in v) for k, v in res.items()}  # type: ignore[misc]

    def group_sender_counts(self, max_groups: int) -> dict[Any, int]:
        assert self.group is not None
        p = _Params()
        match = self._match(p)
        rows = self.run.rows(
            "SELECT _g, count(*) FROM (SELECT _g, _first, row_number() OVER "
            "(PARTITION BY sender_id ORDER BY _first) AS _r FROM (SELECT sender_id, _g, "
            f"min(CAST(msg_rank AS BIGINT) + CASE WHEN {match} THEN 0 ELSE {_UNMATCHED} END) "
            f"AS _first FROM (SELECT *, {self.group} AS _g FROM {self.source}) "
            f"GROUP BY sender_id, _g)) WHERE _first < {_UNMATCHED} AND _r <= {p(max_groups)} "
            "GROUP BY _g",
            p.values,
        )
        return {r[0]: int(r[1]) for r in rows}

    def term_sender_counts(self, max_messages: int) -> dict[str, int]:
        m = self.measure
        p = _Params()
        regex = p(TOKEN_JAVA_RE)
        sql = self.capped(
            f"sender_id, regexp_extract_all({lower_sql('text')}, {regex}, 0) AS toks",
            max_messages,
            p,
        )
        terms_sql = "SELECT sender_id, explode(toks) AS term FROM m"
        if m.bigrams or any(" " in t for t in m.terms):
            terms_sql += (
                " UNION ALL SELECT sender_id, explode(zip_with(slice(toks, 1, "
                "greatest(size(toks) - 1, 0)), slice(toks, 2, greatest(size(toks) - 1, 0)), "
                "(a, b) -> concat(a, ' ', b))) AS term FROM m"
            )
        if m.terms:
            term_filter = f"term IN ({p.many(m.terms)})"
        else:
            term_filter = f"term NOT IN ({p.many(STOPWORDS)}) AND NOT (term RLIKE {p('^[0-9]+$')})"
        tie = f"md5(concat(term, ' ', CAST(sender_id AS STRING), ' ', {p(self.salt)}))"
        rows = self.run.rows(
            f"WITH m AS ({sql}), t AS (SELECT sender_id, term, count(*) AS n FROM "
            f"({terms_sql}) WHERE {term_filter} GROUP BY sender_id, term), "
            f"r AS (SELECT term, row_number() OVER (PARTITION BY sender_id ORDER BY n DESC, "
            f"{tie}) AS _r FROM t) "
            f"SELECT term, count(*) FROM r WHERE _r <= {p(m.max_terms_per_sender)} GROUP BY term",
            p.values,
        )
        return {r[0]: int(r[1]) for r in rows}

    def sender_activity(self) -> list[int]:
        p = _Params()
        match = self._match(p)
        bucket = (
            "CASE "
            + " ".join(f"WHEN n >= {2**b} THEN {b}" for b in range(AUTO_CAP_BUCKETS - 1, 0, -1))
            + " ELSE 0 END"
        )
        rows = self.run.rows(
            f"SELECT {bucket} AS b, count(*) FROM (SELECT count_if({match}) AS n FROM "
            f"{self.source} GROUP BY sender_id) WHERE n > 0 GROUP BY 1",
            p.values,
        )
        out = [0] * AUTO_CAP_BUCKETS
        for b, n in rows:
            out[int(b)] = int(n)
        return out
