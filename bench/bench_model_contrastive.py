"""Next-turn retrieval after sender-level DP fine-tuning: contrastive vs MLM objective (CPU-sized).

Same held-out (turn, next turn) pairs as bench_model_quality.py (from model_bench_data.py's
file), same retrieval metric (recall@10 and MRR among the 100 next turns of a pool). Trains,
from the public MiniLM, one model per ``--runs`` entry, one after the other in this process:

* ``dp-contrastive`` / ``nonprivate-contrastive``: objective "contrastive"
  (models/contrastive.py): pairs of a sender's own consecutive messages in one conversation,
  negatives only from the same sender and fixed public word embeddings. Training examples
  are built here from the snapshot, minus the held-out conversations (the same 1,000 as
  model_bench_data.py: same seed, same shuffle), with the service's pair rule;
* ``dp-mlm`` / ``nonprivate-mlm``: objective "mlm" on model_bench_data.py's training examples
  minus its canary senders, cut to the same ``--max-messages`` and ``--max-seq-len``.

A run may name its own learning rate: ``dp-contrastive@5e-5``.

Results are written after every model (``--out``), so a cut-off run keeps what it measured.

    PYTHONPATH=. .venv/bin/python bench/bench_model_contrastive.py --data-dir DATA \\
        --steps 50 --batch 64 --max-seq-len 32 --max-messages 8
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model_quality import privacy_entry, retrieval  # noqa: E402
from model_bench_data import multi_sender_conversations  # noqa: E402


def held_out_conversations(data_dir: Path, held_out: int = 1000, seed: int = 0) -> list[int]:
    """model_bench_data.build's held-out conversations (its first use of its seeded rng)."""
    from corpus.store import SnapshotStore

    rng = random.Random(seed)
    _info, cur = SnapshotStore(data_dir).cursor()
    try:
        convs = multi_sender_conversations(cur)
    finally:
        cur.close()
    rng.shuffle(convs)
    return sorted(convs[:held_out])


def cut(examples: list, max_messages: int, max_seq_len: int, sep: int) -> list:
    out = []
    for ex in examples:
        out.append(
            [
                s if len(s) <= max_seq_len else s[: max_seq_len - 1] + [sep]
                for s in ex[:max_messages]
            ]
        )
    return out


def main() -> None:
    from models.data import load_sender_pair_examples
    from models.mlm import load_base
    from models.registry import base_model_path
    from models.trainer import Trainer, pick_device
    from models.training import TrainingConfig, plan_training

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", type=Path, required=True, help="the demo snapshot")
    ap.add_argument("--data", type=Path, default=Path("bench/out/model_bench_data.pt"))
    ap.add_argument("--runs", default="dp-contrastive,nonprivate-contrastive,dp-mlm")
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--trainable-layers", type=int, default=2)
    ap.add_argument("--max-messages", type=int, default=8)
    ap.add_argument("--max-seq-len", type=int, default=32)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--public-negatives", type=int, default=256)
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--pairs", type=int, default=None, help="use only the first N pairs")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench/out/model_contrastive.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = torch.load(args.data, weights_only=False)
    pairs = data["pairs"][: args.pairs] if args.pairs else data["pairs"]
    base = base_model_path()
    device = pick_device()
    _mlm, tok = load_base(base)
    held = held_out_conversations(args.data_dir)
    t0 = time.perf_counter()
    contrastive = load_sender_pair_examples(
        args.data_dir,
        tok,
        max_messages_per_sender=args.max_messages,
        max_seq_len=args.max_seq_len,
        exclude_conversations=held,
    ).examples
    mlm_train = cut(
        data["train"][: len(data["train"]) - data["n_canary_senders"]],
        args.max_messages,
        args.max_seq_len,
        tok.sep_token_id,
    )
    n_pairs = [len(e) // 2 for e in contrastive]
    stats = {
        "contrastive_senders": len(contrastive),
        "contrastive_senders_with_a_pair": sum(k > 0 for k in n_pairs),
        "contrastive_pairs": sum(n_pairs),
        "mlm_senders": len(mlm_train),
        "mlm_messages": sum(len(e) for e in mlm_train),
        "build_s": round(time.perf_counter() - t0, 1),
    }
    print("data", stats, flush=True)
    results: dict[str, Any] = {
        "settings": {**{k: str(v) for k, v in vars(args).items()}, "device": str(device)},
        "data": stats,
        "queries": len(pairs),
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))

    t0 = time.perf_counter()
    results["base"] = {"retrieval": retrieval(_mlm.bert.to(device), tok, pairs, device)}
    results["base"]["eval_s"] = time.perf_counter() - t0
    print("base", json.dumps(results["base"]), flush=True)
    del _mlm
    save()
    for run in args.runs.split(","):
        spec, _, lr = run.partition("@")  # "dp-contrastive@5e-5": another learning rate
        kind, objective = spec.split("-")
        private = kind == "dp"
        examples = contrastive if objective == "contrastive" else mlm_train
        n = len(examples)
        config = TrainingConfig(
            target_epsilon=args.epsilon,
            steps=args.steps,
            expected_senders_per_batch=args.batch,
            learning_rate=float(lr) if lr else args.lr,
            trainable_layers=args.trainable_layers,
            max_messages_per_sender=args.max_messages,
            max_seq_len=args.max_seq_len,
            max_grad_norm=args.max_grad_norm,
            engine=args.engine,
            objective=objective,
            temperature=args.temperature,
            public_negatives=args.public_negatives,
            private=private,
            seed=1,
            population_size=n,  # the benchmark corpus is ours: its size is declared
        )
        event = plan_training(config) if private else None
        trainer = Trainer(config, base, seed=1, event=event)
        t0 = time.perf_counter()
        trainer.fit(examples)
        entry: dict[str, Any] = {
            "objective": objective,
            "private": private,
            "n_senders": n,
            "train_s": time.perf_counter() - t0,
            "engine": trainer.engine,
            "lr": config.learning_rate,
        }
        if event is not None:
            entry |= privacy_entry(event, n)
        t0 = time.perf_counter()
        entry["retrieval"] = retrieval(trainer.model.bert, tok, pairs, device)
        entry["eval_s"] = time.perf_counter() - t0
        results[run] = entry
        print(run, json.dumps(entry), flush=True)
        save()
        del trainer
    print("\n| model | recall@10 (+- 1 se) | MRR | epsilon (PLD) | train s |")
    print("| --- | --- | --- | --- | --- |")
    for key, entry in results.items():
        if not isinstance(entry, dict) or "retrieval" not in entry:
            continue
        r = entry["retrieval"]
        eps = f"{entry['epsilon_pld']:.2f}" if "epsilon_pld" in entry else "-"
        print(
            f"| {key} | {r['recall@10']:.3f} +- {r['se']:.3f} | {r['mrr']:.3f} | {eps} | "
            f"{entry.get('train_s', 0):.0f} |"
        )


if __name__ == "__main__":
    main()
