"""Keywords and declared terms are lower-cased as the engines lower-case messages.

Python's ``str.lower`` has a final-sigma rule and turns İ into two code points; DuckDB's
``lower`` (and the Spark engine's ``lower_sql``, which copies it) maps each code point alone.
Lower-cased by Python, the keyword "ΟΔΟΣ" became "οδος", which no message lower-cased by
DuckDB ("οδοσ") contains: such a filter matched nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pytest

from corpus import SnapshotStore, ingest_file
from corpus.duckdb_engine import DuckDBEngine
from corpus.engine import lower_text
from service.queries.kinds.top_terms import TopTerms
from service.queries.plan import build_plan
from service.schemas.query import QuerySchema
from tests.factories import write_jsonl

WORDS = ["ΟΔΟΣ", "ΣΑΣ", "Σ", "İSTANBUL", "Straße", "ǅemal", "ΣΑΣ-ΟΔΟΣ.", "ΆΣ"]


def _duckdb_lower(texts: list[str]) -> list[str]:
    with duckdb.connect() as con:
        return [con.execute("SELECT lower(?)", [t]).fetchone()[0] for t in texts]


def test_lower_text_is_duckdbs_lower() -> None:
    assert [lower_text(w) for w in WORDS] == _duckdb_lower(WORDS)
    assert lower_text("ΟΔΟΣ") == "οδοσ" != "ΟΔΟΣ".lower()  # the case that went wrong
    assert lower_text("İ") == "i" != "İ".lower()


@pytest.mark.seconds
def test_lower_text_is_duckdbs_lower_on_every_code_point() -> None:
    points = [c for c in range(0x20, 0x30000) if not 0xD800 <= c <= 0xDFFF]
    chunks = ["\n".join(chr(c) for c in points[i : i + 4000]) for i in range(0, len(points), 4000)]
    assert [lower_text(t) for t in chunks] == _duckdb_lower(chunks)


@pytest.fixture(scope="module")
def greek(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[str]]]:
    tmp = tmp_path_factory.mktemp("greek")
    start = datetime(2024, 1, 1, tzinfo=UTC)
    texts = ["ΟΔΟΣ ΣΑΣ", "στην οδοσ", "İSTANBUL", "nothing here", "ΣΑΣ"]
    rows = [
        {"sender": f"s{i}", "conversation": f"c{i}", "text": t,
         "timestamp": (start + timedelta(minutes=i)).isoformat()}
        for i, t in enumerate(texts)
    ]
    ingest_file(write_jsonl(tmp / "c.jsonl", rows), tmp / "data", workers=1)
    store = SnapshotStore(tmp / "data")
    info, cur = store.cursor()
    yield cur, list(info.metadata_columns)
    cur.close()
    store.close()


@pytest.mark.parametrize(
    ("terms", "want"), [(["ΟΔΟΣ"], 2), (["ΣΑΣ"], 2), (["İstanbul"], 1), (["ΟΔΟΣ", "ΣΑΣ"], 3)]
)
def test_keywords_match_as_the_engine_lower_cases(
    greek: tuple[Any, list[str]], terms: list[str], want: int
) -> None:
    cur, meta = greek
    req = {"kind": "count", "filters": {"keywords": {"terms": terms}},
           "privacy": {"epsilon": 1.0}, "max_messages_per_sender": 10}
    plan = build_plan(QuerySchema().load(req), metadata_columns=meta)
    assert DuckDBEngine(cur, plan).counts(10) == {None: want}


def test_declared_terms_are_lower_cased_as_the_engine_does() -> None:
    kind = TopTerms.from_request({"terms": ["ΟΔΟΣ", "İSTANBUL", "οδοσ"]})
    assert kind.terms == ("οδοσ", "istanbul")
