"""A query plan: the validated request with every default resolved, and nothing from the data.

The plan is what is priced, what the scan engine computes, and (normalised) what the audit
log records and replay matches on. It is generic: the kind's own parameters are in ``spec``
(a ``kinds`` class), and the plan holds what every kind shares (filters, groups, privacy, cap).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from corpus.engine import AUTO_CAP_BUCKETS, Grid, Groups, Measure, lower_text
from service.errors import APIError
from service.queries.groups import build_groups, check_metadata_column
from service.queries.kinds import KINDS, QueryKind, kind_named

__all__ = [
    "AUTO_CAP_BUCKETS",
    "AUTO_CAP_SHARE",
    "AUTO_CAPS",
    "EMBEDDING_KINDS",
    "MAX_CAP",
    "Plan",
    "build_plan",
]

DEFAULT_MAX_MESSAGES = 100
DEFAULT_EPSILON = 1.0
DEFAULT_DELTA = 1e-7
AUTO_CAP_SHARE = 0.1  # of the query's cost, spent choosing the per-sender cap
MAX_CAP = 10_000  # the largest per-sender cap, fixed or automatic
#: The caps an automatic choice picks from: powers of two, the last one limited to MAX_CAP.
AUTO_CAPS = tuple(sorted({min(2**j, MAX_CAP) for j in range(AUTO_CAP_BUCKETS)}))
#: Kinds that read message embeddings (prepared, or refused with 409, before any charge).
EMBEDDING_KINDS = tuple(name for name, cls in KINDS.items() if cls.reads_embeddings)


@dataclass(frozen=True)
class Plan:
    spec: QueryKind  # the kind, with its own resolved parameters
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
    model_id: str | None = None  # the model whose cached embeddings are read, if any

    @property
    def kind(self) -> str:
        return self.spec.name

    @property
    def grid(self) -> Grid | None:
        return self.spec.grid

    @property
    def measure(self) -> Measure:
        """What the scan engine aggregates for this plan."""
        return self.spec.measure()

    @property
    def uses_cap(self) -> bool:
        """Whether the per-sender message cap matters (a count of distinct senders ignores
        it: each sender adds at most 1 per group whatever its messages)."""
        return self.spec.uses_cap

    @property
    def needs_partition_selection(self) -> bool:
        return self.spec.discovers_keys is not None or (
            self.groups is not None and self.groups.keys is None
        )

    def normalised(self) -> dict[str, Any]:
        """The plan as canonical JSON-able data: what the audit log and replay key on."""
        d: dict[str, Any] = {
            "kind": self.kind,
            **self.spec.record(),
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
        if self.spec.reads_embeddings:
            # a different model gives a different answer: a new query, not a replay
            d["model_id"] = self.model_id
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
    """Resolve defaults and check what the schema cannot (the snapshot's metadata columns, the
    grid, what the privacy request and the kind allow together). Raises APIError (422)."""
    kind = kind_named(req["kind"])
    if req.get("bounds") and "bounds" not in kind.request_fields:
        raise APIError(
            422, "validation_error", "bounds go with a feature", {"bounds": ["unexpected"]}
        )
    spec = kind.from_request(req)
    filters = req.get("filters") or {}
    meta_filter = tuple(
        sorted((k, tuple(sorted(set(v)))) for k, v in (filters.get("metadata") or {}).items())
    )
    for col, _ in meta_filter:
        check_metadata_column(col, metadata_columns, "filters.metadata")
    tr = filters.get("time_range")
    kw = filters.get("keywords") or {}
    groups = build_groups(req.get("group_by"), metadata_columns)
    privacy = req.get("privacy") or {}
    accuracy = privacy.get("accuracy")
    epsilon = privacy.get("epsilon")
    plan = Plan(
        spec=spec,
        groups=groups,
        time_range=(tr["start"], tr["end"]) if tr else None,
        keywords=tuple(sorted({lower_text(t) for t in kw.get("terms", ())})),
        keywords_match=kw.get("match", "any"),
        metadata_filter=meta_filter,
        mechanism=privacy.get("mechanism", "laplace"),
        epsilon=DEFAULT_EPSILON if epsilon is None and accuracy is None else epsilon,
        delta=privacy.get("delta", DEFAULT_DELTA),
        accuracy=(accuracy["half_width"], accuracy["level"]) if accuracy else None,
        max_messages=_cap(req.get("max_messages_per_sender"), spec),
        level=req.get("confidence_level", 0.95),
        dry_run=req.get("dry_run", False),
    )
    _check_privacy(plan, delta_given="delta" in privacy)
    spec.check(plan)
    return plan


def _cap(cap: Any, spec: QueryKind) -> int | None:
    """The fixed per-sender cap, or None for one chosen privately ("auto"). A kind that never
    uses the cap (a count of distinct senders) gets the default instead of "auto": choosing
    one privately would spend budget on nothing the answer uses."""
    max_messages: int | None = None if cap == "auto" else (cap or DEFAULT_MAX_MESSAGES)
    if max_messages is None and not spec.uses_cap:
        max_messages = DEFAULT_MAX_MESSAGES
    return max_messages


def _check_privacy(plan: Plan, *, delta_given: bool) -> None:
    """What the privacy request and the kind allow together."""
    if plan.accuracy is not None and not plan.spec.takes_accuracy:
        names = [name for name, cls in KINDS.items() if cls.takes_accuracy]
        raise APIError(
            422,
            "validation_error",
            f"An accuracy target is supported for {', '.join(names[:-1])} and {names[-1]}; "
            "give privacy.epsilon for this kind.",
            {"privacy": {"accuracy": ["not supported for this kind"]}},
        )
    if plan.accuracy is not None and plan.max_messages is None:
        raise APIError(
            422,
            "validation_error",
            "An accuracy target needs a fixed max_messages_per_sender.",
            {"max_messages_per_sender": ['"auto" cannot be combined with an accuracy target']},
        )
    if plan.mechanism == "laplace" and delta_given and not plan.needs_partition_selection:
        raise APIError(
            422,
            "validation_error",
            "The Laplace mechanism takes a delta only for queries over undeclared keys "
            "(top terms without a term list, group-by metadata without values).",
            {"privacy": {"delta": ["not used by this query"]}},
        )
