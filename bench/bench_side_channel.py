"""Benchmark: the latency side channel of queries on neighbouring corpora (issue 10, section 4).

Usage:
  PRIVTEXT_DATA_DIR=/tmp/sc-A .venv/bin/privtext ingest --demo
  .venv/bin/python bench/bench_side_channel.py --make-neighbours /tmp/sc-A /tmp/sc-B /tmp/sc-C
  .venv/bin/python bench/bench_side_channel.py --a /tmp/sc-A --b /tmp/sc-B --c /tmp/sc-C
        [--rounds 40] [--http-rounds 30]

``--make-neighbours`` publishes two corpora made from A's live snapshot as the live snapshots
of the data directories B and C (A's rows in A's order, every message's ``msg_rank`` kept, the
same row-group size):

* B: A without its heaviest sender (the demo corpus's has 25,272 of its 258,145 messages): the
  neighbour of the privacy model (one sender's messages removed);
* C: A with that sender's messages edited so that none matches this bench's filters (times
  moved 9 weeks later, so weekdays and hours stay; "yeah" spelt "yeeh"; rating_witty 5 made
  4): the same size as A, with fewer matching messages.

For each query below, the exact aggregate that ``build_answer`` reads (``CorpusQuery``
methods, no noise) is timed with three SQL forms, in the same run, on one DuckDB connection
holding a view per corpus (the view ``SnapshotStore`` opens over the snapshot's parquet):

* ``old``: the SQL before this change, kept here as the baseline: filter, then a window
  ``row_number() OVER (PARTITION BY sender_id ORDER BY msg_rank) <= m`` over the matching rows
  (DuckDB runs it as a per-sender top-m over the matching rows only); per-sender counts over
  the matching rows only;
* ``new``: ``corpus/duckdb_engine.py`` as it is now (every message goes through the same
  steps whether it matches or not);
* ``floor``: no cap at all, the least work any exact answer needs: the filters evaluated on
  every message and the matching ones counted (unfiltered: the rows under the cap counted).

Every round runs each (form, corpus) cell once, in a fresh random order (seeded), so load from
other processes on the shared machine falls on every corpus alike; statistics are paired by
round. Reported per query, form and pair (A-B, A-C): median ms on each corpus; the paired
difference (median, 95% bootstrap interval of that median, Wilcoxon signed-rank p, rounds
where A was slower); and "/ old", the median of the per-round ratios form / old on A with a
95% bootstrap interval (the cost of the change). ``--http-rounds`` repeats the comparison for
a few queries through ``POST /v1/queries`` on the Flask test client of one app per corpus
(every request a distinct, charged query), old and new swapped in by replacing the methods.

Before timing, old and new are checked to give the same results (the same capped rows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np
from scipy import stats

from corpus import SnapshotStore
from corpus.duckdb_engine import DuckDBEngine as CorpusQuery
from corpus.store import MANIFEST_FILE, MESSAGES_FILE
from service.queries.plan import AUTO_CAP_BUCKETS, Plan, build_plan
from service.queries.pricing import GROUPS_PER_SENDER
from service.schemas.query import QuerySchema

KW = {"keywords": {"terms": ["yeah"]}}
MAY = {"time_range": {"start": "2018-05-01T00:00:00Z", "end": "2018-06-01T00:00:00Z"}}
WITTY = {"metadata": {"rating_witty": ["5"]}}
#: (name, request body without privacy). On the demo corpus "yeah" is in 15,879 messages,
#: 2,040 of them the heaviest sender's; May 2018 holds 131,740 messages, 20,280 of them that
#: sender's; rating_witty 5 holds 82,470, 11,974 of them that sender's.
QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("count, keyword", {"kind": "count", "filters": KW}),
    ("mean chars, keyword", {"kind": "mean", "feature": "chars", "filters": KW}),
    ("sentiment, keyword", {"kind": "sentiment", "filters": KW}),
    ("top terms, keyword", {"kind": "top_terms", "terms": ["yeah", "ok", "lol"], "filters": KW}),
    ("senders, keyword", {"kind": "count", "of": "senders", "filters": KW}),
    ("auto cap's histogram, keyword",
     {"kind": "count", "filters": KW, "max_messages_per_sender": "auto"}),
    ("count, time range", {"kind": "count", "filters": MAY}),
    ("count by weekday, time range",
     {"kind": "count", "group_by": {"time": "weekday"}, "filters": MAY}),
    ("count, metadata", {"kind": "count", "filters": WITTY}),
    ("senders per rating_upbeat, metadata",
     {"kind": "count", "of": "senders", "group_by": {"metadata": "rating_upbeat"},
      "filters": WITTY}),
    ("count, unfiltered", {"kind": "count"}),
]  # fmt: skip
HTTP_QUERIES = ("count, keyword", "count, time range", "count, unfiltered")


#: The per-sender cap before issue 10 (a window over the matching rows only); the service kept
#: it (see ``capped_match_free`` below for the form that was measured and not adopted).
capped_old = CorpusQuery.capped


def counts_old(self: CorpusQuery, max_messages: int) -> dict[Any, int]:
    """Before issue 10: distinct senders over the matching rows only, messages and
    conversations through the old cap."""
    of = self.measure.of
    if of == "senders":
        src = self.filtered(self._cols("sender_id"))
        res = self._grouped("count(DISTINCT sender_id)", src)
    elif of == "conversations":
        src = self.capped(self._cols("conversation_id"), max_messages)
        res = self._grouped("count(DISTINCT conversation_id)", src)
    else:
        src = self.capped(self._cols("1 AS one"), max_messages)
        res = self._grouped("count(*)", src)
    return {k: int(v[0] or 0) for k, v in res.items()}


def group_sender_counts_old(self: CorpusQuery, max_groups: int) -> dict[Any, int]:
    assert self.group is not None
    sql, params = self.filtered(f"sender_id, msg_rank, {self.group} AS _g")
    rows = self.cur.execute(
        "SELECT _g, count(*) FROM (SELECT sender_id, _g, row_number() OVER "
        "(PARTITION BY sender_id ORDER BY min(msg_rank)) AS _r "
        f"FROM ({sql}) GROUP BY sender_id, _g) WHERE _r <= ? GROUP BY _g",
        [*params, max_groups],
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def sender_activity_old(self: CorpusQuery) -> list[int]:
    sql, params = self.filtered("sender_id")
    rows = self.cur.execute(
        "SELECT least(floor(log2(n))::INTEGER, ?) AS b, count(*) FROM "
        f"(SELECT sender_id, count(*) AS n FROM ({sql}) GROUP BY sender_id) GROUP BY b",
        [AUTO_CAP_BUCKETS - 1, *params],
    ).fetchall()
    out = [0] * AUTO_CAP_BUCKETS
    for b, n in rows:
        out[int(b)] = int(n)
    return out


OLD = {
    "capped": capped_old,
    "counts": counts_old,
    "group_sender_counts": group_sender_counts_old,
    "sender_activity": sender_activity_old,
}
def capped_match_free(
    self: CorpusQuery, columns: str, max_messages: int
) -> tuple[str, list[Any]]:
    """The match-independent cap measured here and then not adopted (see BENCHMARKS.md,
    section 4): each sender's m smallest keys over all its messages (rank, plus 2**31 when the
    message does not match), the matching messages with those keys joined back on one
    computed key."""
    if not self._where:
        return f"SELECT {columns} FROM {self.source} WHERE msg_rank < ?", [max_messages]
    match, params = self._match()
    key = "(sender_id::BIGINT * 4294967296 + msg_rank)"
    sql = (
        f"SELECT {columns} FROM {self.source} SEMI JOIN (SELECT unnest(min({key} + CASE WHEN "
        f"{match} THEN 0 ELSE 2147483648 END, ?)) AS _k FROM {self.source} "
        f"GROUP BY sender_id) AS _sel ON {key} = _sel._k"
    )
    return sql, [*params, max_messages]


#: "new": the service's per-sender counts with the match-independent cap above, as measured
#: (the service itself kept the old cap: ``CorpusQuery.capped`` is ``capped_old``'s form).
NEW = {**{name: getattr(CorpusQuery, name) for name in OLD}, "capped": capped_match_free}
OldQuery = type("OldQuery", (CorpusQuery,), dict(OLD))


class FloorQuery(CorpusQuery):
    """Counts the matching rows (no cap): what evaluating the filters on every row costs."""

    def floor(self, max_messages: int) -> Any:
        if not self._where:
            sql, params = f"SELECT count(*) FROM {self.source} WHERE msg_rank < ?", [max_messages]
        else:
            sql, params = self.filtered("count(*)")
        return self.cur.execute(sql, params).fetchall()


def exact(cq: CorpusQuery, plan: Plan) -> Any:
    """The private aggregate build_answer reads for ``plan`` (the kinds used here); for an
    automatic cap, the per-sender histogram it is chosen from; for undeclared groups, the
    senders per key of the partition selection."""
    m = plan.max_messages
    if isinstance(cq, FloorQuery):
        return cq.floor(m or 100)
    if m is None:
        return cq.sender_activity()
    if plan.groups is not None and plan.groups.keys is None:
        return cq.group_sender_counts(GROUPS_PER_SENDER)
    if plan.kind == "count":
        return cq.counts(m)
    if plan.kind in ("sum", "mean", "variance"):
        return cq.moments(m)
    if plan.kind == "sentiment":
        return cq.sentiment(m)
    return cq.term_sender_counts(m)


def selected_rows(cls: type[CorpusQuery], cur: Any, plan: Plan) -> set[tuple[int, int]]:
    sql, params = cls(cur, plan).capped("sender_id, msg_rank", plan.max_messages or 100)
    return {(int(s), int(r)) for s, r in cur.execute(sql, params).fetchall()}


# -- statistics ----------------------------------------------------------------------------
def paired(a: list[float], b: list[float], rng: np.random.Generator) -> dict[str, float]:
    """Median of A and B, and of the paired differences with a 95% bootstrap interval, in ms;
    Wilcoxon signed-rank p (two-sided); share of rounds where A was slower."""
    d = (np.asarray(a) - np.asarray(b)) * 1000
    boot = np.median(rng.choice(d, size=(4000, len(d)), replace=True), axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {
        "a": statistics.median(a) * 1000,
        "b": statistics.median(b) * 1000,
        "d": float(np.median(d)),
        "lo": float(lo),
        "hi": float(hi),
        "p": p,
        "slower": float(np.mean(d > 0)),
    }


def ratio(num: list[float], den: list[float], rng: np.random.Generator) -> str:
    r = np.asarray(num) / np.asarray(den)
    boot = np.median(rng.choice(r, size=(4000, len(r)), replace=True), axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return f"{np.median(r):.2f} [{lo:.2f}, {hi:.2f}]"


def table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def interleave(
    cells: dict[tuple[str, str], Callable[..., Any]], rounds: int, rnd: random.Random
) -> dict[tuple[str, str], list[float]]:
    """Time every cell once per round, in a fresh random order each round."""
    times: dict[tuple[str, str], list[float]] = {k: [] for k in cells}
    keys = list(cells)
    for _ in range(rounds):
        rnd.shuffle(keys)
        for k in keys:
            t = time.perf_counter()
            cells[k]()
            times[k].append(time.perf_counter() - t)
    return times


def report(
    name: str,
    times: dict[tuple[str, str], list[float]],
    forms: tuple[str, ...],
    others: tuple[str, ...],
    rng: np.random.Generator,
) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for form in forms:
        cost = ratio(times[form, "A"], times["old", "A"], rng) if form != "old" else "1"
        for other in others:
            s = paired(times[form, "A"], times[form, other], rng)
            rows.append((
                name, form, f"A-{other}", f"{s['a']:.2f}", f"{s['b']:.2f}",
                f"{s['d']:+.2f} [{s['lo']:+.2f}, {s['hi']:+.2f}]", f"{s['p']:.1e}",
                f"{s['slower']:.0%}", cost,
            ))  # fmt: skip
    return rows


HEAD = (
    "query", "SQL", "pair", "A ms", "other ms", "A - other ms [95%]", "Wilcoxon p",
    "A slower", "/ old on A [95%]",
)  # fmt: skip


# -- the neighbouring corpora ----------------------------------------------------------------
def _publish(store: SnapshotStore, table_: Any, manifest: dict[str, Any], source: str,
             row_group: int) -> None:  # fmt: skip
    import pyarrow.parquet as pq

    with store.staging() as tmp:
        pq.write_table(table_, tmp / MESSAGES_FILE, compression="zstd", row_group_size=row_group)
        digest = hashlib.sha256((tmp / MESSAGES_FILE).read_bytes()).hexdigest()
        created = datetime.now(UTC)
        manifest = {
            **manifest,
            "id": f"snap-{created:%Y%m%dT%H%M%SZ}-{digest[:8]}",
            "created_at": created.isoformat(),
            "content_sha256": digest,
            "source": source,
        }
        info = store.publish(tmp, manifest)
    print(f"{store.data_dir}: {info.id} ({source}), {table_.num_rows:,} messages")


def make_neighbours(a_dir: str, b_dir: str, c_dir: str) -> None:
    """B: A's live snapshot without its heaviest sender. C: A with that sender's messages
    edited so that none matches this bench's filters (same size, same order and ranks)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    src = SnapshotStore(a_dir).live()
    assert src is not None, f"no live snapshot in {a_dir}"
    manifest = json.loads((src.path / MANIFEST_FILE).read_text(encoding="utf-8"))
    table_ = pq.read_table(src.messages_path)
    row_group = pq.ParquetFile(src.messages_path).metadata.row_group(0).num_rows
    heavy = pc.mode(table_["sender_id"]).to_pylist()[0]
    is_heavy = pc.equal(table_["sender_id"], heavy["mode"])
    print(f"heaviest sender: sender_id {heavy['mode']}, {heavy['count']:,} messages")
    _publish(SnapshotStore(b_dir), table_.filter(pc.invert(is_heavy)), manifest,
             f"{manifest['source']} without its heaviest sender", row_group)  # fmt: skip

    nine_weeks = pa.scalar(9 * 7 * 86400 * 10**6, pa.duration("us"))
    edits = {
        "ts": pc.if_else(is_heavy, pc.add(table_["ts"], nine_weeks), table_["ts"]),
        "text": pc.if_else(
            is_heavy,
            pc.replace_substring_regex(table_["text"], "(?i)yeah", "yeeh"),
            table_["text"],
        ),
        "rating_witty": pc.if_else(
            pc.and_(is_heavy, pc.equal(table_["rating_witty"], "5")), "4", table_["rating_witty"]
        ),
    }
    edited = table_
    for col, values in edits.items():
        edited = edited.set_column(edited.schema.get_field_index(col), col, values)
    _publish(SnapshotStore(c_dir), edited, manifest,
             f"{manifest['source']}, heaviest sender's messages edited to match no bench "
             "filter", row_group)  # fmt: skip


