"""A retrieval objective that stays decomposable per sender: sender-local InfoNCE.

Why not the usual contrastive fine-tuning. Sentence encoders such as all-MiniLM-L6-v2 are
trained with InfoNCE over *in-batch* negatives: every pair's loss depends on the other pairs of
the batch. In DP-SGD that couples examples, so one sender's data moves every other sender's
gradient and per-sender clipping no longer bounds the sensitivity (see PRIVACY.md, "Training
with differential privacy"). Here the loss of one sender is a function of that sender's data
and of public constants only:

* **Positives**: (anchor, positive) = two of the sender's *own* messages, message i and the
  same sender's next message in the same conversation (by timestamp). Pairs are chosen by
  the public rule of :func:`models.data.load_sender_pair_examples` (lowest ``msg_rank`` of the
  anchor: random, content-independent), at most ``max_messages_per_sender // 2`` pairs, so a
  sender still contributes at most ``max_messages_per_sender`` sequences, all in ONE example.
* **Negatives**: the other positives of the *same* sender's example, plus a fixed set of
  public negatives: base-model embeddings of public vocabulary words
  (:func:`models.vocabulary.public_words`, from the public tokenizer's vocab list, never from
  the corpus), computed once before training and frozen (no gradient flows into them, and they
  do not change as the model trains).
* **Loss of sender s**: mean over s's pairs i of
  ``-log softmax_i([cos(a_i, p_j) / t for j in s's pairs] ++ [cos(a_i, n_m) / t for m])``.

Sensitivity argument. Let D and D' differ in all messages of one sender u. For every other
sender s, s's example (their messages, pairs and hence loss) is identical in D and D', because
it is built from s's rows only and the public negatives do not depend on the corpus. The
gradient g_s(theta) = grad L_s(theta) is therefore the same function of theta in both, and
only g_u changes (or appears/disappears). Clipping each g_s to norm C, the sum over the batch
changes by at most C in L2 (add/remove) or 2C (replace): exactly the bound DP-SGD's Gaussian
noise and the accountant assume. The cross-sender similarity entries of a chunk are masked out
before the softmax (``-inf``), so batching senders together (the Opacus engine, the non-private
step) computes the same per-sender losses as one sender alone; the tests check that a sender's
gradient alone equals its gradient inside a batch.

Why not (message, the reply it got). The retrieval benchmark pairs a turn with the next turn
*by another speaker*, so the reply pair would be the closer match. But the reply is sender B's
message. Putting it into sender A's example makes A's loss depend on B's text; B replies to
many senders, so B's data would appear in many examples, each clipped to C separately, and
removing B would change up to (number of B's interlocutors) clipped gradients: the per-sender
sensitivity bound (and the epsilon the accountant reports) would be void. Only the sender's
own messages are used. A sender with no usable pair (fewer than 2 messages in one
conversation) contributes a zero gradient; it is still part of the Poisson sampling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.vocabulary import public_words

__all__ = [
    "mean_pool",
    "sender_contrastive_losses",
    "public_negative_texts",
    "embed_public_negatives",
]


def mean_pool(hidden: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """The sentence-transformers embedding: mean of the token states under the attention
    mask, L2-normalised. ``hidden`` [N, L, H], ``attention`` [N, L] -> [N, H]."""
    mask = attention.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return F.normalize(mean, dim=-1)


def sender_contrastive_losses(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    owner: torch.Tensor,
    n_senders: int,
    negatives: torch.Tensor | None,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sender InfoNCE losses of a chunk of senders.

    ``anchors``/``positives`` [P, H], unit norm, pair p owned by sender ``owner[p]`` (in
    ``0..n_senders-1``); ``negatives`` [M, H] public, frozen (or None). Candidates of anchor p:
    the positives of pairs with the SAME owner (others masked to -inf) and the public
    negatives. Returns (loss per sender [n_senders], pairs per sender [n_senders]); a sender
    without pairs has loss 0 (a zero gradient).
    """
    sims = anchors @ positives.T / temperature  # [P, P]
    same = owner.unsqueeze(1) == owner.unsqueeze(0)
    sims = sims.masked_fill(~same, float("-inf"))
    if negatives is not None and negatives.numel():
        neg = anchors @ negatives.to(anchors.dtype).T / temperature  # [P, M]
        sims = torch.cat([sims, neg], dim=1)
    target = torch.arange(anchors.shape[0], device=anchors.device)
    per_pair = F.cross_entropy(sims, target, reduction="none")
    counts = torch.zeros(n_senders, device=anchors.device).index_add_(
        0, owner, torch.ones_like(per_pair)
    )
    totals = torch.zeros(n_senders, device=anchors.device, dtype=per_pair.dtype).index_add_(
        0, owner, per_pair
    )
    return totals / counts.clamp(min=1.0), counts


def public_negative_texts(n: int, vocab_file: Path | None = None) -> list[str]:
    """``n`` public words (the public vocabulary list of ``vocab_file``, by default the base
    model's, spread evenly over it): never corpus text."""
    words = public_words(vocab_file)
    if n <= 0:
        return []
    if n >= len(words):
        return words
    step = len(words) / n
    return [words[int(i * step)] for i in range(n)]


@torch.no_grad()
def embed_public_negatives(
    bert: Any, tokenizer: Any, texts: list[str], device: torch.device, bs: int = 256
) -> torch.Tensor:
    """Frozen embeddings [len(texts), H] of public texts with ``bert`` (call it on the base
    weights, before any private step)."""
    if not texts:
        return torch.zeros(0, bert.config.hidden_size, device=device)
    was_training = bert.training
    bert.eval()
    out = []
    for i in range(0, len(texts), bs):
        enc = tokenizer(texts[i : i + bs], padding=True, return_tensors="pt").to(device)
        hidden = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        out.append(mean_pool(hidden.last_hidden_state.float(), enc["attention_mask"]))
    bert.train(was_training)
    return torch.cat(out).detach()
