"""Group-by, for every kind that takes one: the public keys, and keys found in the data.

Declared keys are public: the hours of the day, the weekdays, the days, weeks or months a
declared range touches, or the listed values of a metadata column. Each kind then releases one
value per key (a noisy zero for an empty group). Undeclared metadata values are found in the
data by partition selection: each sender counts toward at most ``GROUPS_PER_SENDER`` keys,
their noisy distinct-sender counts (``SELECTION_SHARE`` of the cost, in a part named
``selection``) must clear a threshold that spends the query's delta, and only the keys that
clear it are released. A kind whose answer is that count (a count of senders) spends nothing
more.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from corpus.engine import Engine, Groups
from service.errors import APIError
from service.queries.parts import Part, noisy

#: For group-by over undeclared keys: each sender counts toward at most this many keys when
#: keys are selected, and this share of the cost pays for the selection.
GROUPS_PER_SENDER = 4
SELECTION_SHARE = 0.5
MAX_TIME_BUCKETS = 1000


def build_groups(gb: dict[str, Any] | None, metadata_columns: list[str]) -> Groups | None:
    """The groups of a validated ``group_by`` (None: no grouping). Raises APIError (422) for
    an undeclared metadata column or a range of more than ``MAX_TIME_BUCKETS`` buckets."""
    if not gb:
        return None
    if "time" in gb:
        rng = (gb["range"]["start"], gb["range"]["end"]) if "range" in gb else None
        return Groups(column=gb["time"], kind="time", keys=_time_keys(gb["time"], rng), range=rng)
    check_metadata_column(gb["metadata"], metadata_columns, "group_by.metadata")
    values = tuple(sorted(set(gb["values"]))) if gb.get("values") else None
    return Groups(column=gb["metadata"], kind="metadata", keys=values)


def check_metadata_column(col: str, columns: list[str], where: str) -> None:
    if col not in columns:
        raise APIError(
            422,
            "validation_error",
            f"Unknown metadata column in {where}.",
            {where: [f"declared metadata columns: {sorted(columns)}"]},
        )


def _time_keys(unit: str, rng: tuple[datetime, datetime] | None) -> tuple[Any, ...]:
    """The public keys of a time grouping: hours 0-23, weekdays 0-6 (Monday 0), or the
    ISO dates of the day, week (Monday) or month starts that the declared range touches."""
    if unit == "hour_of_day":
        return tuple(range(24))
    if unit == "weekday":
        return tuple(range(7))
    assert rng is not None
    start = rng[0].astimezone(UTC).date()
    end = rng[1].astimezone(UTC)
    if unit == "week":
        start -= timedelta(days=start.weekday())
    elif unit == "month":
        start = start.replace(day=1)
    keys: list[str] = []
    cur = start
    while datetime(cur.year, cur.month, cur.day, tzinfo=UTC) < end:
        keys.append(cur.isoformat())
        if len(keys) > MAX_TIME_BUCKETS:
            raise APIError(
                422,
                "validation_error",
                f"The range holds more than {MAX_TIME_BUCKETS} {unit} buckets.",
                {"group_by": {"range": ["too many buckets"]}},
            )
        if unit == "day":
            cur += timedelta(days=1)
        elif unit == "week":
            cur += timedelta(days=7)
        else:
            cur = (cur.replace(day=28) + timedelta(days=4)).replace(day=1)
    return tuple(keys)


def n_keys(groups: Groups | None) -> int:
    """How many declared keys one sender may touch once each (1 without declared keys)."""
    return len(groups.keys) if groups and groups.keys else 1


def with_selection(parts: list[Part], *, selection_is_answer: bool) -> list[Part]:
    """The parts of a query over undeclared keys: the key selection first, at
    ``SELECTION_SHARE`` of the cost, the kind's own parts sharing the rest; or the selection
    alone, at the whole cost, when its counts are the answer."""
    selection = Part("selection", float(GROUPS_PER_SENDER), SELECTION_SHARE)
    if selection_is_answer:
        selection.share = 1.0
        return [selection]
    for p in parts:
        p.share *= 1.0 - SELECTION_SHARE
    return [selection, *parts]


def select_keys(
    engine: Engine, part: Part, threshold: float
) -> tuple[list[Any], dict[Any, float], str]:
    """Keys found in the data: those whose noisy distinct-sender count (``part``'s noise)
    reaches ``threshold``, sorted; their noisy counts; and the answer's note on it."""
    counts = engine.group_sender_counts(GROUPS_PER_SENDER)
    names = list(counts)
    noisy_counts = noisy(part, [counts[k] for k in names]) if names else np.array([])
    selection = {
        k: float(v) for k, v in zip(names, noisy_counts, strict=True) if v >= threshold
    }
    note = (
        f"Groups are released only when their noisy number of distinct senders reaches "
        f"{threshold:.1f}; each sender counted toward at most {GROUPS_PER_SENDER} "
        "groups in that selection, so small groups are missing."
    )
    return sorted(selection, key=str), selection, note