# -- HTTP ------------------------------------------------------------------------------------
def http_clients(dirs: dict[str, str]) -> dict[str, Callable[..., None]]:
    from mechanisms.ledger import Budget
    from service.app import create_app
    from service.auth import create_principal, issue_key
    from service.charging import get_ledger

    posts = {}
    counter = iter(range(1, 10**9))
    for corpus, d in dirs.items():
        app = create_app({"data_dir": d, "log_level": "WARNING"})
        engine = app.extensions["privtext"].engine
        pid = create_principal(engine, name=f"side-channel-bench-{os.getpid()}", role="analyst")
        with app.app_context():
            get_ledger().set_budget(pid, Budget(epsilon=1e9, delta=1e-4))
        headers = {"Authorization": f"Bearer {issue_key(engine, pid)}"}
        client = app.test_client()

        def post(body: dict[str, Any], client: Any = client, headers: Any = headers) -> None:
            eps = 1.0 + next(counter) * 1e-9  # a distinct query every time: never a replay
            r = client.post("/v1/queries", json={**body, "privacy": {"epsilon": eps}},
                            headers=headers)  # fmt: skip
            assert r.status_code == 200 and r.get_json()["replay"] is False, r.get_json()

        posts[corpus] = post
    return posts


def use(methods: dict[str, Any]) -> None:
    """Make ``CorpusQuery`` (hence the app) run ``methods`` (OLD or NEW)."""
    for name, fn in methods.items():
        setattr(CorpusQuery, name, fn)


