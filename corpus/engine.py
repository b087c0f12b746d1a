"""The scan engine seam: the bounded aggregates a query reads from a corpus snapshot.

A query kind (``service/queries/kinds/``) never touches a database: it asks an :class:`Engine`
for exact aggregates over one snapshot, already bounded per sender, and adds noise to them. The
engine is told *which* messages and groups (the filters and group keys of a :class:`Scan`, all
public) and *what* to measure (a :class:`Measure`), and answers with plain Python and numpy
values. DuckDB implements it today (``corpus.duckdb_engine``); a Spark engine will implement
the same protocol for corpora that do not fit one machine.

Every aggregate is exact and private; only noise added by the caller may leave. The contract
each engine must keep, because sensitivities are computed from it before anything is read:

- **The per-sender cap** ``m``: of the messages that pass the filters, each sender contributes
  at most the ``m`` of smallest ``msg_rank`` (a random rank drawn at ingest, independent of
  content). A sender's rank order never depends on other senders.
- **Values** of a feature are clamped to the grid's bounds and rounded to its step, then
  clamped again in grid units to ``[lower_q, upper_q]``: every value is an integer there.
- **Group keys**: with a group-by, results are keyed by the group's key (for a time grouping,
  the hour 0-23, the weekday 0-6 with Monday 0, or the ISO date of the day, week (Monday) or
  month start, in UTC); a group no selected message falls in is absent. Without one, the only
  key is ``None``.
- **Text is lower-cased** by Unicode's simple case mapping, one code point at a time (DuckDB's
  ``lower``; no final-sigma rule, İ becomes i): keywords and declared terms are lower-cased the
  same way before they are compared (:func:`lower_text`).
- **Work independent of matches** where a method says so (the side channel of issue 10): the
  per-sender counts read every message the same way whether it matches a filter or not.

The embedding side (:class:`EmbeddingEngine`) sums message vectors bounded by :func:`quantise`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

import numpy as np

__all__ = [
    "AUTO_CAP_BUCKETS",
    "NEGATIVE_AT",
    "POSITIVE_AT",
    "VECTOR_GRID_BITS",
    "VECTOR_UNITS",
    "EmbeddingEngine",
    "Engine",
    "Grid",
    "Groups",
    "Measure",
    "Scan",
    "lower_text",
    "quantise",
]

#: Senders are counted per bucket of their matching messages, bucket j = [2^j, 2^(j+1)), the
#: last bucket open-ended (``Engine.sender_activity``, used to choose a per-sender cap).
AUTO_CAP_BUCKETS = 15
#: VADER's usual thresholds on the compound score (positive at or above, negative at or below).
POSITIVE_AT = 0.05
NEGATIVE_AT = -0.05
#: Message vectors are summed in integer units of 2**-12 per coordinate (``quantise``).
VECTOR_GRID_BITS = 12
VECTOR_UNITS = 2**VECTOR_GRID_BITS


#: Time buckets are integers computed from a timestamp's microseconds since the epoch (UTC),
#: not calendar functions: the same buckets, about twice as fast to group by (issue 11), and the
#: same arithmetic in every engine's dialect. The shift (2**20 days, a whole number of weeks)
#: keeps every division a floor for any timestamp after the year -900, before 1970 included.
HOUR_US = 3_600_000_000
DAY_US = 86_400_000_000
SHIFT_DAYS = 2**20
#: Added to a shifted day number, mod 7, gives the ISO weekday - 1 (Monday 0): 1970-01-01
#: was a Thursday (3).
WEEKDAY_OFFSET = (3 - SHIFT_DAYS) % 7
EPOCH = date(1970, 1, 1)


def time_bucket_sql(micros: str, div: str) -> dict[str, str]:
    """The integer time buckets (hour of day, weekday, day, week) in one SQL dialect:
    ``micros`` is the timestamp's microseconds since the epoch, ``div`` integer division."""
    shifted = f"({micros} + {SHIFT_DAYS * DAY_US})"
    days = f"({shifted} {div} {DAY_US})"
    return {
        "hour_of_day": f"(({shifted} {div} {HOUR_US}) % 24)",
        "weekday": f"(({days} + {WEEKDAY_OFFSET}) % 7)",
        "day": days,
        "week": f"({days} - ({days} + {WEEKDAY_OFFSET}) % 7)",
    }


def lower_text(text: str) -> str:
    """``text`` lower-cased as the engines lower-case messages (DuckDB's ``lower``): each code
    point by its simple lowercase mapping. Python's ``str.lower`` differs in two places, which
    made such keywords match nothing: a final capital sigma becomes ς (the engines: σ), and
    İ becomes i plus a combining dot (the engines: i)."""
    return "".join("i" if ch == "\u0130" else ch.lower() for ch in text)

#: A group key: an hour or weekday number, an ISO date, a metadata value; None without groups.
Key = Any


@dataclass(frozen=True)
class Grid:
    """Values are clamped to [lower, upper] and rounded to multiples of ``step`` (a power of
    two); sums are then exact integers in units of ``step``."""

    lower: float
    upper: float
    step: float

    @property
    def lower_q(self) -> int:
        return round(self.lower / self.step)

    @property
    def upper_q(self) -> int:
        return round(self.upper / self.step)

    @property
    def offset_q(self) -> int:
        """The integer centre that sums are taken around (halves their sensitivity)."""
        return (self.lower_q + self.upper_q) // 2

    @property
    def max_dev_q(self) -> int:
        return max(abs(self.upper_q - self.offset_q), abs(self.lower_q - self.offset_q))


