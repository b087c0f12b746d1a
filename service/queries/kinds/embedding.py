"""Aggregate-embedding kinds: ``mean_embedding`` (a DP mean embedding) and ``topics`` (DP
k-means topic centres).

Per-message embeddings (``models/corpus_embeddings.py``) are an internal feature: they are read
here, after the query is charged, and only noisy sums of them leave (through ``run_charged``).

Contribution bounding (the privacy unit is the sender; neighbours differ in all messages of one
sender). The selection of messages is exactly that of the other kinds (the scan engine's: the
filters, then at most ``m`` messages per sender by random rank), read with the parquet row
number so that it indexes the cached vectors (``corpus.engine.EmbeddingEngine``). Each
selected message's vector ``x`` is (``corpus.engine.quantise``)

1. clipped to the unit ball (``x / max(1, ||x||_2)``; non-finite coordinates become 0), then
2. put on the grid of ``u = 2**-12`` by truncation toward zero, as integers ``q = trunc(x/u)``;
   truncation only shrinks magnitudes, and the integer check ``sum(q**2) <= (1/u)**2`` is
   enforced exactly, so ``||q||_2 <= 1/u``, and hence ``||q||_1 <= sqrt(d) ||q||_2 <=
   ceil(sqrt(d)/u)``.

Sums of ``q`` are exact int64 (no floating-point sensitivity surprises) and are noised as
integer statistics, so the mechanisms add no rounding term.

Sensitivities, in grid units (one sender adds or removes at most ``m`` vectors):

- ``mean_embedding``: the vector sum ``S = sum q`` changes by at most ``m/u`` in L2 (Gaussian)
  and ``m * ceil(sqrt(d)/u)`` in L1 (Laplace); the count by ``m``. The mean is ``S / count``,
  post-processing.
- ``topics`` (DP Lloyd / spherical k-means, Su et al. 2016 "Differentially private k-means
  clustering"): in iteration t every selected message is assigned to the nearest current
  centre, and the per-cluster sums ``(S_1, ..., S_k)`` are released as one k*d vector. The
  centres are the previous iteration's noisy output (or public starting points), so this is
  adaptive composition of T releases, each for fixed centres. One sender's messages land in
  various clusters, but each message in exactly one, so the change of the whole k*d vector is
  ``sqrt(sum_j ||D_j||^2) <= sum_j ||D_j|| <= sum over its messages ||q|| <= m/u`` in L2 and
  ``<= m * ceil(sqrt(d)/u)`` in L1: no factor k. The final per-cluster counts change by ``m``
  in L1 (and so at most ``m`` in L2).

Cost: Laplace parts compose by basic composition (the shares of epsilon sum to at most the
requested epsilon); Gaussian parts' rho add up (zCDP composition) and the event charged is the
sum of the parts' rho. ``topics`` releases the sums T times and the counts once, at the end:
a spherical k-means update needs only the direction of each noisy sum, so counts per
iteration would spend budget on nothing the answer uses. The encoder is a fixed function here;
if it was trained on the corpus, its own (separately accounted) DP release composes with this.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import duckdb
import numpy as np
from marshmallow import validate

from corpus.duckdb_embeddings import DuckDBEmbeddingEngine
from corpus.engine import VECTOR_GRID_BITS, VECTOR_UNITS, EmbeddingEngine, Scan
from corpus.engine import quantise as quantise  # re-exported: the bounding these kinds rest on
from mechanisms.estimators import vector_ratio_half_width
from models import corpus_embeddings
from models.vocabulary import load_vocabulary
from service.errors import APIError
from service.queries.kinds.base import KindField, PlanFacts, QueryKind, Release, record_defaults
from service.queries.parts import Part, noisy
from service.schemas.fields import StrictInteger

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2 and the versions trained from it
EMBEDDING_GRID_BITS = VECTOR_GRID_BITS  # coordinates are summed in integer units of 2**-12
UNITS_PER_ONE = VECTOR_UNITS  # 1/u
#: ceil(sqrt(d)/u): the L1 bound of one quantised unit vector, in grid units.
L1_PER_VECTOR = math.isqrt(EMBEDDING_DIM * UNITS_PER_ONE**2 - 1) + 1
DEFAULT_CLUSTERS = 8
DEFAULT_ITERATIONS = 5
MEAN_COUNT_SHARE = 0.2  # the mean's direction needs the sum far more than the count
TOPIC_COUNT_SHARE = 0.1
SHARE_MARGIN = 1.0 - 1e-9  # shares sum to a hair under 1, whatever the float rounding
MEAN_TERMS = 10
TOPIC_TERMS = 8
MEAN_DECIMALS = 5
#: A centre moves only when its noisy sum's norm exceeds this many times the noise's
#: expected norm; otherwise it keeps its previous position (post-processing).
RELIABLE_NORM = 2.0
INIT_SAMPLE = 4096
CLIPPING_NOTE = (
    "Each message's embedding is clipped to unit norm and truncated to multiples of "
    f"2**-{EMBEDDING_GRID_BITS} per coordinate; nearest terms come from a fixed public word "
    "list (the MiniLM tokenizer's whole words), never from the corpus."
)


def vector_sensitivity(mechanism: str, max_messages: int) -> float:
    """L2 (Gaussian) or L1 (Laplace) sensitivity of a sum of ``max_messages`` quantised unit
    vectors, in grid units (see the module docstring)."""
    if mechanism == "gaussian":
        return float(max_messages * UNITS_PER_ONE)
    return float(max_messages * L1_PER_VECTOR)


class _EmbeddingKind(QueryKind):
    takes_group_by = False
    group_by_checked_after = "iterations"
    reads_embeddings = True


@dataclass(frozen=True)
class MeanEmbedding(_EmbeddingKind):
    name = "mean_embedding"

    def parts(self, plan: PlanFacts, cap: int) -> list[Part]:
        vec = vector_sensitivity(plan.mechanism, cap)
        return [
            Part("count", float(cap), MEAN_COUNT_SHARE * SHARE_MARGIN),
            Part("sum", vec, (1.0 - MEAN_COUNT_SHARE) * SHARE_MARGIN),
        ]

    def release(self, r: Release) -> dict[str, Any]:
        r.bias.append(CLIPPING_NOTE)
        return _mean(r, cast(EmbeddingEngine, r.engine))


@dataclass(frozen=True)
class Topics(_EmbeddingKind):
    name = "topics"
    request_fields = {
        "clusters": KindField(
            StrictInteger(validate=validate.Range(min=2, max=20)), "clusters goes with topics"
        ),
        "iterations": KindField(
            StrictInteger(validate=validate.Range(min=1, max=20)), "iterations goes with topics"
        ),
    }

    clusters: int = DEFAULT_CLUSTERS
    iterations: int = DEFAULT_ITERATIONS

    @classmethod
    def from_request(cls, req: dict[str, Any]) -> Topics:
        return cls(
            clusters=req.get("clusters", DEFAULT_CLUSTERS),
            iterations=req.get("iterations", DEFAULT_ITERATIONS),
        )

    def record(self) -> dict[str, Any]:
        return {**record_defaults(), "clusters": self.clusters, "iterations": self.iterations}

    def parts(self, plan: PlanFacts, cap: int) -> list[Part]:
        vec = vector_sensitivity(plan.mechanism, cap)
        per_iteration = (1.0 - TOPIC_COUNT_SHARE) / self.iterations * SHARE_MARGIN
        return [
            Part("counts", float(cap), TOPIC_COUNT_SHARE * SHARE_MARGIN),
            *(Part(f"sums_{t}", vec, per_iteration) for t in range(1, self.iterations + 1)),
        ]

    def release(self, r: Release) -> dict[str, Any]:
        r.bias.append(CLIPPING_NOTE)
        return _topics(self, r, cast(EmbeddingEngine, r.engine))


# -- readiness (before any charge) ----------------------------------------------------------
@dataclass
class Prepared:
    """What an aggregate-embedding query reads once charged."""

    model_id: str
    parquet: Path
    vectors: np.ndarray
    vocabulary: Any

    def query(self, cursor: duckdb.DuckDBPyConnection, plan: Scan) -> DuckDBEmbeddingEngine:
        return DuckDBEmbeddingEngine(
            cursor, plan, parquet=self.parquet, vectors=self.vectors, vocabulary=self.vocabulary
        )


def prepare(
    data_dir: str | os.PathLike[str], snapshot: Any, cache: dict[str, Any] | None = None
) -> Prepared:
    """The active model's cached embeddings of ``snapshot`` and its public vocabulary.

    Raises APIError 409 ``embeddings_not_ready`` when either is missing: decided from the
    presence of operator-built files only, before anything is charged or read.
    """
    model = corpus_embeddings.active_model(data_dir)
    vectors = corpus_embeddings.load(data_dir, snapshot.id, model.id)
    vocab = (cache or {}).get(model.id) or load_vocabulary(data_dir, model.id)
    if vocab is not None and cache is not None:
        cache[model.id] = vocab
    if vectors is None or vocab is None:
        missing = [n for n, v in (("corpus", vectors), ("vocabulary", vocab)) if v is None]
        raise APIError(
            409,
            "embeddings_not_ready",
            "The message embeddings of the live snapshot for the active model are not built "
            "yet; an operator runs `privtext embed-corpus`. Nothing was charged.",
            {"model_id": model.id, "snapshot_id": snapshot.id, "missing": missing},
        )
    if vectors.shape[1] != EMBEDDING_DIM or vocab.dim != EMBEDDING_DIM:
        raise APIError(
            409,
            "embeddings_not_ready",
            f"The cached embeddings do not have {EMBEDDING_DIM} dimensions.",
            {"model_id": model.id, "snapshot_id": snapshot.id},
        )
    return Prepared(model.id, snapshot.messages_path, vectors, vocab)


# -- answers (inside run_charged's compute step) --------------------------------------------
class _Priced(Protocol):
    parts: dict[str, Part]


def answer(
    plan: Any, priced: _Priced, q: EmbeddingEngine, m: int, level: float, bias: list[str]
) -> dict[str, Any]:
    """The answer of an embedding ``plan`` priced as ``priced``, read from ``q`` at cap ``m``
    (its kind's ``release``, for callers without a ``Release``)."""
    r = Release(plan, priced.parts, q, m, None, {}, None, bias, level)
    return plan.spec.release(r)  # type: ignore[no-any-return]


def release_vector(part: Part, sums_q: np.ndarray) -> np.ndarray:
    """Noisy integer vector sum(s), same shape, as float64 grid units."""
    return noisy(part, sums_q).reshape(np.shape(sums_q))


def _terms(vocab: Any, vector: np.ndarray, k: int) -> list[dict[str, Any]]:
    return [{"term": w, "cosine": round(c, 4)} for w, c in vocab.nearest(vector, k)]


def _mean(r: Release, q: EmbeddingEngine) -> dict[str, Any]:
    n, total = q.bounded_sum(r.cap)
    ps = r.parts["sum"]
    c = float(r.noisy("count", [n])[0])
    s = release_vector(ps, total) / UNITS_PER_ONE  # noisy sum, real units
    hc = r.half_width("count")
    hs = r.half_width("sum") / UNITS_PER_ONE
    mean = s / c if c >= 1 else None
    coord_hw = None
    norm = norm_debiased = None
    if mean is not None:
        coord_hw = vector_ratio_half_width(s, hs, c, hc)
        norm = float(np.linalg.norm(mean))
        noise_var = EMBEDDING_DIM * float(ps.mechanism.variance) / UNITS_PER_ONE**2 / c**2
        norm_debiased = math.sqrt(max(0.0, norm * norm - noise_var))
    r.bias.append(
        "The mean is a noisy vector sum over a noisy count. Noise inflates its norm "
        "(norm_debiased subtracts the noise's expected squared norm); coordinate intervals are "
        "a conservative box over the sum and count, per coordinate, not simultaneous "
        "(approximate)."
    )
    return {
        "result": {
            "count": {"value": c, "interval": [c - hc, c + hc]},
            "dimensions": EMBEDDING_DIM,
            "mean": None if mean is None else np.round(mean, MEAN_DECIMALS).tolist(),
            "norm": norm,
            "norm_debiased": norm_debiased,
            "coordinate_half_width": coord_hw,
            "nearest_terms": _terms(q.vocabulary, s, MEAN_TERMS),
            "model_id": r.plan.model_id,
        }
    }


def initial_centres(vocab: Any, k: int, rng: np.random.Generator) -> np.ndarray:
    """k unit vectors chosen from the public vocabulary's embeddings alone (k-means++ seeding
    on a random sample of words); random directions if the vocabulary has fewer than k
    words. Data-independent: nothing from the corpus is read."""
    words = np.asarray(vocab.vectors, dtype=np.float64)
    if len(words) > INIT_SAMPLE:
        words = words[rng.choice(len(words), INIT_SAMPLE, replace=False)]
    chosen: list[np.ndarray] = []
    if len(words) >= k:
        chosen.append(words[rng.integers(len(words))])
        for _ in range(k - 1):
            d2 = np.maximum(0.0, 1.0 - np.max(words @ np.stack(chosen).T, axis=1)) ** 2
            p = d2 / d2.sum() if d2.sum() > 0 else None
            chosen.append(words[rng.choice(len(words), p=p)])
    while len(chosen) < k:
        chosen.append(rng.standard_normal(EMBEDDING_DIM))
    out = np.stack(chosen)
    return out / np.linalg.norm(out, axis=1, keepdims=True)  # type: ignore[no-any-return]


def _topics(kind: Topics, r: Release, q: EmbeddingEngine) -> dict[str, Any]:
    k, iterations = kind.clusters, kind.iterations
    # public randomness for public starting points (not noise: no CSPRNG needed)
    centres = initial_centres(q.vocabulary, k, np.random.default_rng())
    pos = q.positions(r.cap)
    kept = np.zeros(k, dtype=np.int64)
    for t in range(1, iterations + 1):
        part = r.parts[f"sums_{t}"]
        _, sums = q.cluster_sums(pos, centres)
        released = release_vector(part, sums)
        noise_norm = math.sqrt(EMBEDDING_DIM * float(part.mechanism.variance))
        norms = np.linalg.norm(released, axis=1)
        move = norms > RELIABLE_NORM * noise_norm
        centres[move] = released[move] / norms[move, None]
        kept += ~move
    counts, _ = q.cluster_sums(pos, centres)
    noisy_counts = r.noisy("counts", counts)
    hc = r.half_width("counts")
    topics: list[dict[str, Any]] = [
        {
            "count": {"value": float(v), "interval": [float(v) - hc, float(v) + hc]},
            "terms": _terms(q.vocabulary, centres[j], TOPIC_TERMS),
            "updates_within_noise": int(kept[j]),
        }
        for j, v in enumerate(noisy_counts)
    ]
    topics.sort(key=lambda t: -t["count"]["value"])
    r.bias.append(
        "Noise and clamping make small clusters unreliable: a cluster's centre moves only when "
        f"its noisy sum stands {RELIABLE_NORM:g} times above the noise's expected norm "
        "(updates_within_noise counts the iterations where it did not), so a small cluster "
        "may still sit near its public starting word and its terms say little about the data. "
        "Centres start at public vocabulary embeddings; counts are of the last assignment."
    )
    return {
        "result": {
            "clusters": k,
            "iterations": iterations,
            "topics": topics,
            "model_id": r.plan.model_id,
        }
    }
