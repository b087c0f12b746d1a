"""Private training: sampling and bounding are per sender, both gradient engines agree, and a
run publishes a loadable model or nothing at all (the plan, which needs no torch:
``test_training_plan.py``)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from corpus.ingest import ingest_file
from mechanisms.accountant import Accountant
from mechanisms.errors import InvalidParameterError
from models.data import count_senders, load_sender_examples
from models.mlm import gather_masked
from models.registry import BASE_ID, ModelRegistry, base_model_path
from models.trainer import Trainer
from models.training import (
    TrainingCancelled,
    TrainingConfig,
    TrainingRun,
    default_delta,
    plan_training,
    train,
)
from tests.factories import make_messages, write_jsonl

pytestmark = pytest.mark.torch  # trains


def test_examples_are_one_bounded_sample_per_sender(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rows = make_messages(n_senders=12, per_sender=3, heavy=40)  # user0 has 43 messages
    ingest_file(write_jsonl(tmp_path / "c.jsonl", rows), data, workers=1)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_model_path()))
    ex = load_sender_examples(data, tok, max_messages_per_sender=5, max_seq_len=8)
    assert len(ex) == count_senders(data) == 12
    sizes = sorted(len(e) for e in ex.examples)
    assert sizes == [3] * 11 + [5]  # the heavy sender is cut to 5 messages
    assert all(1 < len(seq) <= 8 for e in ex.examples for seq in e)


def test_poisson_batches_never_repeat_a_sender(tiny_config: TrainingConfig) -> None:
    # private=False only so that the sampler is seeded here; the sampling code is the same
    config = TrainingConfig(
        **{
            **tiny_config.to_dict(),
            "steps": 400,
            "expected_senders_per_batch": 10,
            "population_size": 100,
            "private": False,
        }
    )
    trainer = Trainer(config, base_model_path(), seed=5, event=None)
    sizes = []
    for batch in trainer.batches(100):
        batch = list(map(int, batch))
        assert len(batch) == len(set(batch)) and all(0 <= i < 100 for i in batch)
        sizes.append(len(batch))
    # Poisson sampling: variable sizes, mean q*n = 10 (sd of the mean 0.15: 5 sd tolerance)
    assert len(set(sizes)) > 5
    assert abs(sum(sizes) / len(sizes) - 10) < 0.75


def test_the_sampling_rate_is_the_declared_one_whatever_the_corpus_holds(
    tiny_config: TrainingConfig,
) -> None:
    """q = expected batch / declared population size, for a private run too: each of the
    senders actually there is sampled with that q, so the accounting never needs their
    number (and a corpus larger than declared gives larger batches, not a higher q)."""
    config = TrainingConfig(
        **{**tiny_config.to_dict(), "steps": 200, "expected_senders_per_batch": 10,
           "population_size": 100}
    )
    trainer = Trainer(config, base_model_path(), seed=5, event=plan_training(config))
    for n in (30, 1000):
        assert trainer.sampling_rate(n) == 0.1
        sizes = [len(b) for b in trainer.batches(n)]
        # mean q*n: 3 (sd of the mean 0.12) and 100 (sd of the mean 0.67); 5 sd tolerance
        assert abs(sum(sizes) / len(sizes) - 0.1 * n) < 5 * math.sqrt(0.1 * 0.9 * n / 200)
    undeclared = TrainingConfig(**{**config.to_dict(), "population_size": None})
    with pytest.raises(InvalidParameterError, match="population_size is required"):
        Trainer(undeclared, base_model_path(), seed=5, event=None).batches(100)


def test_private_sampling_and_noise_ignore_the_seed(tiny_config: TrainingConfig) -> None:
    """A seed given through the API must not make a private training's batches or noise
    predictable; it still makes a non-private baseline reproducible."""
    config = TrainingConfig(
        **{
            **tiny_config.to_dict(),
            "steps": 5,
            "expected_senders_per_batch": 50,
            "population_size": 1000,
        }
    )
    runs = []
    for private in (True, True, False, False):
        cfg = TrainingConfig(**{**config.to_dict(), "private": private})
        t = Trainer(cfg, base_model_path(), seed=5, event=None)
        runs.append(
            ([sorted(map(int, b)) for b in t.batches(1000)], t.noise_generator.initial_seed())
        )
    assert runs[0][0] != runs[1][0] and runs[0][1] != runs[1][1]
    assert runs[2] == runs[3]


def _no_dropout(trainer: Trainer) -> None:
    for module in trainer.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _every_other_token(ids, special, *, probability, mask_id, vocab_size, generator):  # type: ignore[no-untyped-def]
    """Deterministic masking, independent of how messages are batched together."""
    chosen = ~special & (torch.arange(ids.shape[1]) % 2 == 1)
    masked = ids.clone()
    masked[chosen] = mask_id
    return gather_masked(ids, masked, chosen)


def test_microbatch_and_opacus_engines_clip_the_same(
    tiny_config: TrainingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-sender clipped sums agree; a sender's clipped gradient has norm <= max_grad_norm."""
    monkeypatch.setattr("models.trainer.mask_tokens", _every_other_token)
    batch = [
        [[101, 7592, 2045, 2129, 102], [101, 10733, 2003, 2307, 2005, 2017, 102]],
        [[101, 2204, 2851, 102]],
        [[101, 2026, 3899, 2003, 2200, 3407, 102], [101, 4067, 102], [101, 2748, 2748, 102]],
    ]
    sums = {}
    for engine in ("microbatch", "opacus"):
        config = TrainingConfig(
            **{
                **tiny_config.to_dict(),
                "engine": engine,
                "mlm_probability": 0.5,
                "max_grad_norm": 0.1,
                "senders_per_chunk": 2,
            }
        )
        trainer = Trainer(config, base_model_path(), seed=11, event=None)
        _no_dropout(trainer)
        sums[engine] = trainer.clipped_sum(batch)
    for a, b in zip(sums["microbatch"], sums["opacus"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    total = math.sqrt(sum(float(t.pow(2).sum()) for t in sums["opacus"]))
    assert 0 < total <= 3 * 0.1 + 1e-6  # three senders, each clipped to 0.1


@pytest.fixture
def corpus_dir(data_dir: Path, ingested) -> Path:  # type: ignore[no-untyped-def]
    return data_dir


def test_tiny_training_publishes_a_loadable_model(
    corpus_dir: Path, tiny_config: TrainingConfig
) -> None:
    from sentence_transformers import SentenceTransformer

    seen: list[float] = []
    version = train(tiny_config, data_dir=corpus_dir, progress=seen.append)
    assert seen == [0.5, 1.0]
    registry = ModelRegistry(corpus_dir)
    assert registry.active() == version and version.id != BASE_ID
    event = plan_training(tiny_config)
    assert event.sampling_rate == 4 / 20  # expected batch / declared population size
    assert version.delta == default_delta(20)
    assert version.epsilon == pytest.approx(
        Accountant([event]).epsilon(version.delta, method="pld")
    )
    assert version.epsilon <= tiny_config.target_epsilon
    ckpt = torch.load(registry.checkpoint_path(version.id), weights_only=False)
    assert ckpt["config"] == tiny_config.to_dict() == version.config
    assert Accountant.from_state_dict(ckpt["accountant"]).events == (event,)
    assert ckpt["snapshot_id"] == version.manifest["snapshot_id"]
    assert "head.dense.weight" in ckpt["model_state"]
    model = SentenceTransformer(str(version.path), device="cpu")
    base = SentenceTransformer(str(base_model_path()), device="cpu")
    a, b = model.encode(["the pizza was great"]), base.encode(["the pizza was great"])
    assert a.shape == (1, 384)
    assert 0 < float(abs(a - b).max()) < 0.5  # fine-tuned: changed, but still the encoder


def test_a_failing_or_cancelled_training_publishes_nothing(
    corpus_dir: Path, tiny_config: TrainingConfig
) -> None:
    registry = ModelRegistry(corpus_dir)

    def crash(fraction: float) -> None:
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError, match="worker died"):
        train(tiny_config, data_dir=corpus_dir, progress=crash)
    with pytest.raises(TrainingCancelled):
        train(tiny_config, data_dir=corpus_dir, should_stop=lambda: True)
    assert [v.id for v in registry.list()] == [BASE_ID]
    assert registry.active().id == BASE_ID
    assert not any((corpus_dir / "models" / "tmp").iterdir())


def test_training_refuses_an_event_that_was_not_its_plan(
    corpus_dir: Path, tiny_config: TrainingConfig
) -> None:
    other = plan_training(TrainingConfig(**{**tiny_config.to_dict(), "population_size": 21}))
    with pytest.raises(InvalidParameterError, match="charged event"):
        train(tiny_config, data_dir=corpus_dir, event=other)
    assert not (corpus_dir / "models").exists()  # refused before a staging dir was made


def test_a_cancel_is_honoured_within_a_long_step(
    tiny_config: TrainingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One step over 300 senders, each made slow by a seam (>= 0.1 s: the step would take
    30 s or more); the cancel comes after the second sender and is honoured at the next poll
    (every STOP_POLL_S seconds within a step), well before the step's end, with no update."""
    import models.trainer as T

    config = TrainingConfig(
        **{
            **tiny_config.to_dict(),
            "steps": 1,
            "expected_senders_per_batch": 300,
            "population_size": 300,  # q = 1: every sender is in the step
            "engine": "microbatch",
        }
    )
    trainer = Trainer(config, base_model_path(), seed=1, event=plan_training(config))
    examples = [[[101, 7592, 2045, 2129, 102]] for _ in range(300)]
    prepared: list[int] = []
    real_prepare = Trainer._prepare

    def slow_prepare(self: Trainer, sequences: list[list[int]]) -> tuple[torch.Tensor, ...]:
        time.sleep(0.1)
        prepared.append(1)
        return real_prepare(self, sequences)

    monkeypatch.setattr(Trainer, "_prepare", slow_prepare)
    before = [p.detach().clone() for p in trainer.params]
    run = TrainingRun(corpus_read=True)
    started = time.monotonic()
    with pytest.raises(TrainingCancelled):
        trainer.fit(examples, should_stop=lambda: len(prepared) >= 2, run=run)
    elapsed = time.monotonic() - started
    assert run.steps_started == 1 and trainer.steps_done == 0
    # stopped within one poll interval of senders after the cancel, not after 300
    assert 2 <= len(prepared) <= 2 + math.ceil(T.STOP_POLL_S / 0.1) + 1
    assert elapsed < 15  # generous: the whole step takes >= 30 s
    for a, b in zip(before, trainer.params, strict=True):
        assert torch.equal(a, b.detach())  # the cut step added no noise and updated nothing
