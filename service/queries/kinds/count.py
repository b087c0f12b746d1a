"""``count``: messages, distinct senders or distinct conversations, per group or overall.

Sensitivity for a per-sender cap ``m``: ``m`` for messages and conversations (one sender's
capped messages, each in at most one conversation it adds), 1 per group for senders (a sender
is counted once in each group it has a message in, whatever its messages: the cap does not
apply), so ``n`` groups in L1 and ``sqrt(n)`` in L2. Over undeclared group keys, a count of
senders is the key selection's own noisy counts (no further release).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from marshmallow import fields, validate

from corpus.engine import Measure
from mechanisms.estimators import interval
from service.queries.groups import n_keys
from service.queries.kinds.base import KindField, PlanFacts, QueryKind, Release, record_defaults
from service.queries.parts import Part

OF = ("messages", "senders", "conversations")


@dataclass(frozen=True)
class Count(QueryKind):
    name = "count"
    request_fields = {
        "of": KindField(
            fields.String(load_default="messages", validate=validate.OneOf(list(OF))),
            "of goes with count",
        )
    }
    takes_accuracy = True

    of: str = "messages"

    @classmethod
    def from_request(cls, req: dict[str, Any]) -> Count:
        return cls(of=req.get("of", "messages"))

    @property
    def uses_cap(self) -> bool:
        """A count of distinct senders ignores the cap: each sender adds at most 1 per group
        whatever its messages."""
        return self.of != "senders"

    @property
    def selection_is_answer(self) -> bool:
        return self.of == "senders"

    def measure(self) -> Measure:
        return Measure(of=self.of)

    def record(self) -> dict[str, Any]:
        return {**record_defaults(), "of": self.of}

    def parts(self, plan: PlanFacts, cap: int) -> list[Part]:
        if self.of == "senders":
            n = n_keys(plan.groups)
            return [Part("count", math.sqrt(n) if plan.mechanism == "gaussian" else float(n), 1.0)]
        return [Part("count", float(cap), 1.0)]

    def release(self, r: Release) -> dict[str, Any]:
        groups = r.plan.groups
        if groups is not None and groups.keys is None and self.of == "senders":
            hw = r.half_width("selection")
            selected = [
                (k, {"value": r.selection[k], "interval": interval(r.selection[k], hw)})
                for k in r.keys or []
            ]
            return r.pack(selected)
        raw = r.keyed(r.engine.counts(r.cap), 0)
        vals = r.noisy("count", [v for _, v in raw])
        hw = r.half_width("count")
        rows = [
            (k, {"value": float(v), "interval": interval(float(v), hw)})
            for (k, _), v in zip(raw, vals, strict=True)
        ]
        return r.pack(rows)
