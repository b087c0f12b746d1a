"""Aggregate-embedding queries (mean_embedding, topics): charged, bounded, noised as priced.

The encoder here is a deterministic stand-in (a message's vector is the normalised sum of
per-word random unit vectors), so the tests are fast and need no model; the cache, the
selection, the bounding and the noise are the service's own code.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import func, select

from corpus.ingest import ingest_file
from corpus.store import SnapshotStore
from mechanisms.gaussian import GaussianMechanism
from mechanisms.laplace import LaplaceMechanism
from mechanisms.ledger import Budget
from models import corpus_embeddings
from models.corpus_embeddings import build_corpus_embeddings, load
from models.registry import ModelRegistry
from models.vocabulary import build_vocabulary, load_vocabulary, public_words
from service.auth import create_principal, issue_key
from service.charging import get_ledger
from service.queries.kinds import embedding as emb
from service.queries.kinds.embedding import EMBEDDING_DIM
from service.queries.plan import build_plan
from service.queries.pricing import price
from service.store.ledger_tables import audit_log
from tests.factories import WORDS, make_messages, write_jsonl

D = EMBEDDING_DIM
U = emb.UNITS_PER_ONE


class FakeEncoder:
    """Deterministic: each word a fixed random unit vector, a text their normalised sum."""

    def __init__(self) -> None:
        self.calls = 0

    @staticmethod
    def word(w: str) -> np.ndarray:
        v = np.random.default_rng(zlib.crc32(w.encode())).standard_normal(D)
        return v / np.linalg.norm(v)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), D), dtype=np.float32)
        for i, t in enumerate(texts):
            v = sum((self.word(w) for w in t.lower().split()), np.zeros(D))
            n = np.linalg.norm(v)
            out[i] = v / n if n > 0 else v
        return out


#: A public word list for the tests: the corpus' ordinary words plus others, never its secret.
VOCAB = [*WORDS, "river", "mountain", "science", "music", "garden", "ocean"]


def build_embeddings(data_dir: Path, words: list[str] | None = None) -> str:
    snapshot = SnapshotStore(data_dir).live()
    assert snapshot is not None
    model = ModelRegistry(data_dir).active()
    enc = FakeEncoder()
    build_vocabulary(data_dir, model, encoder=enc, words=words or VOCAB)
    build_corpus_embeddings(data_dir, snapshot.id, model, encoder=enc, chunk=37)
    return snapshot.id


def _fund(app: Flask, epsilon: float = 1000.0, delta: float = 1e-3) -> tuple[str, str]:
    engine = app.extensions["privtext"].engine
    pid = create_principal(engine, name="e", role="analyst")
    with app.app_context():
        get_ledger().set_budget(pid, Budget(epsilon=epsilon, delta=delta))
    return pid, issue_key(engine, pid)


def _remaining(app: Flask, pid: str) -> float:
    with app.app_context():
        return get_ledger().remaining(pid, tight=False).remaining_epsilon  # type: ignore[no-any-return]


def _audit_rows(app: Flask) -> int:
    with app.extensions["privtext"].engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_log)).scalar() or 0)


def _post(app: Flask, token: str, body: dict[str, Any]) -> Any:
    return app.test_client().post(
        "/v1/queries", json=body, headers={"Authorization": f"Bearer {token}"}
    )


@pytest.fixture
def emb_app(app: Flask, data_dir: Path) -> Flask:
    build_embeddings(data_dir)
    return app


# -- the cache ---------------------------------------------------------------------------
def test_cache_is_row_aligned_float16_and_atomic(app: Flask, data_dir: Path) -> None:
    snap = build_embeddings(data_dir)
    vecs = load(data_dir, snap, "base")
    assert vecs is not None and vecs.dtype == np.float16 and vecs.shape[1] == D
    import duckdb

    path = corpus_embeddings.messages_path(data_dir, snap)
    texts = [r[0] for r in duckdb.connect().sql(
        f"SELECT text FROM read_parquet('{path}', file_row_number=true) ORDER BY file_row_number"
    ).fetchall()]
    assert vecs.shape[0] == len(texts)
    expected = FakeEncoder().encode(texts)
    np.testing.assert_allclose(np.asarray(vecs, dtype=np.float32), expected, atol=2e-3)
    assert not any((data_dir / "embeddings" / "tmp").iterdir())  # nothing left half-written
    # a second build is a no-op
    enc = FakeEncoder()
    build_corpus_embeddings(data_dir, snap, ModelRegistry(data_dir).active(), encoder=enc)
    assert enc.calls == 0


def test_failed_build_leaves_nothing(app: Flask, data_dir: Path) -> None:
    class Broken(FakeEncoder):
        def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
            if self.calls:
                raise RuntimeError("boom")
            return super().encode(texts, batch_size)

    snap = SnapshotStore(data_dir).live()
    assert snap is not None
    with pytest.raises(RuntimeError):
        build_corpus_embeddings(
            data_dir, snap.id, ModelRegistry(data_dir).active(), encoder=Broken(), chunk=10
        )
    assert load(data_dir, snap.id, "base") is None
    assert not any((data_dir / "embeddings" / "tmp").iterdir())


def test_public_words_are_the_tokenizer_whole_words() -> None:
    words = public_words()
    assert len(words) > 10_000
    assert all(w.isalpha() and w.isascii() and len(w) >= 3 for w in words)
    assert "the" not in words and "[CLS]" not in words and not any("#" in w for w in words)


# -- HTTP: answers, charges, 409, validation -----------------------------------------------
BODIES = [
    {"kind": "mean_embedding"},
    {"kind": "mean_embedding", "privacy": {"mechanism": "gaussian", "epsilon": 10, "delta": 1e-6},
     "filters": {"keywords": {"terms": ["pizza"]}}, "max_messages_per_sender": 8},
    {"kind": "mean_embedding", "max_messages_per_sender": "auto"},
    {"kind": "topics"},
    {"kind": "topics", "clusters": 3, "iterations": 2,
     "privacy": {"mechanism": "gaussian", "epsilon": 1, "delta": 1e-6}},
]


@pytest.mark.parametrize("body", BODIES, ids=lambda b: json.dumps(b)[:60])
def test_both_kinds_answer_through_http_and_are_charged(
    emb_app: Flask, body: dict[str, Any]
) -> None:
    pid, token = _fund(emb_app)
    before = _remaining(emb_app, pid)
    resp = _post(emb_app, token, body)
    assert resp.status_code == 200, resp.get_json()
    out = resp.get_json()
    assert out["kind"] == body["kind"] and out["replay"] is False
    assert out["cost"]["epsilon"] > 0
    assert _remaining(emb_app, pid) < before
    res = out["result"]
    assert res["model_id"] == "base"
    if body["kind"] == "mean_embedding":
        # a noisy count below 1 (likely at cap 100 on 160 messages) gives no mean
        assert res["mean"] is None or len(res["mean"]) == D
        assert len(res["nearest_terms"]) == emb.MEAN_TERMS
        assert set(out["mechanism"]["noise"]) == {"count", "sum"}
        lo, hi = res["count"]["interval"]
        assert lo < res["count"]["value"] < hi
    else:
        k = body.get("clusters", 8)
        assert len(res["topics"]) == k
        assert all(len(t["terms"]) == emb.TOPIC_TERMS for t in res["topics"])
        counts = [t["count"]["value"] for t in res["topics"]]
        assert counts == sorted(counts, reverse=True)
        assert any("small clusters unreliable" in b for b in out["bias"])
    assert "zzsecret" not in resp.get_data(as_text=True)


def test_terms_come_only_from_the_public_vocabulary(app: Flask, data_dir: Path) -> None:
    # The corpus says 'pizza' often; the vocabulary lacks it: it must never be named.
    build_embeddings(data_dir, words=[w for w in VOCAB if w != "pizza"])
    _, token = _fund(app)
    allowed = set(VOCAB) - {"pizza"}
    for body in ({"kind": "mean_embedding", "privacy": {"epsilon": 10}},
                 {"kind": "topics", "clusters": 4, "privacy": {"epsilon": 10}}):
        out = _post(app, token, body).get_json()
        res = out["result"]
        named = [t["term"] for t in res.get("nearest_terms", [])]
        named += [t["term"] for topic in res.get("topics", []) for t in topic["terms"]]
        assert named and set(named) <= allowed


def test_dry_run_and_replay_are_free(emb_app: Flask) -> None:
    pid, token = _fund(emb_app)
    start = _remaining(emb_app, pid)
    dry = _post(emb_app, token, {"kind": "topics", "dry_run": True}).get_json()
    assert dry["dry_run"] is True and "result" not in dry
    assert {"counts", "sums_1", "sums_5"} <= set(dry["predicted"]["parts"])
    assert _remaining(emb_app, pid) == pytest.approx(start)
    first = _post(emb_app, token, {"kind": "mean_embedding"}).get_json()
    spent = _remaining(emb_app, pid)
    again = _post(emb_app, token, {"kind": "mean_embedding"}).get_json()
    assert again["replay"] is True and again["result"] == first["result"]
    assert _remaining(emb_app, pid) == pytest.approx(spent)


@pytest.mark.parametrize("kind", ["mean_embedding", "topics"])
def test_missing_embeddings_is_409_and_free(app: Flask, data_dir: Path, kind: str) -> None:
    pid, token = _fund(app)
    before, rows = _remaining(app, pid), _audit_rows(app)
    resp = _post(app, token, {"kind": kind})
    assert resp.status_code == 409
    err = resp.get_json()
    assert err["code"] == "embeddings_not_ready" and err["errors"]["missing"] == [
        "corpus", "vocabulary"]
    # the corpus built but not the vocabulary: still 409
    snap = SnapshotStore(data_dir).live()
    assert snap is not None
    build_corpus_embeddings(data_dir, snap.id, ModelRegistry(data_dir).active(),
                            encoder=FakeEncoder())
    resp = _post(app, token, {"kind": kind})
    assert resp.status_code == 409 and resp.get_json()["errors"]["missing"] == ["vocabulary"]
    assert _remaining(app, pid) == before and _audit_rows(app) == rows


BAD = [
    ({"kind": "topics", "clusters": 1}, "clusters"),
    ({"kind": "topics", "clusters": 21}, "clusters"),
    ({"kind": "topics", "iterations": 0}, "iterations"),
    ({"kind": "mean_embedding", "clusters": 4}, "clusters"),
    ({"kind": "count", "iterations": 3}, "iterations"),
    ({"kind": "mean_embedding", "feature": "chars"}, "feature"),
    ({"kind": "topics", "group_by": {"time": "weekday"}}, "group_by"),
    ({"kind": "mean_embedding", "privacy": {"accuracy": {"half_width": 1}}}, "privacy"),
    ({"kind": "topics", "k": 5}, "k"),
]


@pytest.mark.parametrize(("body", "field"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_validation_errors_are_422_and_free(
    emb_app: Flask, body: dict[str, Any], field: str
) -> None:
    pid, token = _fund(emb_app)
    before, rows = _remaining(emb_app, pid), _audit_rows(emb_app)
    resp = _post(emb_app, token, body)
    assert resp.status_code == 422, resp.get_json()
    assert field in json.dumps(resp.get_json()["errors"])
    assert _remaining(emb_app, pid) == before and _audit_rows(emb_app) == rows


# -- sensitivity: the bounded aggregate before noise ------------------------------------------
def _snapshot_query(tmp: Path, rows: list[dict[str, str]], body: dict[str, Any]) -> Any:
    data = tmp / "d"
    tmp.mkdir()
    ingest_file(write_jsonl(tmp / "c.jsonl", rows), data, workers=1)
    build_embeddings(data)
    store = SnapshotStore(data)
    snap = store.live()
    assert snap is not None
    plan = build_plan(body, metadata_columns=list(snap.metadata_columns))
    prepared = emb.prepare(data, snap)
    _, cur = store.cursor(snap.id)
    return prepared.query(cur, plan)


@pytest.mark.parametrize("filters", [{}, {"keywords": {"terms": ["pizza", "zzsecretphrase"]}}])
def test_heavy_sender_moves_the_bounded_sums_by_at_most_the_cap(
    tmp_path: Path, filters: dict[str, Any]
) -> None:
    cap = 5
    light = make_messages(n_senders=40, per_sender=cap, seed=5)  # every light message counts
    for i, r in enumerate(light):
        r["text"] = f"pizza {WORDS[i % len(WORDS)]}"
    heavy = [{"sender": "heavy", "conversation": "ch", "timestamp": "2024-01-05T10:00:00+00:00",
              "text": "zzsecretphrase pizza", "channel": "web"} for _ in range(3000)]
    body = {"kind": "mean_embedding", "max_messages_per_sender": cap, "filters": filters}
    without = _snapshot_query(tmp_path / "a", light, body)
    with_heavy = _snapshot_query(tmp_path / "b", light + heavy, body)

    n0, s0 = without.bounded_sum(cap)
    n1, s1 = with_heavy.bounded_sum(cap)
    assert n1 - n0 == cap
    shift = np.linalg.norm((s1 - s0).astype(np.float64)) / U
    # at most the cap, and nearly the cap here (identical messages): the bound is tight
    assert cap * (1 - 2 * math.sqrt(D) / U) <= shift <= cap
    assert np.abs(s1 - s0).sum() <= cap * emb.L1_PER_VECTOR

    centres = emb.initial_centres(without.vocabulary, 4, np.random.default_rng(0))
    c0, k0 = without.cluster_sums(without.positions(cap), centres)
    c1, k1 = with_heavy.cluster_sums(with_heavy.positions(cap), centres)
    assert np.abs(c1 - c0).sum() == cap
    assert np.linalg.norm((k1 - k0).astype(np.float64)) / U <= cap


def test_quantised_vectors_never_exceed_unit_norm() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, D)) * rng.uniform(0.1, 3.0, (2000, 1))
    x[:5] = 1 / math.sqrt(D)  # exactly unit norm, on the grid's edge
    x[5, 0] = np.nan
    q = emb.quantise(x)
    assert ((q * q).sum(axis=1) <= U * U).all()
    assert (np.abs(q).sum(axis=1) <= emb.L1_PER_VECTOR).all()
    assert q.dtype == np.int64


# -- noise: the scale matches the mechanism --------------------------------------------------
class StubQuery:
    """Stands in for EmbeddingQuery: a fixed bounded sum (zero), a fixed count."""

    def __init__(self, n: int, plan: Any) -> None:
        self.n = n
        self.plan = plan
        self.vocabulary = load_vocabulary_stub()

    def bounded_sum(self, m: int) -> tuple[int, np.ndarray]:
        return self.n, np.zeros(D, dtype=np.int64)


def load_vocabulary_stub() -> Any:
    from models.vocabulary import Vocabulary

    return Vocabulary(VOCAB, FakeEncoder().encode(VOCAB))


@pytest.mark.seconds
@pytest.mark.parametrize("mechanism", ["gaussian", "laplace"])
def test_mean_embedding_noise_matches_the_mechanism(mechanism: str) -> None:
    """The released sum's noise has the priced scale: the empirical standard deviation over
    40 answers x 384 coordinates (15,360 draws, seeded) is within 4% of the mechanism's
    (the estimate's own relative error is about 0.6% Gaussian, 1.2% Laplace)."""
    cap, eps = 3, 1.0
    privacy: dict[str, Any] = {"mechanism": mechanism, "epsilon": eps}
    if mechanism == "gaussian":
        privacy["delta"] = 1e-6
    plan = build_plan({"kind": "mean_embedding", "privacy": privacy,
                       "max_messages_per_sender": cap}, metadata_columns=[])
    priced = price(plan, max_messages=cap)
    part = priced.parts["sum"]
    rng = np.random.default_rng(20261125)
    if mechanism == "gaussian":
        rho = part.mechanism.rho
        # sigma = L2 sensitivity / sqrt(2 rho_sum), L2 sensitivity = cap / u
        assert part.sensitivity == cap * U
        assert rho == pytest.approx(priced.parts["count"].mechanism.rho * 4, rel=1e-6)
        assert part.mechanism.sigma == pytest.approx(cap * U / math.sqrt(2 * rho), rel=1e-6)
        part.mechanism = GaussianMechanism(sensitivity=part.sensitivity, rho=rho, rng=rng)
        expected_sd = part.mechanism.sigma
    else:
        # scale = L1 sensitivity / epsilon_sum, L1 sensitivity = cap * ceil(sqrt(d) / u)
        assert part.sensitivity == cap * math.ceil(math.sqrt(D) * U)
        assert part.mechanism.scale == pytest.approx(part.sensitivity / (0.8 * eps), rel=1e-6)
        part.mechanism = LaplaceMechanism(
            sensitivity=part.sensitivity, scale=part.mechanism.scale, rng=rng)
        expected_sd = math.sqrt(2) * part.mechanism.scale
    count = priced.parts["count"]
    count.mechanism = type(count.mechanism)(
        sensitivity=count.sensitivity, **(
            {"rho": count.mechanism.rho} if mechanism == "gaussian"
            else {"scale": count.mechanism.scale}), rng=rng)
    draws = []
    for _ in range(40):
        res = emb.answer(plan, priced, StubQuery(1000, plan), cap, 0.95, [])["result"]  # type: ignore[arg-type]
        draws.append(np.asarray(res["mean"]) * res["count"]["value"] * U)
    sd = float(np.std(np.concatenate(draws)))
    assert sd == pytest.approx(expected_sd, rel=0.04)


def test_answer_reports_the_mechanism_it_used(emb_app: Flask) -> None:
    _, token = _fund(emb_app)
    body = {"kind": "mean_embedding", "max_messages_per_sender": 4,
            "privacy": {"mechanism": "gaussian", "epsilon": 1.0, "delta": 1e-6}}
    out = _post(emb_app, token, body).get_json()
    noise = out["mechanism"]["noise"]["sum"]
    assert noise["sensitivity"] == 4 * U
    # the whole query's rho is the sum of its parts': sigma from the sum's share (80%)
    rho_total = 1.0 / (2 * out["cost"]["event"]["noise_multiplier"] ** 2)
    assert noise["sigma"] == pytest.approx(4 * U / math.sqrt(2 * 0.8 * rho_total), rel=1e-4)


# -- CLI --------------------------------------------------------------------------------------
def test_cli_embed_corpus(app: Flask, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.cli import main

    monkeypatch.setattr(corpus_embeddings, "default_encoder", lambda *a, **k: FakeEncoder())
    monkeypatch.setattr("models.vocabulary.public_words", lambda *a, **k: VOCAB)
    res = CliRunner().invoke(main, ["--data-dir", str(data_dir), "embed-corpus"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "messages/s" in res.output
    snap = SnapshotStore(data_dir).live()
    assert snap is not None and load(data_dir, snap.id, "base") is not None
    assert load_vocabulary(data_dir, "base") is not None
    again = CliRunner().invoke(main, ["--data-dir", str(data_dir), "embed-corpus"])
    assert again.exit_code == 0 and "nothing to do" in again.output
