"""Training examples at the privacy unit: one example per sender.

Each sender's example is a bounded sample of their messages chosen by the public rule used
everywhere in privtext: the messages with ``msg_rank < max_messages_per_sender`` (``msg_rank``
is a uniformly random rank within the sender, drawn at ingest from the OS CSPRNG, independent of
content). Each message is tokenised and truncated to ``max_seq_len`` tokens. So one sender
contributes at most ``max_messages_per_sender`` sequences, all inside ONE example that is
sampled, and clipped, as a unit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from corpus.store import SnapshotStore

__all__ = [
    "SenderExamples",
    "load_sender_examples",
    "load_sender_pair_examples",
    "count_senders",
    "collate",
]


@dataclass
class SenderExamples:
    """``examples[i]`` is the list of token-id lists of sender i (dense index, not the id)."""

    examples: list[list[list[int]]]
    snapshot_id: str

    def __len__(self) -> int:
        return len(self.examples)


def count_senders(data_dir: str | os.PathLike[str], snapshot_id: str | None = None) -> int:
    """Number of distinct senders in a snapshot: a PRIVATE, exact count, for tests and offline
    benchmarks only. The service never computes or returns it, and training never uses it (its
    sampling rate comes from the declared ``population_size``, :mod:`models.training`)."""
    _info, cur = SnapshotStore(data_dir).cursor(snapshot_id)
    try:
        row = cur.execute("SELECT count(DISTINCT sender_id) FROM messages").fetchone()
        return int(row[0]) if row else 0
    finally:
        cur.close()


def load_sender_examples(
    data_dir: str | os.PathLike[str],
    tokenizer: Any,
    *,
    snapshot_id: str | None = None,
    max_messages_per_sender: int,
    max_seq_len: int,
) -> SenderExamples:
    """Read the bounded per-sender samples of one snapshot and tokenise them."""
    info, cur = SnapshotStore(data_dir).cursor(snapshot_id)
    try:
        rows = cur.execute(
            "SELECT sender_id, text FROM messages WHERE msg_rank < ? ORDER BY sender_id, msg_rank",
            [max_messages_per_sender],
        ).fetchall()
    finally:
        cur.close()
    texts = [t or "" for _s, t in rows]
    ids = tokenizer(texts, truncation=True, max_length=max_seq_len)["input_ids"] if texts else []
    examples: list[list[list[int]]] = []
    last = None
    for (sender, _t), seq in zip(rows, ids, strict=True):
        if sender != last:
            examples.append([])
            last = sender
        examples[-1].append(list(seq))
    return SenderExamples(examples=examples, snapshot_id=info.id)


def load_sender_pair_examples(
    data_dir: str | os.PathLike[str],
    tokenizer: Any,
    *,
    snapshot_id: str | None = None,
    max_messages_per_sender: int,
    max_seq_len: int,
    exclude_conversations: list[int] | None = None,
) -> SenderExamples:
    """One example per sender for the contrastive objective: ``[a1, p1, a2, p2, ...]``.

    A pair (a, p) is a message of the sender and the SAME sender's next message in the same
    conversation (by ``ts``, ties by ``msg_rank``); never another sender's message (see
    :mod:`models.contrastive` for why). At most one pair per conversation (the one whose anchor
    has the lowest ``msg_rank``), so the other pairs of the example, which serve as its
    negatives, always come from other conversations; of those, the pairs with the lowest
    anchor ``msg_rank`` (uniformly random, content-independent) are kept, at most
    ``max_messages_per_sender // 2``, so an example holds at most ``max_messages_per_sender``
    sequences. Every sender of the snapshot has an example, in ``sender_id`` order like
    :func:`load_sender_examples` (an empty one when they have no pair: a zero gradient), so every
    sender is sampled with the planned probability, as in the MLM objective.

    ``exclude_conversations`` (benchmarks only) drops those conversations first, and the senders
    seen only in them.
    """
    max_pairs = max_messages_per_sender // 2
    info, cur = SnapshotStore(data_dir).cursor(snapshot_id)
    try:
        source = "messages"
        if exclude_conversations:
            cur.execute(
                "CREATE TEMP TABLE pair_source AS SELECT * FROM messages WHERE conversation_id "
                "NOT IN (SELECT unnest(?::INTEGER[]))",
                [list(exclude_conversations)],
            )
            source = "pair_source"
        senders = [
            r[0]
            for r in cur.execute(
                f"SELECT DISTINCT sender_id FROM {source} ORDER BY sender_id"
            ).fetchall()
        ]
        rows = (
            cur.execute(
                "SELECT sender_id, text, next_text FROM ("
                " SELECT sender_id, text, msg_rank, next_text FROM ("
                "  SELECT sender_id, conversation_id, text, msg_rank, lead(text) OVER ("
                "   PARTITION BY sender_id, conversation_id ORDER BY ts, msg_rank) AS next_text"
                f"  FROM {source}) WHERE next_text IS NOT NULL"
                "  QUALIFY row_number() OVER ("
                "   PARTITION BY sender_id, conversation_id ORDER BY msg_rank) = 1) "
                "QUALIFY row_number() OVER (PARTITION BY sender_id ORDER BY msg_rank) <= ? "
                "ORDER BY sender_id, msg_rank",
                [max_pairs],
            ).fetchall()
            if max_pairs
            else []
        )
    finally:
        cur.close()
    texts = [t or "" for _s, a, b in rows for t in (a, b)]
    ids = tokenizer(texts, truncation=True, max_length=max_seq_len)["input_ids"] if texts else []
    by_sender: dict[Any, list[list[int]]] = {s: [] for s in senders}
    for k, (sender, _a, _b) in enumerate(rows):
        by_sender[sender] += [list(ids[2 * k]), list(ids[2 * k + 1])]
    return SenderExamples(examples=[by_sender[s] for s in senders], snapshot_id=info.id)


def collate(
    sequences: list[list[int]], pad_id: int, special_ids: set[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad token-id lists to [N, L]: (input_ids, attention_mask, special-token mask)."""
    length = max((len(s) for s in sequences), default=1)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, seq in enumerate(sequences):
        attention[i, : len(seq)] = 1
    special = attention.eq(0)
    for sid in special_ids:
        special |= ids.eq(sid)
    return ids, attention, special
