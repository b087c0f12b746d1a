"""Time buckets as integers from the epoch give exactly the calendar functions' buckets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import duckdb
import pytest

from corpus.duckdb_engine import _group_expr, _key_decoder

#: The calendar expressions the integer ones replace (the SQL before issue 11).
CALENDAR = {
    "hour_of_day": "hour(ts)",
    "weekday": "isodow(ts) - 1",
    "day": "strftime(date_trunc('day', ts), '%Y-%m-%d')",
    "week": "strftime(date_trunc('week', ts), '%Y-%m-%d')",
}


def _instants() -> list[datetime]:
    """Day, week, month and year boundaries (and a microsecond either side), before and after
    1970, a leap day, and a spread of ordinary instants."""
    out = []
    for year in (1900, 1969, 1970, 1971, 2000, 2016, 2018, 2024, 2199):
        for month, day in ((1, 1), (2, 28), (3, 1), (6, 15), (12, 31)):
            base = datetime(year, month, day, tzinfo=UTC)
            for delta in (
                timedelta(0),
                timedelta(microseconds=-1),
                timedelta(microseconds=1),
                timedelta(hours=23, minutes=59, seconds=59, microseconds=999_999),
                timedelta(hours=12, minutes=30),
            ):
                out.append(base + delta)
    out.append(datetime(2024, 2, 29, 13, 0, tzinfo=UTC))
    step = timedelta(hours=7, minutes=13, seconds=17)
    t = datetime(1965, 1, 1, tzinfo=UTC)
    while t < datetime(1975, 1, 1, tzinfo=UTC):
        out.append(t)
        t += step * 97
    return out


@pytest.mark.parametrize("unit", sorted(CALENDAR))
def test_integer_buckets_equal_calendar_buckets(unit: str) -> None:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE TABLE messages (ts TIMESTAMP WITH TIME ZONE)")
    rows = _instants()
    con.executemany("INSERT INTO messages VALUES (?)", [[t] for t in rows])
    plan: Any = SimpleNamespace(groups=SimpleNamespace(kind="time", column=unit))
    expr, decode = _group_expr(plan), _key_decoder(plan)
    got = con.execute(f"SELECT ts, {expr}, {CALENDAR[unit]} FROM messages").fetchall()
    assert len(got) == len(rows) > 300
    for ts, integer, calendar in got:
        assert decode(integer) == calendar, (ts, integer, calendar)
