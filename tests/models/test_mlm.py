"""Packed encoding (one row per sender) computes exactly what the plain model computes."""

from __future__ import annotations

import torch

from models.mlm import encode_packed, load_base
from models.registry import base_model_path


def test_packed_rows_encode_each_message_alone() -> None:
    model, tok = load_base(base_model_path())
    model.eval()
    senders = [["hello there", "how are you doing today my friend", None], ["good morning", "x"]]
    t = 12
    ids = torch.zeros(2, 3, t, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for s, messages in enumerate(senders):
        for m, text in enumerate(messages):
            if text is None:
                continue  # a fully padded message: must not produce NaN anywhere
            enc = tok(text)["input_ids"]
            ids[s, m, : len(enc)] = torch.tensor(enc)
            attention[s, m, : len(enc)] = 1
    with torch.no_grad():
        packed = encode_packed(model.bert, ids, attention).reshape(2, 3, t, -1)
        plain = model.bert(
            input_ids=ids.reshape(6, t), attention_mask=attention.reshape(6, t)
        ).last_hidden_state.reshape(2, 3, t, -1)
    assert not torch.isnan(packed).any()
    real = attention.bool()
    assert int(real.sum()) == 20  # 4 + 9 + 4 + 3 tokens
    torch.testing.assert_close(packed[real], plain[real], rtol=1e-5, atol=1e-5)
    # attention never crosses messages: changing sender 0's second message leaves the first
    ids2 = ids.clone()
    ids2[0, 1, 1] = 2307
    with torch.no_grad():
        again = encode_packed(model.bert, ids2, attention).reshape(2, 3, t, -1)
    torch.testing.assert_close(again[0, 0], packed[0, 0])
    assert not torch.allclose(again[0, 1], packed[0, 1])