@dataclass(frozen=True)
class Groups:
    """Declared group keys (public), or ``keys=None``: undeclared metadata values, for keys
    found by partition selection."""

    column: str  # "hour_of_day", "weekday", "day", "week", "month" or a metadata column
    kind: str  # "time" or "metadata"
    keys: tuple[Any, ...] | None
    range: tuple[datetime, datetime] | None = None  # day, week, month: the declared range


@dataclass(frozen=True)
class Measure:
    """What a scan aggregates, beyond which messages and groups (all public, from the query).

    ``of``: what ``counts`` counts (messages, senders or conversations). ``feature`` and
    ``grid``: the per-message value ``moments``, ``bin_counts`` and ``sentiment`` read.
    ``terms`` (declared; none: discovered, less a public stop list), ``bigrams`` and
    ``max_terms_per_sender``: what ``term_sender_counts`` counts.
    """

    of: str = "messages"
    feature: str | None = None
    grid: Grid | None = None
    terms: tuple[str, ...] = ()
    bigrams: bool = False
    max_terms_per_sender: int = 10


class Scan(Protocol):
    """Which messages an engine reads, how it groups them and what it measures."""

    @property
    def time_range(self) -> tuple[datetime, datetime] | None: ...

    @property
    def keywords(self) -> tuple[str, ...]: ...

    @property
    def keywords_match(self) -> str: ...  # "any" or "all"

    @property
    def metadata_filter(self) -> tuple[tuple[str, tuple[str, ...]], ...]: ...

    @property
    def groups(self) -> Groups | None: ...

    @property
    def measure(self) -> Measure: ...


class Engine(Protocol):
    """Exact, per-sender-bounded aggregates of one scan over one snapshot (see the module
    docstring for the contract). ``max_messages`` is the per-sender cap ``m``."""

    def counts(self, max_messages: int) -> dict[Key, int]:
        """Per group: the capped messages, or the distinct senders (any matching message;
        the cap does not apply, and the work is independent of matches), or the distinct
        conversations of the capped messages (``measure.of``)."""
        ...

    def moments(self, max_messages: int) -> dict[Key, tuple[int, int, int, int]]:
        """Per group, over the capped messages' grid values ``v`` (centred: ``v - offset_q``):
        ``(count, sum of centred v, sum of centred v**2, sum of v)``."""
        ...

    def bin_counts(self, edges: tuple[float, ...], max_messages: int) -> dict[Key, list[int]]:
        """Per group, the capped messages per bin of the raw feature: bin i is
        ``[edges[i], edges[i+1])``; values below or above the edges go to the first or last."""
        ...

    def sentiment(self, max_messages: int) -> dict[Key, tuple[int, int, int, int]]:
        """Per group: ``(positive, neutral, negative, sum of centred grid values)`` of the
        capped messages' compound scores (``POSITIVE_AT``, ``NEGATIVE_AT``)."""
        ...

    def term_sender_counts(self, max_messages: int) -> dict[str, int]:
        """Distinct senders per term (lower-cased tokens, and adjacent pairs when bigrams are
        asked for or declared) of the capped messages, each sender counted toward at most its
        ``max_terms_per_sender`` most used terms (ties broken at random, per sender)."""
        ...

    def group_sender_counts(self, max_groups: int) -> dict[Key, int]:
        """Distinct senders per undeclared group key, each sender in at most ``max_groups``
        keys (those of its smallest matching message rank); work independent of matches."""
        ...

    def sender_activity(self) -> list[int]:
        """Senders per bucket of their matching message count, ``AUTO_CAP_BUCKETS`` buckets
        (each sender in exactly one); work independent of matches."""
        ...


class EmbeddingEngine(Engine, Protocol):
    """An engine that also reads each message's vector (a model's embedding, cached per
    snapshot), bounded by :func:`quantise`. ``vocabulary`` is the public word list the answer
    names terms from (carried for the query; never read by the engine)."""

    vocabulary: Any

    def positions(self, max_messages: int) -> np.ndarray:
        """A handle on the capped messages (here: their row numbers, sorted)."""
        ...

    def bounded_sum(self, max_messages: int) -> tuple[int, np.ndarray]:
        """``(count, exact int64 sum of quantise(vector))`` of the capped messages."""
        ...

    def cluster_sums(
        self, positions: np.ndarray, centres: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per centre (rows of ``centres``): ``(count, int64 sum of quantise(vector))`` of the
        messages at ``positions``, each assigned to its nearest centre (largest inner
        product)."""
        ...


def quantise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` clipped to the unit ball and truncated to int64 grid units (``2**-12``),
    each row with ``sum(q**2) <= VECTOR_UNITS**2`` checked exactly in integers.

    Non-finite coordinates become 0. Truncation only shrinks magnitudes, so ``||q||_2 <=
    VECTOR_UNITS`` and ``||q||_1 <= ceil(sqrt(d) * VECTOR_UNITS)``: the bounds the embedding
    kinds' sensitivities rest on.
    """
    v = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    scale = VECTOR_UNITS / np.maximum(norms, 1.0)
    q = np.trunc(v * scale).astype(np.int64)
    limit = VECTOR_UNITS * VECTOR_UNITS
    over = (q * q).sum(axis=1) > limit
    while over.any():  # float rounding left a norm a hair above 1: shrink toward zero
        q[over] = np.trunc(q[over] * (1.0 - 2.0**-20)).astype(np.int64)
        over = (q * q).sum(axis=1) > limit
    return q