def main() -> None:  # noqa: C901 - a benchmark driver, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make-neighbours", nargs=3, metavar=("A_DIR", "B_DIR", "C_DIR"))
    parser.add_argument("--a", help="data dir of corpus A (with the heaviest sender)")
    parser.add_argument("--b", help="data dir of corpus B (without it)")
    parser.add_argument("--c", help="data dir of corpus C (its messages match no filter)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--http-rounds", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.make_neighbours:
        make_neighbours(*args.make_neighbours)
        return
    assert args.a and args.b, "--a and --b are required"
    dirs = {"A": args.a, "B": args.b, **({"C": args.c} if args.c else {})}
    others = tuple(dirs)[1:]
    rnd, rng = random.Random(args.seed), np.random.default_rng(args.seed)

    # One DuckDB connection (one thread pool, one buffer manager) with a view per corpus, so
    # that the corpus is the only thing that differs between cells. With a connection per
    # corpus, as the service would open, differences of up to 5 ms between identical cheap
    # queries came and went from one run to the next.
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    meta: list[str] = []
    print(f"python {platform.python_version()}, duckdb {duckdb.__version__}, "
          f"cpus {len(os.sched_getaffinity(0))}, load avg {os.getloadavg()[0]:.2f}")  # fmt: skip
    for corpus, d in dirs.items():
        info = SnapshotStore(d).live()
        assert info is not None, f"no live snapshot in {d}"
        meta = list(info.metadata_columns)
        path = str(info.messages_path.resolve()).replace("'", "''")
        con.execute(f"CREATE VIEW messages_{corpus} AS SELECT * FROM read_parquet('{path}')")
        sql = f"SELECT count(*), count(DISTINCT sender_id) FROM messages_{corpus}"
        n, senders = con.execute(sql).fetchone()  # type: ignore[misc]
        print(f"{corpus}: {info.id} ({info.source}), {n:,} messages, {senders:,} senders")
    schema = QuerySchema()
    plans = {
        name: build_plan(schema.load({**body, "privacy": {"epsilon": 1.0}}), metadata_columns=meta)
        for name, body in QUERIES
    }
    forms: dict[str, type[CorpusQuery]] = {"old": OldQuery, "new": CorpusQuery, "floor": FloorQuery}
    on = {  # (form, corpus) -> the form's class reading that corpus's view
        (form, corpus): type(cls.__name__, (cls,), {"source": f"messages_{corpus}"})
        for form, cls in forms.items()
        for corpus in dirs
    }

    rows = []
    for name, plan in plans.items():
        for corpus in dirs:
            old, new = on["old", corpus], on["new", corpus]
            same = selected_rows(old, con, plan) == selected_rows(new, con, plan)
            if plan.kind != "top_terms":  # its ties are broken at random on every call
                same &= exact(old(con, plan), plan) == exact(new(con, plan), plan)
            assert same, (name, corpus)
            for form in forms:
                exact(on[form, corpus](con, plan), plan)  # warm up
        cells = {
            key: (lambda cls=cls, plan=plan: exact(cls(con, plan), plan)) for key, cls in on.items()
        }
        rows += report(name, interleave(cells, args.rounds, rnd), tuple(forms), others, rng)
        print(f"  done {name}", flush=True)
    print()
    print(
        f"exact aggregate (CorpusQuery, no noise), cap 100, {args.rounds} rounds, each "
        "(SQL, corpus) cell once per round in random order; differences paired by round"
    )
    table(HEAD, rows)

    if args.http_rounds:
        posts = http_clients(dirs)
        bodies = dict(QUERIES)
        methods = {"old": OLD, "new": NEW}
        hrows = []
        for name in HTTP_QUERIES:

            def call(form: str, corpus: str, body: dict[str, Any] = bodies[name]) -> None:
                use(methods[form])
                try:
                    posts[corpus](body)
                finally:
                    use(NEW)

            hcells = {(f, c): (lambda f=f, c=c: call(f, c)) for f in methods for c in dirs}
            for cell in hcells.values():
                cell()  # warm up
            times = interleave(hcells, args.http_rounds, rnd)
            hrows += report(name, times, tuple(methods), others, rng)
            print(f"  done http {name}", flush=True)
        print()
        print(f"POST /v1/queries on the Flask test client (one app per corpus, distinct charged "
              f"queries), {args.http_rounds} rounds, random order per round")  # fmt: skip
        table(HEAD, hrows)
    print(f"\nload avg at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
