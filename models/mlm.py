"""MiniLM with a masked-token head, masking, and saving as a sentence-transformers directory.

The public all-MiniLM-L6-v2 package ships a ``BertModel`` without an MLM head. The head added
here is BERT's: dense + GELU + LayerNorm, then a decoder whose weight is tied to the (frozen)
word embeddings, plus a trainable output bias. Logits are computed only at the masked
positions.

Packed rows (:class:`Packing`, :func:`encode_packed`): the DP engine gives Opacus one row per
SENDER. The frozen bottom of the model (embeddings and the frozen lower layers) runs on the
messages as usual, [N, T]; the real tokens of each sender's messages are then laid end to end
in one row, [S, L, H] (L = the most tokens of one sender in the chunk, no per-message padding),
and the trainable top layers run on those rows with attention restricted to each message
(block-diagonal mask), so every message is still encoded alone: the result equals ``bert`` on
each message. Opacus' per-sample gradient hooks take the first dimension of a module's input
as the sample, so they give per-sender gradients directly: no per-message gradient samples
([messages x parameters]) to materialise and sum per sender, and no padded messages.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, BertModel

__all__ = [
    "MaskedLM",
    "Packing",
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


@dataclass
class Packing:
    """Where each real token of N messages (rows of an [N, T] batch, grouped by sender) goes in
    S sender rows of length L. ``token_message``/``token_row``/``token_col`` [tokens];
    ``segment`` [S, L]: the message index of each slot, -1 for padding."""

    rows: int
    length: int
    flat: torch.Tensor  # [N * T] bool: the real tokens of the [N, T] batch
    token_message: torch.Tensor
    token_row: torch.Tensor
    token_col: torch.Tensor
    segment: torch.Tensor

    @classmethod
    def of(cls, attention: torch.Tensor, owner: torch.Tensor, rows: int) -> Packing:
        """``attention`` [N, T]; ``owner`` [N] (non-decreasing: messages grouped by sender)."""
        n, t = attention.shape
        device = attention.device
        flat = attention.reshape(-1).bool()
        token_message = torch.arange(n, device=device).repeat_interleave(t)[flat]
        token_row = owner[token_message]
        counts = torch.bincount(token_row, minlength=rows)
        starts = torch.cumsum(counts, 0) - counts
        token_col = torch.arange(token_row.numel(), device=device) - starts[token_row]
        length = max(1, int(counts.max()) if rows else 1)
        segment = torch.full((rows, length), -1, dtype=torch.long, device=device)
        segment[token_row, token_col] = token_message
        return cls(rows, length, flat, token_message, token_row, token_col, segment)

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """[N, T, ...] (values at every position) -> [S, L, ...], zeros in the padding."""
        real = values.reshape(-1, *values.shape[2:])[self.flat]
        out = real.new_zeros((self.rows, self.length, *values.shape[2:]))
        out[self.token_row, self.token_col] = real
        return out

    def per_message(self, hidden: torch.Tensor, messages: int) -> torch.Tensor:
        """Mean over each message's tokens of ``hidden`` [S, L, H] -> [N, H] (differentiable)."""
        real = hidden[self.token_row, self.token_col]
        sums = real.new_zeros((messages, hidden.shape[-1])).index_add_(0, self.token_message, real)
        counts = torch.bincount(self.token_message, minlength=messages).clamp(min=1)
        return sums / counts.unsqueeze(1).to(sums.dtype)


def _packed_layer(layer: Any, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """One ``BertLayer`` on ``hidden`` [S, L, H] with attention allowed where ``keep``
    [S, 1, L, L] is True. The same sub-modules and arithmetic as ``BertLayer.forward``
    (post-LayerNorm, SDPA attention, dropout when training)."""
    sa = layer.attention.self
    s, length, _ = hidden.shape
    heads, size = sa.num_attention_heads, sa.attention_head_size

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(s, length, heads, size).transpose(1, 2)

    q, k, v = split(sa.query(hidden)), split(sa.key(hidden)), split(sa.value(hidden))
    # additive mask as HF builds it: a padding slot attends uniformly, never NaN
    bias = torch.zeros(keep.shape, dtype=q.dtype, device=q.device)
    bias = bias.masked_fill(~keep, torch.finfo(q.dtype).min)
    context = F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, dropout_p=sa.dropout.p if layer.training else 0.0, scale=sa.scaling
    )
    context = context.transpose(1, 2).reshape(s, length, -1)
    attended = layer.attention.output(context, hidden)
    return layer.output(layer.intermediate(attended), attended)


def first_trainable_layer(bert: BertModel) -> int:
    """Index of the lowest encoder layer with a trainable parameter (len(layers) if none)."""
    layers = bert.encoder.layer
    for i, layer in enumerate(layers):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return len(layers)


def encode_packed(
    bert: BertModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, packing: Packing
) -> torch.Tensor:
    """Token states [S, L, H] of the messages ``input_ids``/``attention_mask`` [N, T], laid
    out by ``packing``. Every real token's state equals what ``bert`` gives it on its message
    alone (see the module docstring); padding slots hold junk."""
    top = first_trainable_layer(bert)
    if bert.embeddings.word_embeddings.weight.requires_grad:
        raise ValueError("packed encoding needs frozen word embeddings")
    hidden = bert.embeddings(input_ids=input_ids)
    if top > 0:
        mask = attention_mask.bool()[:, None, None, :]
        for layer in bert.encoder.layer[:top]:  # frozen: per message, as bert runs them
            hidden = _packed_layer(layer, hidden, mask)
    hidden = packing.scatter(hidden)
    segment = packing.segment
    keep = (segment.unsqueeze(2) == segment.unsqueeze(1)) & (segment >= 0).unsqueeze(1)
    keep = keep.unsqueeze(1)
    for layer in bert.encoder.layer[top:]:
        hidden = _packed_layer(layer, hidden, keep)
    return hidden


class MaskedLM(nn.Module):
    """``bert`` + :class:`MLMHead`; ``forward`` returns logits at gathered positions.

    Args to forward: ``input_ids``/``attention_mask`` [N, L]; ``positions`` [N, K] (indices
    into L of the masked tokens, padded with 0). Returns logits [N, K, vocab]. With a
    ``packing``, the messages are encoded into sender rows (:func:`encode_packed`) and
    ``positions`` [S, K] index those rows; logits are [S, K, vocab].
    """

    def __init__(self, bert: BertModel) -> None:
        super().__init__()
        self.bert = bert
        cfg = bert.config
        self.head = MLMHead(cfg.hidden_size, cfg.layer_norm_eps, bert.embeddings.word_embeddings)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        packing: Packing | None = None,
    ) -> torch.Tensor:
        if packing is not None:
            hidden = encode_packed(self.bert, input_ids, attention_mask, packing)
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
    valid = torch.arange(k, device=input_ids.device).unsqueeze(0) < counts.unsqueeze(1)
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
