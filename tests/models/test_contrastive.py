"""The contrastive objective: pairs are a sender's own, a sender's loss and gradient do not
depend on the other senders of the batch, both engines agree, and a run publishes a model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from corpus.ingest import ingest_file
from mechanisms.errors import InvalidParameterError
from models.data import count_senders, load_sender_pair_examples
from models.registry import ModelRegistry, base_model_path
from models.trainer import Trainer
from models.training import TrainingConfig, train
from tests.factories import write_jsonl

pytestmark = pytest.mark.torch  # trains and encodes

# three senders; examples are [a1, p1, a2, p2, ...]
A = [[101, 7592, 2045, 2129, 102], [101, 10733, 2003, 2307, 2005, 2017, 102],
     [101, 2204, 2851, 102], [101, 4067, 102]]  # fmt: skip
B = [[101, 2026, 3899, 2003, 2200, 3407, 102], [101, 4067, 102],
     [101, 2748, 2748, 102], [101, 2204, 102]]  # fmt: skip
C = [[101, 2204, 2851, 102]]  # one message: no pair


def _trainer(config: TrainingConfig, **changes: object) -> Trainer:
    trainer = Trainer(
        TrainingConfig(**{**config.to_dict(), "objective": "contrastive", **changes}),
        base_model_path(),
        seed=11,
        event=None,
    )
    for module in trainer.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return trainer


def _grad(trainer: Trainer, loss: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(loss, trainer.params)
    return torch.cat([g.flatten() for g in grads])


def test_a_senders_gradient_is_the_same_alone_and_in_any_batch(
    tiny_config: TrainingConfig,
) -> None:
    trainer = _trainer(tiny_config, max_messages_per_sender=4)
    assert trainer.negatives is not None and trainer.negatives.shape[0] == 256
    assert all(p.requires_grad for p in trainer.params)
    assert not any(p.requires_grad for p in trainer.model.head.parameters())  # head unused
    alone = trainer._contrastive([A])
    assert alone is not None
    g_alone = _grad(trainer, alone[0][0])
    assert float(g_alone.norm()) > 0
    other_b = [[101, 2748, 102], [101, 3407, 3407, 102]]
    for batch, idx in (([B, A, C], 1), ([A, B], 0), ([C, other_b, A], 2)):
        out = trainer._contrastive(batch)
        assert out is not None
        losses, counts = out
        torch.testing.assert_close(losses[idx], alone[0][0], rtol=1e-5, atol=1e-6)
        # padding to the batch's shapes changes float summation order only: ~3e-7 at most
        torch.testing.assert_close(_grad(trainer, losses[idx]), g_alone, rtol=1e-4, atol=1e-6)
        assert [int(c) for c in counts] == [len(e) // 2 for e in batch]
    # a sender without a pair: zero loss in a batch, nothing at all alone
    out = trainer._contrastive([C, A])
    assert out is not None and float(out[0][0].detach()) == 0.0
    assert trainer._contrastive([C]) is None


def test_engines_agree_and_clip_per_sender(tiny_config: TrainingConfig) -> None:
    sums = {}
    for engine in ("microbatch", "opacus"):
        trainer = _trainer(
            tiny_config, engine=engine, max_grad_norm=0.01, senders_per_chunk=2,
            max_messages_per_sender=4,
        )  # fmt: skip
        sums[engine] = trainer.clipped_sum([A, C, B])
    for a, b in zip(sums["microbatch"], sums["opacus"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
    total = float(torch.cat([t.flatten() for t in sums["opacus"]]).norm())
    assert 0 < total <= 2 * 0.01 + 1e-6  # two senders with pairs, each clipped to 0.01


def test_pairs_are_the_senders_own_consecutive_messages(tmp_path: Path) -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    rows = []
    # alice and bob alternate in conv1; alice also writes once in conv2
    for i, sender in enumerate(["alice", "bob", "alice", "bob", "alice", "bob"]):
        rows.append({"sender": sender, "conversation": "conv1", "text": f"{sender} says {i}",
                     "timestamp": (start + timedelta(minutes=i)).isoformat()})  # fmt: skip
    rows.append({"sender": "alice", "conversation": "conv2", "text": "alice alone",
                 "timestamp": start.isoformat()})  # fmt: skip
    rows.append({"sender": "carol", "conversation": "conv2", "text": "carol once",
                 "timestamp": start.isoformat()})  # fmt: skip
    for i in range(2):  # alice writes twice in conv3
        rows.append({"sender": "alice", "conversation": "conv3", "text": f"alice again {i}",
                     "timestamp": (start + timedelta(hours=1, minutes=i)).isoformat()})  # fmt: skip
    data = tmp_path / "data"
    data.mkdir()
    ingest_file(write_jsonl(tmp_path / "c.jsonl", rows), data, workers=1)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_model_path()))
    ex = load_sender_pair_examples(data, tok, max_messages_per_sender=16, max_seq_len=16)
    assert len(ex) == count_senders(data) == 3
    texts = [[tok.decode(s, skip_special_tokens=True) for s in e] for e in ex.examples]
    decoded = [list(zip(t[0::2], t[1::2], strict=True)) for t in texts]
    by_sender = {d[0][0].split()[0]: d for d in decoded if d}
    assert sorted(by_sender) == ["alice", "bob"] and sorted(len(d) for d in decoded) == [0, 1, 2]
    # one pair per conversation: each a message and the same sender's next one there
    conv1 = {
        "alice": [("alice says 0", "alice says 2"), ("alice says 2", "alice says 4")],
        "bob": [("bob says 1", "bob says 3"), ("bob says 3", "bob says 5")],
    }
    assert by_sender["bob"][0] in conv1["bob"]
    alice = by_sender["alice"]
    assert ("alice again 0", "alice again 1") in alice
    assert len([p for p in alice if p in conv1["alice"]]) == 1
    # the bound: at most max_messages_per_sender // 2 pairs
    ex = load_sender_pair_examples(data, tok, max_messages_per_sender=3, max_seq_len=16)
    assert sorted(len(e) for e in ex.examples) == [0, 2, 2]


def test_bad_objective_is_refused() -> None:
    with pytest.raises(InvalidParameterError, match="objective"):
        TrainingConfig(objective="simclr").validate()
    with pytest.raises(InvalidParameterError, match="objective"):
        TrainingConfig.from_dict({"objective": "MLM"})
    with pytest.raises(InvalidParameterError, match="trainable_layers"):
        TrainingConfig(objective="contrastive", trainable_layers=0).validate()
    with pytest.raises(InvalidParameterError, match="temperature"):
        TrainingConfig(objective="contrastive", temperature=0.0).validate()
    with pytest.raises(InvalidParameterError, match="public_negatives"):
        TrainingConfig(objective="contrastive", public_negatives=-1).validate()


def test_tiny_contrastive_training_publishes_a_loadable_model(
    data_dir: Path,
    ingested: object,
    tiny_config: TrainingConfig,
) -> None:
    from sentence_transformers import SentenceTransformer

    config = TrainingConfig(
        **{**tiny_config.to_dict(), "objective": "contrastive", "expected_senders_per_batch": 10}
    )
    seen: list[float] = []
    version = train(config, data_dir=data_dir, progress=seen.append)
    assert seen == [0.5, 1.0]
    registry = ModelRegistry(data_dir)
    assert registry.active() == version
    assert version.config["objective"] == "contrastive"
    assert version.epsilon is not None and version.epsilon <= config.target_epsilon
    model = SentenceTransformer(str(version.path), device="cpu")
    base = SentenceTransformer(str(base_model_path()), device="cpu")
    a, b = model.encode(["the pizza was great"]), base.encode(["the pizza was great"])
    assert a.shape == (1, 384)
    assert 0 < float(abs(a - b).max()) < 0.5
