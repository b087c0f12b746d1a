"""A query plan: the validated request with every default resolved, and nothing from the data.

The plan is what is priced, what the corpus store computes, and (normalised) what the audit
log records and replay matches on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from corpus.engine import AUTO_CAP_BUCKETS, VECTOR_GRID_BITS, Grid, Groups, Measure
from service.errors import APIError

#: Public default bounds per feature (an analyst can declare others).
DEFAULT_BOUNDS = {
    "chars": (0.0, 300.0),
    "tokens": (0.0, 60.0),
    "sentiment_compound": (-1.0, 1.0),
    "sentiment_pos": (0.0, 1.0),
    "sentiment_neu": (0.0, 1.0),
    "sentiment_neg": (0.0, 1.0),
}
DEFAULT_MAX_MESSAGES = 100
DEFAULT_EPSILON = 1.0
DEFAULT_DELTA = 1e-7
DEFAULT_TOP_K = 10
DEFAULT_TERMS_PER_SENDER = 10
QUANTILE_BINS = 32  # coarse enough that bins are not swamped by noise
AUTO_CAP_SHARE = 0.1  # of the query's cost, spent choosing the per-sender cap
MAX_CAP = 10_000  # the largest per-sender cap, fixed or automatic
#: The caps an automatic choice picks from: powers of two, the last one limited to MAX_CAP.
AUTO_CAPS = tuple(sorted({min(2**j, MAX_CAP) for j in range(AUTO_CAP_BUCKETS)}))
GRID_STEPS = 1024  # a real feature's bound range is cut into about this many grid steps
#: Public limits on the grid, checked before any data is read (see ``make_grid``): a grid step
#: is a power of two in [2**-40, 2**40] and a bound is at most 2**40 steps from zero, so every
#: clamped value converts to a BIGINT in SQL and every per-sender contribution stays exact.
MIN_GRID_STEP = 2.0**-40
MAX_GRID_STEP = 2.0**40
MAX_GRID_UNITS = 2**40
MAX_TIME_BUCKETS = 1000
#: Aggregate-embedding kinds (service/queries/embeddings.py).
EMBEDDING_KINDS = ("mean_embedding", "topics")
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2 and the versions trained from it
EMBEDDING_GRID_BITS = VECTOR_GRID_BITS  # coordinates are summed in integer units of 2**-12
DEFAULT_CLUSTERS = 8
DEFAULT_ITERATIONS = 5


def make_grid(feature: str, lower: float, upper: float, *, where: str = "bounds") -> Grid:
    """The grid for values clamped to ``[lower, upper]``.

    Raises APIError(422) when the bounds give no usable grid: a span that is not a finite
    positive float, a step outside [2**-40, 2**40], or a bound more than 2**40 steps from zero
    (its grid value would not be exact, and SQL's BIGINT conversion could overflow). Decided
    from the bounds alone, before any data is read.
    """
    span = float(upper) - float(lower)
    if not (math.isfinite(span) and span > 0):
        raise _grid_error(where, "the range upper - lower must be a finite positive number")
    if feature in ("chars", "tokens") and float(lower).is_integer() and float(upper).is_integer():
        step = 1.0
        while span / step > 4 * GRID_STEPS:
            step *= 2
    elif span / GRID_STEPS < MIN_GRID_STEP:
        step = 0.0  # too narrow (and log2 of an underflowed ratio would fail)
    else:
        step = 2.0 ** math.floor(math.log2(span / GRID_STEPS))
    if not MIN_GRID_STEP <= step <= MAX_GRID_STEP:
        raise _grid_error(
            where,
            f"the range is too {'narrow' if step < MIN_GRID_STEP else 'wide'}: its grid step "
            "must lie in [2**-40, 2**40]",
        )
    grid = Grid(lower=lower, upper=upper, step=step)
    if max(abs(grid.lower_q), abs(grid.upper_q)) > MAX_GRID_UNITS:
        raise _grid_error(
            where,
            "the bounds are too far from zero for their width: each must be within 2**40 grid "
            f"steps ({step!r} each) of zero",
        )
    return grid


def _grid_error(where: str, why: str) -> APIError:
    return APIError(422, "validation_error", f"Unusable {where}: {why}.", {where: [why]})


@dataclass(frozen=True)
class Plan:
    kind: str
    of: str
    feature: str | None
    grid: Grid | None
    quantiles: tuple[float, ...]
    bins: tuple[float, ...]
    k: int
    terms: tuple[str, ...]
    bigrams: bool
    max_terms_per_sender: int
    groups: Groups | None
    time_range: tuple[datetime, datetime] | None
    keywords: tuple[str, ...]
    keywords_match: str
    metadata_filter: tuple[tuple[str, tuple[str, ...]], ...]
    mechanism: str
    epsilon: float | None
    delta: float
    accuracy: tuple[float, float] | None
    max_messages: int | None  # None: chosen privately ("auto")
    level: float
    dry_run: bool
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    # topics (aggregate embeddings); model_id is the model whose cached embeddings are used
    clusters: int = DEFAULT_CLUSTERS
    iterations: int = DEFAULT_ITERATIONS
    model_id: str | None = None

    @property
    def measure(self) -> Measure:
        """What the scan engine aggregates for this plan."""
        return Measure(
            of=self.of,
            feature=self.feature,
            grid=self.grid,
            terms=self.terms,
            bigrams=self.bigrams,
            max_terms_per_sender=self.max_terms_per_sender,
        )

    @property
    def uses_cap(self) -> bool:
        """Whether the per-sender message cap matters (a count of distinct senders ignores
        it: each sender adds at most 1 per group whatever its messages)."""
        return not (self.kind == "count" and self.of == "senders")

    @property
    def needs_partition_selection(self) -> bool:
        return (self.kind == "top_terms" and not self.terms) or (
            self.groups is not None and self.groups.keys is None
        )

    def normalised(self) -> dict[str, Any]:
        """The plan as canonical JSON-able data: what the audit log and replay key on."""
        d: dict[str, Any] = {
            "kind": self.kind,
            "of": self.of,
            "feature": self.feature,
            "bounds": [self.grid.lower, self.grid.upper] if self.grid else None,
            "quantiles": list(self.quantiles),
            "bins": list(self.bins),
            "k": self.k,
            "terms": list(self.terms),
            "bigrams": self.bigrams,
            "max_terms_per_sender": self.max_terms_per_sender,
            "group_by": None,
            "filters": {
                "time_range": _iso_range(self.time_range),
                "keywords": list(self.keywords),
                "match": self.keywords_match,
                "metadata": {k: list(v) for k, v in self.metadata_filter},
            },
            "privacy": {
                "mechanism": self.mechanism,
                "epsilon": self.epsilon,
                "delta": self.delta,
                "accuracy": list(self.accuracy) if self.accuracy else None,
            },
            "max_messages_per_sender": self.max_messages if self.max_messages else "auto",
            "confidence_level": self.level,
        }
        if self.kind in EMBEDDING_KINDS:
            # a different model gives a different answer: a new query, not a replay
            d["model_id"] = self.model_id
            if self.kind == "topics":
                d["clusters"] = self.clusters
                d["iterations"] = self.iterations
        if self.groups is not None:
            d["group_by"] = {
                "column": self.groups.column,
                "kind": self.groups.kind,
                "values": [str(k) for k in self.groups.keys] if self.groups.keys else None,
                "range": _iso_range(self.groups.range),
            }
        return d


def _iso_range(r: tuple[datetime, datetime] | None) -> list[str] | None:
    return [r[0].astimezone(UTC).isoformat(), r[1].astimezone(UTC).isoformat()] if r else None


def build_plan(req: dict[str, Any], *, metadata_columns: list[str]) -> Plan:
    """Resolve defaults and check what the schema cannot (the snapshot's metadata columns)."""
    kind = req["kind"]
    feature = req.get("feature")
    if kind == "sentiment":
        feature = "sentiment_compound"
    grid = None
    if feature is not None:
        b = req.get("bounds")
        lower, upper = (b["lower"], b["upper"]) if b else DEFAULT_BOUNDS[feature]
        if kind == "sentiment":
            lower, upper = DEFAULT_BOUNDS[feature]
        grid = make_grid(feature, lower, upper)
    elif req.get("bounds"):
        raise APIError(
            422, "validation_error", "bounds go with a feature", {"bounds": ["unexpected"]}
        )
    bins: tuple[float, ...] = tuple(req.get("bins") or ())
    if bins and grid is not None and not req.get("bounds"):
        grid = make_grid(feature or "", bins[0], bins[-1], where="bins")  # type: ignore[arg-type]

    filters = req.get("filters") or {}
    meta_filter = tuple(
        sorted((k, tuple(sorted(set(v)))) for k, v in (filters.get("metadata") or {}).items())
    )
    for col, _ in meta_filter:
        _check_metadata_column(col, metadata_columns, "filters.metadata")
    tr = filters.get("time_range")
    kw = filters.get("keywords") or {}

    groups = None
    gb = req.get("group_by")
    if gb:
        if "time" in gb:
            rng = (gb["range"]["start"], gb["range"]["end"]) if "range" in gb else None
            groups = Groups(
                column=gb["time"], kind="time", keys=_time_keys(gb["time"], rng), range=rng
            )
        else:
            _check_metadata_column(gb["metadata"], metadata_columns, "group_by.metadata")
            values = tuple(sorted(set(gb["values"]))) if gb.get("values") else None
            groups = Groups(column=gb["metadata"], kind="metadata", keys=values)

    privacy = req.get("privacy") or {}
    mechanism = privacy.get("mechanism", "laplace")
    accuracy = privacy.get("accuracy")
    epsilon = privacy.get("epsilon")
    if epsilon is None and accuracy is None:
        epsilon = DEFAULT_EPSILON
    delta = privacy.get("delta", DEFAULT_DELTA)

    cap = req.get("max_messages_per_sender")
    max_messages = None if cap == "auto" else (cap or DEFAULT_MAX_MESSAGES)
    if kind == "count" and req.get("of") == "senders" and max_messages is None:
        # A count of distinct senders never uses the cap: choosing one privately would spend
        # budget on nothing the answer uses.
        max_messages = DEFAULT_MAX_MESSAGES

    plan = Plan(
        kind=kind,
        of=req.get("of", "messages"),
        feature=feature,
        grid=grid,
        quantiles=tuple(req.get("quantiles") or ()),
        bins=bins,
        k=req.get("k", DEFAULT_TOP_K),
        terms=tuple(dict.fromkeys(t.lower() for t in req.get("terms") or ())),
        bigrams=bool(req.get("bigrams")),
        max_terms_per_sender=req.get("max_terms_per_sender", DEFAULT_TERMS_PER_SENDER),
        groups=groups,
        time_range=(tr["start"], tr["end"]) if tr else None,
        keywords=tuple(sorted({t.lower() for t in kw.get("terms", ())})),
        keywords_match=kw.get("match", "any"),
        metadata_filter=meta_filter,
        mechanism=mechanism,
        epsilon=epsilon,
        delta=delta,
        accuracy=(accuracy["half_width"], accuracy["level"]) if accuracy else None,
        max_messages=max_messages,
        level=req.get("confidence_level", 0.95),
        dry_run=req.get("dry_run", False),
        clusters=req.get("clusters", DEFAULT_CLUSTERS),
        iterations=req.get("iterations", DEFAULT_ITERATIONS),
    )
    if plan.accuracy is not None and kind not in ("count", "sum", "histogram", "top_terms"):
        raise APIError(
            422,
            "validation_error",
            "An accuracy target is supported for count, sum, histogram and top_terms; "
            "give privacy.epsilon for this kind.",
            {"privacy": {"accuracy": ["not supported for this kind"]}},
        )
    if plan.accuracy is not None and max_messages is None:
        raise APIError(
            422,
            "validation_error",
            "An accuracy target needs a fixed max_messages_per_sender.",
            {"max_messages_per_sender": ['"auto" cannot be combined with an accuracy target']},
        )
    if mechanism == "laplace" and "delta" in privacy and not plan.needs_partition_selection:
        raise APIError(
            422,
            "validation_error",
            "The Laplace mechanism takes a delta only for queries over undeclared keys "
            "(top terms without a term list, group-by metadata without values).",
            {"privacy": {"delta": ["not used by this query"]}},
        )
    if plan.kind == "top_terms" and plan.bigrams and plan.terms:
        raise APIError(
            422,
            "validation_error",
            "bigrams goes with discovered terms, not a declared list",
            {"bigrams": ["not with terms"]},
        )
    return plan


def _check_metadata_column(col: str, columns: list[str], where: str) -> None:
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
