"""MiniLM with a masked-token head, masking, and saving as a sentence-transformers directory.

The public all-MiniLM-L6-v2 package ships a ``BertModel`` without an MLM head. The head added
here is BERT's: dense + GELU + LayerNorm, then a decoder whose weight is tied to the (frozen)
word embeddings, plus a trainable output bias. Logits are computed only at the masked
positions.

Packed inputs (:func:`encode_packed`): the DP engine feeds one row per SENDER, ``[S, M, T]``
(the sender's M messages of T tokens). Each message is still encoded alone (attention never
crosses messages; the result equals ``bert`` on each message), but every Linear and LayerNorm
sees its input as ``[S, M*T, H]``. Opacus' per-sample gradient hooks take the first dimension
as the sample, so they produce per-sender gradients directly: no per-message gradient samples
([messages x parameters]) to materialise and sum per sender.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, BertModel

__all__ = [
    "MaskedLM",
    "encode_packed",
    "load_base",
    "mask_tokens",
    "gather_masked",
    "save_sentence_transformer",
]


class MLMHead(nn.Module):
    def __init__(self, hidden: int, eps: float, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        vocab = word_embeddings.weight.shape[0]
        self.decoder = nn.Linear(hidden, vocab)
        self.decoder.weight = word_embeddings.weight  # tied, frozen with the embeddings
        nn.init.zeros_(self.decoder.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(hidden))))


def _packed_layer(layer: Any, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """One ``BertLayer`` on ``hidden`` [S, M*T, H] with attention inside each message only.

    ``keep`` [S*M, 1, 1, T] marks real tokens. The same sub-modules and arithmetic as
    ``BertLayer.forward`` (post-LayerNorm, SDPA attention, dropout when training); only the
    attention itself is computed on the [S*M, heads, T, head] view.
    """
    sa = layer.attention.self
    n, t = keep.shape[0], keep.shape[-1]
    heads, size = sa.num_attention_heads, sa.attention_head_size

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(n, t, heads, size).transpose(1, 2)

    q, k, v = split(sa.query(hidden)), split(sa.key(hidden)), split(sa.value(hidden))
    # additive mask as HF builds it: a fully padded message attends uniformly, never NaN
    bias = torch.zeros(keep.shape, dtype=q.dtype, device=q.device)
    bias = bias.masked_fill(~keep, torch.finfo(q.dtype).min)
    context = F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, dropout_p=sa.dropout.p if layer.training else 0.0, scale=sa.scaling
    )
    context = context.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[1], -1)
    attended = layer.attention.output(context, hidden)
    return layer.output(layer.intermediate(attended), attended)


def encode_packed(
    bert: BertModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Token states [S, M*T, H] of ``input_ids``/``attention_mask`` [S, M, T].

    Message (s, m) is encoded exactly as ``bert(input_ids[s, m])`` would encode it, but the
    Linear and LayerNorm modules see a batch of S rows (see the module docstring).
    """
    s, m, t = input_ids.shape
    hidden = bert.embeddings(input_ids=input_ids.reshape(s * m, t))
    hidden = hidden.reshape(s, m * t, -1)
    keep = attention_mask.reshape(s * m, 1, 1, t).bool()
    for layer in bert.encoder.layer:
        hidden = _packed_layer(layer, hidden, keep)
    return hidden


class MaskedLM(nn.Module):
    """``bert`` + :class:`MLMHead`; ``forward`` returns logits at gathered positions.

    Args to forward: ``input_ids``/``attention_mask`` [N, L]; ``positions`` [N, K] (indices
    into L of the masked tokens, padded with 0). Returns logits [N, K, vocab]. Packed inputs
    ``input_ids``/``attention_mask`` [S, M, T] with ``positions`` [S, K] indexing M*T are
    encoded by :func:`encode_packed` (one row per sender).
    """

    def __init__(self, bert: BertModel) -> None:
        super().__init__()
        self.bert = bert
        cfg = bert.config
        self.head = MLMHead(cfg.hidden_size, cfg.layer_norm_eps, bert.embeddings.word_embeddings)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        if input_ids.dim() == 3:
            hidden = encode_packed(self.bert, input_ids, attention_mask)
        else:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        index = positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return self.head(torch.gather(hidden, 1, index))

    def freeze(self, trainable_layers: int) -> None:
        """Train only the top ``trainable_layers`` encoder layers and the head (not the tied
        decoder weight). Embeddings (the largest tensor) and lower layers stay public."""
        for p in self.parameters():
            p.requires_grad_(False)
        layers = self.bert.encoder.layer
        for layer in layers[len(layers) - trainable_layers :] if trainable_layers else []:
            for p in layer.parameters():
                p.requires_grad_(True)
        for module in (self.head.dense, self.head.norm):
            for p in module.parameters():
                p.requires_grad_(True)
        self.head.decoder.bias.requires_grad_(True)

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def load_base(path: str | Path) -> tuple[MaskedLM, Any]:
    """The BertModel of a sentence-transformers directory + a fresh head, and its tokenizer."""
    path = Path(path)
    # keep the (unused, frozen) pooler so the saved directory loads without missing weights
    bert = BertModel.from_pretrained(str(path), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return MaskedLM(bert), tokenizer


def mask_tokens(
    input_ids: torch.Tensor,
    special: torch.Tensor,
    *,
    probability: float,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT masking (80% [MASK], 10% random, 10% kept) of ``probability`` of the non-special
    tokens. Returns (masked input ids, positions [N, K], labels [N, K] with -100 padding)."""
    n, length = input_ids.shape
    chosen = (torch.rand(n, length, generator=generator) < probability) & ~special
    roll = torch.rand(n, length, generator=generator)
    masked = input_ids.clone()
    masked[chosen & (roll < 0.8)] = mask_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[swap] = torch.randint(vocab_size, (int(swap.sum()),), generator=generator)
    return gather_masked(input_ids, masked, chosen)


def gather_masked(
    input_ids: torch.Tensor, masked: torch.Tensor, chosen: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(masked ids, positions [N, K] of the chosen tokens padded with 0, their labels padded
    with -100), K = the most tokens chosen in one row (at least 1)."""
    n = input_ids.shape[0]
    counts = chosen.sum(1)
    k = max(1, int(counts.max()) if n else 1)
    # stable sort puts chosen positions first, in order
    order = torch.sort((~chosen).to(torch.int8), dim=1, stable=True).indices[:, :k]
    valid = torch.arange(k).unsqueeze(0) < counts.unsqueeze(1)
    positions = torch.where(valid, order, torch.zeros_like(order))
    labels = torch.where(valid, torch.gather(input_ids, 1, order), torch.full_like(order, -100))
    return masked, positions, labels


def save_sentence_transformer(bert: BertModel, base_dir: Path, out_dir: Path) -> None:
    """Copy ``base_dir`` (tokenizer, pooling, sentence-transformers config) to ``out_dir`` and
    replace the transformer weights and config by ``bert``'s."""
    shutil.copytree(
        base_dir, out_dir, ignore=shutil.ignore_patterns("model.safetensors", "*.bin", "README.md")
    )
    bert.save_pretrained(str(out_dir), safe_serialization=True)
