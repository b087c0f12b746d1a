"""Packed encoding (one row per sender) computes exactly what the plain model computes."""

from __future__ import annotations

import pytest
import torch

from models.mlm import Packing, encode_packed, load_base
from models.registry import base_model_path

pytestmark = pytest.mark.torch  # loads the model in torch

TEXTS = ["hello there", "how are you doing today my friend", "good morning", "x", "yes yes"]
OWNER = [0, 0, 1, 1, 2]  # three senders: 2, 2 and 1 messages


def _batch(tok):  # type: ignore[no-untyped-def]
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("trainable_layers", [2, 6])
def test_packed_rows_encode_each_message_alone(trainable_layers: int) -> None:
    model, tok = load_base(base_model_path())
    model.freeze(trainable_layers)
    model.eval()
    ids, attention = _batch(tok)
    packing = Packing.of(attention, torch.tensor(OWNER), 3)
    lengths = attention.sum(1).tolist()
    assert packing.length == max(lengths[0] + lengths[1], lengths[2] + lengths[3], lengths[4])
    with torch.no_grad():
        packed = encode_packed(model.bert, ids, attention, packing)
        plain = model.bert(input_ids=ids, attention_mask=attention).last_hidden_state
    assert packed.shape == (3, packing.length, plain.shape[-1])
    assert not torch.isnan(packed).any()
    # every real token: its state in the sender's row equals its state in its own message
    real = attention.bool()
    torch.testing.assert_close(packing.scatter(plain)[packing.segment >= 0], plain[real],
                               rtol=0, atol=0)  # fmt: skip
    torch.testing.assert_close(
        packed[packing.token_row, packing.token_col], plain[real], rtol=1e-5, atol=1e-5
    )
    # rows lay the sender's messages end to end, in order
    assert packing.segment[0, : lengths[0]].eq(0).all()
    assert packing.segment[0, lengths[0] : lengths[0] + lengths[1]].eq(1).all()
    assert packing.segment[2, lengths[4] :].eq(-1).all()
    # per-message means (the sentence embedding before normalising)
    mask = attention.unsqueeze(-1).float()
    torch.testing.assert_close(
        packing.per_message(packed, len(TEXTS)),
        (plain * mask).sum(1) / mask.sum(1),
        rtol=1e-5,
        atol=1e-5,
    )
    # attention never crosses messages: changing sender 0's second message leaves the first
    ids2 = ids.clone()
    ids2[1, 1] = 2307
    with torch.no_grad():
        again = encode_packed(model.bert, ids2, attention, packing)
    first = packing.segment[0] == 0
    torch.testing.assert_close(again[0][first], packed[0][first])
    assert not torch.allclose(again[0][packing.segment[0] == 1], packed[0][packing.segment[0] == 1])
