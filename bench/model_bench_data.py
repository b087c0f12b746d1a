"""Shared data preparation for the language-model benchmarks (bench_model_*.py).

From the demo corpus snapshot (``privtext ingest --demo``) it builds, once, a torch file with:

* ``train``: one example per sender (token-id lists), from the conversations NOT held out, with
  the service's rule (the sender's first ``max_messages`` messages by ``msg_rank``), each
  message truncated to ``max_seq_len`` tokens;
* ``pairs``: (query turn, next turn) texts from held-out conversations, a turn being a maximal
  run of one sender's consecutive messages; one pair per conversation, in pools of 100 (the
  test set);
* ``val_pairs``: the same from another ``validation`` held-out conversations (for choosing
  settings; never reported as the result);
* ``train_pairs``: one example per sender for the contrastive objective
  (:func:`models.data.load_sender_pair_examples`, same conversations as ``train``, no
  canaries);
* ``canaries``: random 6-digit secrets ("my locker code is 3 9 1 4 2 8", one prefix word per
  canary), each planted by one NEW sender who repeats it ``reps`` times (their whole example),
  plus, per prefix, an unplanted random reference secret.

The file is self-contained (no DuckDB needed), so the same benchmark runs on a GPU machine.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import torch

CANARY_WORDS = (
    "locker", "alarm", "safe", "bike", "wifi", "phone", "garage", "vault",
    "door", "gate", "card", "pin", "bank", "office", "laptop", "email",
    "server", "router", "tablet", "camera", "printer", "mailbox", "storage", "backup",
    "account", "building", "parking", "cabinet", "desk", "drawer", "shed", "boat",
)  # fmt: skip
CANARY_DIGITS = 6


def canary_prefix(k: int) -> str:
    return f"my {CANARY_WORDS[k % len(CANARY_WORDS)]} code is"


def canary_text(k: int, digits: list[int]) -> str:
    return f"{canary_prefix(k)} " + " ".join(str(d) for d in digits)


def multi_sender_conversations(cur: Any) -> list[int]:
    """Ids of the conversations with at least two senders (the ones that have a next turn by
    another speaker), in id order: what the held-out splits are drawn from."""
    return [
        r[0]
        for r in cur.execute(
            "SELECT conversation_id FROM messages GROUP BY 1 "
            "HAVING count(DISTINCT sender_id) >= 2 ORDER BY 1"
        ).fetchall()
    ]


def build(
    data_dir: Path,
    tokenizer_dir: Path,
    *,
    held_out: int = 1000,
    validation: int = 1000,
    max_messages: int = 16,
    max_seq_len: int = 64,
    canaries: int = 32,
    canary_reps: tuple[int, ...] = (1, 16),
    seed: int = 0,
) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from corpus.store import SnapshotStore
    from models.data import load_sender_pair_examples

    rng = random.Random(seed)
    info, cur = SnapshotStore(data_dir).cursor()
    convs = multi_sender_conversations(cur)
    rng.shuffle(convs)
    held = sorted(convs[:held_out])
    val = sorted(convs[held_out : held_out + validation])
    cur.execute("CREATE TEMP TABLE held AS SELECT unnest(?::INTEGER[]) AS c", [held + val])
    rows = cur.execute(
        "SELECT sender_id, text FROM (SELECT sender_id, text, row_number() OVER "
        "(PARTITION BY sender_id ORDER BY msg_rank) AS r FROM messages "
        "WHERE conversation_id NOT IN (SELECT c FROM held)) WHERE r <= ? "
        "ORDER BY sender_id, r",
        [max_messages],
    ).fetchall()
    held_rows = cur.execute(
        "SELECT conversation_id, sender_id, text FROM messages "
        "WHERE conversation_id IN (SELECT c FROM held) ORDER BY conversation_id, ts, msg_rank"
    ).fetchall()
    cur.close()

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = tok([t or "" for _s, t in rows], truncation=True, max_length=max_seq_len)["input_ids"]
    train: list[list[list[int]]] = []
    last = None
    for (sender, _t), seq in zip(rows, ids, strict=True):
        if sender != last:
            train.append([])
            last = sender
        train[-1].append(list(seq))

    # turns of held-out conversations -> one (turn, next turn) pair per conversation
    turns: dict[int, list[list[Any]]] = {}
    for conv, sender, text in held_rows:
        conv_turns = turns.setdefault(conv, [])
        if conv_turns and conv_turns[-1][0] == sender:
            conv_turns[-1][1] += " " + (text or "")
        else:
            conv_turns.append([sender, text or ""])

    def next_turn_pairs(conversations: list[int], r: random.Random) -> list[tuple[str, str]]:
        pairs = []
        for conv in conversations:
            t = turns.get(conv, [])
            if len(t) >= 2:
                i = r.randrange(len(t) - 1)
                pairs.append((t[i][1], t[i + 1][1]))
        return pairs[: len(pairs) // 100 * 100]

    pairs = next_turn_pairs(held, rng)
    planted = []
    for k in range(canaries):
        digits = [rng.randrange(10) for _ in range(CANARY_DIGITS)]
        reps = canary_reps[k % len(canary_reps)]
        seq = tok(canary_text(k, digits), truncation=True, max_length=max_seq_len)["input_ids"]
        planted.append({"k": k, "prefix": canary_prefix(k), "digits": digits, "reps": reps})
        train.append([list(seq) for _ in range(min(reps, max_messages))])
    references = [[rng.randrange(10) for _ in range(CANARY_DIGITS)] for _ in range(canaries)]
    val_pairs = next_turn_pairs(val, random.Random(seed + 1))
    train_pairs = load_sender_pair_examples(
        data_dir,
        tok,
        max_messages_per_sender=max_messages,
        max_seq_len=max_seq_len,
        exclude_conversations=held + val,
    ).examples
    return {
        "snapshot_id": info.id,
        "train": train,
        "n_canary_senders": canaries,
        "pairs": pairs,
        "val_pairs": val_pairs,
        "train_pairs": train_pairs,
        "canaries": planted,
        "references": references,
        "settings": {
            "held_out_conversations": held_out,
            "validation_conversations": validation,
            "max_messages": max_messages,
            "max_seq_len": max_seq_len,
            "seed": seed,
        },
    }


def main() -> None:
    from models.registry import base_model_path

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", type=Path, required=True, help="holds the demo snapshot")
    ap.add_argument("--out", type=Path, default=Path("bench/out/model_bench_data.pt"))
    args = ap.parse_args()
    data = build(args.data_dir, base_model_path())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, args.out)
    n_msgs = sum(len(e) for e in data["train"])
    print(
        f"{len(data['train'])} sender examples ({data['n_canary_senders']} canary senders), "
        f"{n_msgs} messages; {len(data['pairs'])} test pairs, {len(data['val_pairs'])} "
        f"validation pairs; contrastive: {len(data['train_pairs'])} senders, "
        f"{sum(len(e) // 2 for e in data['train_pairs'])} own-message pairs -> {args.out}"
    )


if __name__ == "__main__":
    main()
