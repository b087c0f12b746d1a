"""The DuckDB scan engine: exact bounded aggregates over one snapshot, in SQL.

It implements :class:`corpus.engine.Engine` on a cursor of the snapshot store. Everything here
is private (raw, un-noised) and never leaves the process except through a query kind, which
adds noise. Per-sender bounding happens here, in SQL, from public rules only: at most ``m``
messages per sender (the ``m`` of smallest random rank, a rank drawn once at ingest
independently of content), values clamped to declared bounds and put on a power-of-two grid so
that sums are exact integers, at most ``K`` terms per sender.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from datetime import timedelta
from typing import Any

import duckdb

from corpus.engine import AUTO_CAP_BUCKETS, NEGATIVE_AT, POSITIVE_AT, Scan, time_bucket_sql
from corpus.engine import EPOCH as _EPOCH
from corpus.engine import SHIFT_DAYS as _SHIFT_DAYS

#: Tokens as in corpus.features.tokenize (letters/digits with inner apostrophes).
TOKEN_SQL_RE = r"[\p{L}\p{N}]+(?:['\x{2019}][\p{L}\p{N}]+)*"
#: A small public list of function words left out of discovered top terms.
STOPWORDS = tuple(
    """a an the and or but if of to in on at for with from by about as is am are was were be
    been being it its it's this that these those i i'm me my you you're your he him his she her
    we our they them their what which who whom do does did doing have has had having not no so
    than too very can will just don't i'll i've that's there here then out up down all any
    some would could should into over also""".split()
)


def _quote(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


#: ``corpus.engine``'s integer time buckets of ``ts`` in DuckDB's SQL.
_BUCKETS = time_bucket_sql("epoch_us(ts)", "//")


def _group_expr(scan: Scan) -> str | None:
    g = scan.groups
    if g is None:
        return None
    if g.kind == "metadata":
        return _quote(g.column)
    return {
        **_BUCKETS,
        "month": "strftime(date_trunc('month', ts), '%Y-%m-%d')",
    }[g.column]


def _key_decoder(scan: Scan) -> Any:
    """How a raw group key from SQL becomes the scan's key: a shifted day number (day, week)
    becomes its ISO date; every other key is used as it is."""
    g = scan.groups
    if g is not None and g.kind == "time" and g.column in ("day", "week"):
        return lambda raw: (_EPOCH + timedelta(days=int(raw) - _SHIFT_DAYS)).isoformat()
    return lambda raw: raw


class DuckDBEngine:
    """Builds and runs the bounded SQL for one scan on one DuckDB cursor (an ``Engine``)."""

    #: The relation the messages are read from (a subclass may add columns, e.g. the parquet
    #: row number for aggregate-embedding queries).
    source = "messages"

    def __init__(
        self, cursor: duckdb.DuckDBPyConnection, scan: Scan, *, salt: str | None = None
    ) -> None:
        self.cur = cursor
        self.scan = scan
        self.measure = scan.measure
        self._where, self._params = self._filters()
        self.group = _group_expr(scan)
        self._key = _key_decoder(scan)
        #: Breaks ties among a sender's most used terms (a fresh random one per query unless
        #: given: the Spark engine, given the same, breaks them the same way).
        self.salt = salt if salt is not None else secrets.token_hex(8)

    # -- building blocks -------------------------------------------------------------
    def _filters(self) -> tuple[list[str], list[Any]]:
        p = self.scan
        where: list[str] = []
        params: list[Any] = []
        if p.time_range:
            where.append("ts >= ? AND ts < ?")
            params += [p.time_range[0], p.time_range[1]]
        if p.keywords:
            joiner = " OR " if p.keywords_match == "any" else " AND "
            where.append("(" + joiner.join("contains(lower(text), ?)" for _ in p.keywords) + ")")
            params += list(p.keywords)
        for col, values in p.metadata_filter:
            where.append(f"{_quote(col)} IN ({', '.join('?' for _ in values)})")
            params += list(values)
        g = p.groups
        if g is not None and g.range is not None:
            where.append("ts >= ? AND ts < ?")
            params += [g.range[0], g.range[1]]
        if g is not None and g.kind == "metadata" and g.keys is not None:
            where.append(f"{_quote(g.column)} IN ({', '.join('?' for _ in g.keys)})")
            params += list(g.keys)
        elif g is not None and g.kind == "metadata":
            where.append(f"{_quote(g.column)} IS NOT NULL")
        return where, params

    def filtered(self, columns: str) -> tuple[str, list[Any]]:
        """SQL for the filtered messages (no cap)."""
        where = " AND ".join(self._where) or "TRUE"
        return f"SELECT {columns} FROM {self.source} WHERE {where}", list(self._params)

    def _match(self) -> tuple[str, list[Any]]:
        """A column that says whether a message passes the filters (NULL counts as no), for
        SQL that reads every message the same way whether it matches or not."""
        where = " AND ".join(self._where) or "TRUE"
        return f"coalesce(({where}), false)", list(self._params)

    def capped(self, columns: str, max_messages: int) -> tuple[str, list[Any]]:
        """SQL for the filtered messages, at most ``max_messages`` per sender: the m filtered
        messages of smallest random rank.

        Without filters this is the plain filter ``msg_rank < m`` (snapshots are stored in rank
        order, so it reads only the first row groups). With filters, a per-sender window over
        the matching messages. A form whose work does not depend on how many messages match
        (each sender's m smallest keys over all its messages, the key being the rank plus 2**31
        when the message does not match, then a join back) was built and measured
        (bench/bench_side_channel.py, BENCHMARKS.md "4. Latency side channel"): it cost
        1.3-2.2x on grouped, keyword mean, sentiment and top-terms queries, did not shrink the
        difference between neighbouring corpora (that comes from evaluating the filter on one
        sender's messages, present or not), and the effect of the number of matches it removes
        was within noise for those queries. It is not used; the per-sender counts below, where
        the match-independent form is as cheap or cheaper, are.
        """
        if not self._where:
            return f"SELECT {columns} FROM {self.source} WHERE msg_rank < ?", [max_messages]
        where = " AND ".join(self._where)
        sql = (
            f"SELECT {columns} FROM (SELECT *, row_number() OVER "
            f"(PARTITION BY sender_id ORDER BY msg_rank) AS _rn FROM {self.source} WHERE {where}) "
            "WHERE _rn <= ?"
        )
        return sql, [*self._params, max_messages]

    def _value_q(self) -> str:
        """A message's value in grid units, centred on the grid's offset.

        The value is clamped to the bounds, divided by the step and rounded (DuckDB rounds
        half away from zero, Python's ``round`` of the bounds half to even), then clamped again
        in grid units to ``[lower_q, upper_q]``, the integers the sensitivity is priced on: no
        value can land one step outside them, whatever the rounding. The first clamp keeps the
        BIGINT conversion in range (``make_grid`` limits the bounds to 2**40 steps).
        """
        grid = self.measure.grid
        assert grid is not None and self.measure.feature is not None
        col = _quote(self.measure.feature)
        rounded = (
            f"CAST(round(least(greatest({col}, {grid.lower!r}), {grid.upper!r}) "
            f"/ {grid.step!r}) AS BIGINT)"
        )
        return f"least(greatest({rounded}, {grid.lower_q}), {grid.upper_q}) - {grid.offset_q}"

    def _grouped(self, select: str, source: tuple[str, list[Any]]) -> dict[Any, tuple[Any, ...]]:
        sql, params = source
        if self.group is None:
            row = self.cur.execute(f"SELECT {select} FROM ({sql})", params).fetchone()
            return {None: tuple(row) if row else ()}
        rows = self.cur.execute(f"SELECT _g, {select} FROM ({sql}) GROUP BY _g", params).fetchall()
        return {self._key(r[0]): tuple(r[1:]) for r in rows}

    def _cols(self, *cols: str) -> str:
        parts = list(cols)
        if self.group is not None:
            parts.append(f"{self.group} AS _g")
        return ", ".join(parts)

    # -- aggregates (private) --------------------------------------------------------
    def counts(self, max_messages: int) -> dict[Any, int]:
        """Messages, distinct senders or distinct conversations, per group."""
        of = self.measure.of
        if of == "senders":
            # One row per sender (and group) over every message, marked if any message matches.
            match, params = self._match()
            gcol = ", _g" if self.group is not None else ""
            src = (
                f"SELECT bool_or({match}) AS _any{gcol} FROM (SELECT {self._cols('*')} FROM "
                f"{self.source}) GROUP BY sender_id{gcol}",
                params,
            )
            res = self._grouped("count(*) FILTER (WHERE _any)", src)
            if self.group is not None:  # as before, a group no matching message is in is absent
                res = {k: v for k, v in res.items() if v[0]}
        elif of == "conversations":
            src = self.capped(self._cols("conversation_id"), max_messages)
            res = self._grouped("count(DISTINCT conversation_id)", src)
        elif self.group is None and self._where:
            # A sender's capped messages number min(its matching messages, m): count them per
            # sender over every message (the same work whether they match or not).
            match, params = self._match()
            row = self.cur.execute(
                f"SELECT sum(least(n, ?)) FROM (SELECT count_if({match}) AS n "
                f"FROM {self.source} GROUP BY sender_id)",
                [max_messages, *params],
            ).fetchone()
            return {None: int(row[0] or 0) if row else 0}
        else:
            src = self.capped(self._cols("1 AS one"), max_messages)
            res = self._grouped("count(*)", src)
        return {k: int(v[0] or 0) for k, v in res.items()}

    def moments(self, max_messages: int) -> dict[Any, tuple[int, int, int, int]]:
        """(count, centred grid sum, centred grid sum of squares, grid sum) per group.

        Exact integers in grid units; "centred" is around the grid's integer offset."""
        assert self.measure.grid is not None
        off = self.measure.grid.offset_q
        src = self.capped(self._cols(f"{self._value_q()} AS v"), max_messages)
        res = self._grouped(
            f"count(*), sum(v)::HUGEINT, sum(v * v)::HUGEINT, sum(v + {off})::HUGEINT", src
        )
        return {k: tuple(int(x or 0) for x in v) for k, v in res.items()}  # type: ignore[misc]

    def bin_counts(self, edges: tuple[float, ...], max_messages: int) -> dict[Any, list[int]]:
        """Counts per bin; values outside the edges are clamped into the first or last bin."""
        assert self.measure.feature is not None
        col = _quote(self.measure.feature)
        nbins = len(edges) - 1
        cases = " ".join(f"WHEN {col} < {e!r} THEN {i}" for i, e in enumerate(edges[1:-1]))
        expr = f"CASE {cases} ELSE {nbins - 1} END" if cases else "0"
        src = self.capped(self._cols(f"{expr} AS b"), max_messages)
        sql, params = src
        out: dict[Any, list[int]] = defaultdict(lambda: [0] * nbins)
        gsel = "_g, " if self.group is not None else "NULL AS _g, "
        gby = "_g, b" if self.group is not None else "b"
        for row in self.cur.execute(
            f"SELECT {gsel} b, count(*) FROM ({sql}) GROUP BY {gby}", params
        ).fetchall():
            out[self._key(row[0])][int(row[1])] = int(row[2])
        return dict(out)

    def sentiment(self, max_messages: int) -> dict[Any, tuple[int, int, int, int]]:
        """(positive, neutral, negative, centred grid sum of compound) per group."""
        v = self._value_q()
        src = self.capped(self._cols("sentiment_compound AS c", f"{v} AS v"), max_messages)
        res = self._grouped(
            f"count(*) FILTER (WHERE c >= {POSITIVE_AT!r}), "
            f"count(*) FILTER (WHERE c > {NEGATIVE_AT!r} AND c < {POSITIVE_AT!r}), "
            f"count(*) FILTER (WHERE c <= {NEGATIVE_AT!r}), sum(v)::HUGEINT",
            src,
        )
        return {k: tuple(int(x or 0) for x in v) for k, v in res.items()}  # type: ignore[misc]

    def group_sender_counts(self, max_groups: int) -> dict[Any, int]:
        """Distinct senders per undeclared group key, each sender in at most ``max_groups``
        keys (those of its smallest random message rank): for partition selection.

        Every (sender, key) pair is formed from every message, matching or not, and ranked
        with the pairs no matching message is in last, so the work does not depend on how many
        messages match."""
        assert self.group is not None
        match, params = self._match()
        rows = self.cur.execute(
            "SELECT _g, count(*) FROM (SELECT _g, _first, row_number() OVER "
            "(PARTITION BY sender_id ORDER BY _first) AS _r FROM (SELECT sender_id, _g, "
            f"min(msg_rank + CASE WHEN {match} THEN 0 ELSE 2147483648 END) AS _first "
            f"FROM (SELECT *, {self.group} AS _g FROM {self.source}) GROUP BY sender_id, _g)) "
            "WHERE _first < 2147483648 AND _r <= ? GROUP BY _g",
            [*params, max_groups],
        ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def term_sender_counts(self, max_messages: int) -> dict[str, int]:
        """Distinct senders per term among capped messages, each sender limited to its
        ``max_terms_per_sender`` most used terms."""
        p = self.measure
        regex = TOKEN_SQL_RE.replace("'", "''")  # a SQL string literal
        sql, params = self.capped(
            f"sender_id, regexp_extract_all(lower(text), '{regex}') AS toks", max_messages
        )
        want_bigrams = p.bigrams or any(" " in t for t in p.terms)
        unigram = "SELECT sender_id, unnest(toks) AS term FROM m"
        bigram = (
            "SELECT sender_id, unnest(list_transform(range(1, len(toks)), "
            "lambda i: toks[i] || ' ' || toks[i + 1])) AS term FROM m"
        )
        terms_sql = unigram + (f" UNION ALL {bigram}" if want_bigrams else "")
        extra: list[Any] = []
        if p.terms:
            term_filter = f"term IN ({', '.join('?' for _ in p.terms)})"
            extra += list(p.terms)
        else:
            term_filter = (
                f"term NOT IN ({', '.join('?' for _ in STOPWORDS)}) "
                "AND NOT regexp_full_match(term, '[0-9]+')"
            )
            extra += list(STOPWORDS)
        # Each sender keeps its K most used terms, ties broken at random by the md5 of the term,
        # the sender and the salt (md5, not DuckDB's hash, so that the Spark engine can break
        # them the same way). The choice depends only on that sender's own messages, so one
        # sender still touches at most K terms.
        rows = self.cur.execute(
            f"WITH m AS ({sql}), t AS (SELECT sender_id, term, count(*) AS n FROM "
            f"({terms_sql}) WHERE {term_filter} GROUP BY sender_id, term), "
            "r AS (SELECT term, row_number() OVER (PARTITION BY sender_id "
            "ORDER BY n DESC, md5(term || ' ' || CAST(sender_id AS VARCHAR) || ' ' || ?)) "
            "AS _r FROM t) "
            "SELECT term, count(*) FROM r WHERE _r <= ? GROUP BY term",
            [*params, *extra, self.salt, p.max_terms_per_sender],
        ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def sender_activity(self) -> list[int]:
        """Senders per bucket of their filtered message count, bucket j = [2^j, 2^(j+1)).

        Each sender is in exactly one bucket: sensitivity 1. Used to choose the cap. The
        matching messages are counted per sender over every message (no filter before the
        grouping), so the work does not depend on how many match."""
        match, params = self._match()
        rows = self.cur.execute(
            "SELECT least(floor(log2(n))::INTEGER, ?) AS b, count(*) FROM "
            f"(SELECT count_if({match}) AS n FROM {self.source} GROUP BY sender_id) "
            "WHERE n > 0 GROUP BY b",
            [AUTO_CAP_BUCKETS - 1, *params],
        ).fetchall()
        out = [0] * AUTO_CAP_BUCKETS
        for b, n in rows:
            out[int(b)] = int(n)
        return out
