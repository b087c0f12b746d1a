"""``top_terms``: the terms most senders use, from a declared list or discovered.

Each sender counts toward at most ``max_terms_per_sender`` (K) of its terms (its most used), at
most once each, so the distinct-sender counts per term move by K in L1 and ``sqrt(K)`` in L2,
whatever the per-sender cap. Declared terms are public keys: each gets a noisy count (a noisy
zero when absent). Discovered terms are keys found in the data: only those whose noisy count
clears the partition-selection threshold are released, which spends the query's delta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from marshmallow import fields, validate

from corpus.engine import Measure, lower_text
from mechanisms.estimators import interval
from service.errors import APIError
from service.queries.kinds.base import (
    DEFAULT_TERMS_PER_SENDER,
    DEFAULT_TOP_K,
    KindField,
    PlanFacts,
    QueryKind,
    Release,
    record_defaults,
)
from service.queries.parts import Part
from service.schemas.fields import StrictBoolean, StrictInteger

MAX_TERMS = 1000


def _term() -> fields.String:
    return fields.String(validate=validate.Length(min=1, max=64))


@dataclass(frozen=True)
class TopTerms(QueryKind):
    name = "top_terms"
    request_fields = {
        "k": KindField(
            StrictInteger(validate=validate.Range(min=1, max=100)), "k goes with top_terms"
        ),
        "terms": KindField(
            fields.List(_term(), validate=validate.Length(min=1, max=MAX_TERMS)),
            "terms goes with top_terms",
        ),
        "bigrams": KindField(StrictBoolean(load_default=False), "bigrams goes with top_terms"),
        "max_terms_per_sender": KindField(
            StrictInteger(validate=validate.Range(min=1, max=100)),
            "max_terms_per_sender goes with top_terms",
        ),
    }
    takes_group_by = False
    takes_accuracy = True

    k: int = DEFAULT_TOP_K
    terms: tuple[str, ...] = ()
    bigrams: bool = False
    max_terms_per_sender: int = DEFAULT_TERMS_PER_SENDER

    @classmethod
    def from_request(cls, req: dict[str, Any]) -> TopTerms:
        return cls(
            k=req.get("k", DEFAULT_TOP_K),
            terms=tuple(dict.fromkeys(lower_text(t) for t in req.get("terms") or ())),
            bigrams=bool(req.get("bigrams")),
            max_terms_per_sender=req.get("max_terms_per_sender", DEFAULT_TERMS_PER_SENDER),
        )

    def check(self, plan: PlanFacts) -> None:
        if self.bigrams and self.terms:
            raise APIError(
                422,
                "validation_error",
                "bigrams goes with discovered terms, not a declared list",
                {"bigrams": ["not with terms"]},
            )

    @property
    def discovers_keys(self) -> tuple[str, int] | None:
        return None if self.terms else ("senders", self.max_terms_per_sender)

    def measure(self) -> Measure:
        return Measure(
            terms=self.terms, bigrams=self.bigrams, max_terms_per_sender=self.max_terms_per_sender
        )

    def record(self) -> dict[str, Any]:
        return {
            **record_defaults(),
            "k": self.k,
            "terms": list(self.terms),
            "bigrams": self.bigrams,
            "max_terms_per_sender": self.max_terms_per_sender,
        }

    def parts(self, plan: PlanFacts, cap: int) -> list[Part]:
        k = self.max_terms_per_sender
        gauss = plan.mechanism == "gaussian"
        return [Part("senders", math.sqrt(k) if gauss else float(k), 1.0)]

    def release(self, r: Release) -> dict[str, Any]:
        counts = r.engine.term_sender_counts(r.cap)
        hw = r.half_width("senders")
        if self.terms:
            vals = r.noisy("senders", [counts.get(t, 0) for t in self.terms])
            rows: list[dict[str, Any]] = [
                {"term": t, "senders": float(v), "interval": interval(float(v), hw)}
                for t, v in zip(self.terms, vals, strict=True)
            ]
            rows.sort(key=lambda row: -float(row["senders"]))
            return {"result": {"terms": rows[: self.k] if self.k else rows}}
        names = list(counts)
        vals = r.noisy("senders", [counts[t] for t in names]) if names else np.array([])
        assert r.threshold is not None
        kept = [(t, float(v)) for t, v in zip(names, vals, strict=True) if v >= r.threshold]
        kept.sort(key=lambda tv: -tv[1])
        r.bias.append(
            f"Terms are released only when their noisy number of distinct senders reaches "
            f"{r.threshold:.1f}; each sender counted toward at most "
            f"{self.max_terms_per_sender} of its terms (its most used), and common function "
            "words are left out."
        )
        rows = [{"term": t, "senders": v, "interval": interval(v, hw)} for t, v in kept[: self.k]]
        return {"result": {"terms": rows}}
