"""The registry of query kinds: the ``kind`` of a ``POST /v1/queries`` request names one.

Each kind is one class in its own module (see ``kinds/base.py`` for what a kind is). The order
here is the order the request schema lists the kinds and their fields in.
"""

from __future__ import annotations

from service.queries.kinds.base import KindField, QueryKind
from service.queries.kinds.binned import Histogram, Quantiles
from service.queries.kinds.count import Count
from service.queries.kinds.embedding import MeanEmbedding, Topics
from service.queries.kinds.sentiment import Sentiment
from service.queries.kinds.sum_mean import Mean, Sum
from service.queries.kinds.top_terms import TopTerms
from service.queries.kinds.variance import Variance

__all__ = ["KINDS", "QueryKind", "kind_fields", "kind_named"]

KINDS: dict[str, type[QueryKind]] = {
    cls.name: cls
    for cls in (
        Count,
        Sum,
        Mean,
        Variance,
        Quantiles,
        Histogram,
        TopTerms,
        Sentiment,
        MeanEmbedding,
        Topics,
    )
}


def kind_named(name: str) -> type[QueryKind]:
    """The class of the kind called ``name``; KeyError for an unknown name."""
    return KINDS[name]


def kind_fields() -> dict[str, KindField]:
    """Every kind's request fields, each once, in registry order (a field several kinds share
    is the same object in each)."""
    out: dict[str, KindField] = {}
    for cls in KINDS.values():
        for name, kf in cls.request_fields.items():
            assert out.setdefault(name, kf) is kf, f"two definitions of the field {name}"
    return out
