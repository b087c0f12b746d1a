"""Quality and privacy audit of the fine-tuned encoder (one run trains both models).

Trains, from the same public MiniLM and the same data (model_bench_data.py: the demo corpus
minus the held-out conversations, plus canary senders), a sender-level DP model at
``--epsilon`` and a non-private model with the same settings, then reports

* next-turn retrieval on held-out conversations: for each (turn, next turn) pair, the query
  turn's embedding ranks the 100 next turns of its pool (cosine, mean pooling + L2 norm as the
  sentence-transformers model does); recall@10 and MRR for base, DP and non-private;
* canary exposure (Carlini et al. 2019): each canary "my <word> code is d1 .. d6" was planted by
  one sender, repeated ``reps`` times. With the six digits masked, the model's MLM head gives
  log p(digit at i); a candidate's score is the sum over the six positions (the masked joint
  log-likelihood, a product of marginals: our stand-in for log-perplexity). Its rank among all
  10^6 candidates gives exposure = log2(10^6) - log2(rank) (max 19.93 bits). Unplanted
  reference secrets under the same prefixes give the no-memorisation baseline.

    PYTHONPATH=. .venv/bin/python bench/model_bench_data.py --data-dir DATA
    PYTHONPATH=. .venv/bin/python bench/bench_model_quality.py --steps 200 --batch 256
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CANARY_LEN = 6
LOG2_SPACE = CANARY_LEN * math.log2(10)


@torch.no_grad()
def embed(bert: Any, tok: Any, texts: list[str], device: torch.device, bs: int = 128) -> Any:
    bert.eval()
    out = []
    for i in range(0, len(texts), bs):
        enc = tok(
            texts[i : i + bs], padding=True, truncation=True, max_length=256, return_tensors="pt"
        ).to(device)
        hidden = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        mask = enc["attention_mask"].unsqueeze(-1).float()
        mean = (hidden.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(F.normalize(mean, dim=-1).cpu())
    return torch.cat(out)


def retrieval(bert: Any, tok: Any, pairs: list[tuple[str, str]], device: torch.device) -> dict:
    q = embed(bert, tok, [a for a, _ in pairs], device)
    a = embed(bert, tok, [b for _, b in pairs], device)
    hits, rr = [], []
    for start in range(0, len(pairs), 100):
        sims = q[start : start + 100] @ a[start : start + 100].T
        ranks = (sims > sims.diag().unsqueeze(1)).sum(1) + 1  # rank of the true next turn
        hits += (ranks <= 10).tolist()
        rr += (1.0 / ranks.float()).tolist()
    n = len(hits)
    recall = sum(hits) / n
    return {
        "recall@10": recall,
        "se": math.sqrt(recall * (1 - recall) / n),
        "mrr": sum(rr) / n,
        "queries": n,
    }


@torch.no_grad()
def exposure(mlm: Any, tok: Any, prefix: str, digits: list[int], device: torch.device) -> float:
    mlm.eval()
    enc = tok(prefix + " " + " ".join([tok.mask_token] * len(digits)), return_tensors="pt")
    ids = enc["input_ids"].to(device)
    positions = (ids[0] == tok.mask_token_id).nonzero().flatten().unsqueeze(0)
    logits = mlm(ids, enc["attention_mask"].to(device), positions)[0].float()
    digit_ids = tok.convert_tokens_to_ids([str(d) for d in range(10)])
    lp = torch.log_softmax(logits, -1)[:, digit_ids].cpu().double()  # [6, 10]
    total = lp[0]
    for row in lp[1:]:
        total = (total.unsqueeze(-1) + row).reshape(-1)
    score = sum(float(lp[i, d]) for i, d in enumerate(digits))
    rank = int((total > score + 1e-12).sum()) + 1
    return LOG2_SPACE - math.log2(rank)


@torch.no_grad()
def pll_scores(
    mlm: Any, tok: Any, prefix: str, candidates: list[list[int]], device: torch.device
) -> torch.Tensor:
    """Pseudo-log-likelihood of each digit string after ``prefix``: the sum over the six
    positions of log p(digit i | the prefix and the five other digits), one masked position
    at a time (how masked-token training sees a canary)."""
    mlm.eval()
    digit_ids = torch.tensor(tok.convert_tokens_to_ids([str(d) for d in range(10)]))
    base = tok(prefix + " " + " ".join(["0"] * CANARY_LEN))["input_ids"]
    start = len(base) - 1 - CANARY_LEN  # the digits sit before [SEP]
    cand = torch.tensor(candidates)  # [C, 6]
    ids = torch.tensor(base).repeat(len(candidates), 1)
    ids[:, start : start + CANARY_LEN] = digit_ids[cand]
    total = torch.zeros(len(candidates), dtype=torch.float64)
    for i in range(CANARY_LEN):
        masked = ids.clone()
        masked[:, start + i] = tok.mask_token_id
        for b in range(0, len(candidates), 2048):
            chunk = masked[b : b + 2048].to(device)
            pos = torch.full((chunk.shape[0], 1), start + i, device=device)
            logits = mlm(chunk, torch.ones_like(chunk), pos)[:, 0].float()
            lp = torch.log_softmax(logits, -1)[:, digit_ids.to(device)].cpu().double()
            total[b : b + 2048] += lp.gather(1, cand[b : b + 2048, i : i + 1]).squeeze(1)
    return total


def pll_exposure(score: float, sample: torch.Tensor) -> float:
    """Exposure from a uniform sample of the 10^6 candidates: rank estimated as 1 + the
    sampled candidates that score higher, scaled to the whole space; at most log2(sample
    size) can be resolved (no sampled candidate above the secret)."""
    higher = int((sample > score + 1e-12).sum())
    rank = max(1.0, higher * (10**CANARY_LEN) / len(sample))
    return min(LOG2_SPACE - math.log2(rank), math.log2(len(sample)))


def audit(mlm: Any, tok: Any, data: dict, device: torch.device, samples: int = 0) -> dict:
    planted = [
        {"reps": c["reps"], "exposure": exposure(mlm, tok, c["prefix"], c["digits"], device)}
        for c in data["canaries"]
    ]
    refs = [
        exposure(mlm, tok, c["prefix"], r, device)
        for c, r in zip(data["canaries"], data["references"], strict=True)
    ]
    out: dict[str, Any] = {"planted": planted, "references": refs}
    if samples:
        # pseudo-likelihood exposure, each canary's secret and reference against the same
        # sample of random candidates under its prefix
        rng = random.Random(7)
        for c, r, entry in zip(data["canaries"], data["references"], planted, strict=True):
            sample = [[rng.randrange(10) for _ in range(CANARY_LEN)] for _ in range(samples)]
            scores = pll_scores(mlm, tok, c["prefix"], [c["digits"], r, *sample], device)
            entry["pll_exposure"] = pll_exposure(float(scores[0]), scores[2:])
            entry["pll_reference"] = pll_exposure(float(scores[1]), scores[2:])
        out["pll_samples"] = samples
    return out


def privacy_entry(event: Any, n_senders: int) -> dict[str, Any]:
    """What a DP run's result records about its privacy: epsilon by PLD (the figure the service
    reports) and by RDP at the default delta for ``n_senders``, and the event's parameters."""
    from mechanisms.accountant import Accountant
    from models.training import default_delta

    delta = default_delta(n_senders)
    acc = Accountant([event])
    return {
        "epsilon_pld": acc.epsilon(delta),
        "epsilon_rdp": acc.epsilon(delta, method="rdp"),
        "delta": delta,
        "noise_multiplier": event.noise_multiplier,
        "sampling_rate": event.sampling_rate,
    }


def parse_run(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """``kind-objective[@lr][:L<layers>][:S<steps>]``, e.g. ``dp-mlm@5e-5`` or
    ``np-mlm@5e-4:L6:S400``; kind ``dp`` (private) or ``np`` (non-private)."""
    head, *opts = spec.split(":")
    name, _, lr = head.partition("@")
    kind, objective = name.split("-")
    if kind not in ("dp", "np") or objective not in ("mlm", "contrastive"):
        raise SystemExit(f"bad run {spec!r}")
    run = {
        "private": kind == "dp",
        "objective": objective,
        "lr": float(lr) if lr else args.lr,
        "layers": args.trainable_layers,
        "steps": args.steps,
    }
    for opt in opts:
        key = {"L": "layers", "S": "steps"}[opt[0]]
        run[key] = int(opt[1:])
    return run


def main() -> None:
    from models.mlm import load_base
    from models.registry import base_model_path
    from models.trainer import Trainer, pick_device
    from models.training import TrainingConfig, plan_training

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=Path("bench/out/model_bench_data.pt"))
    ap.add_argument("--base", type=Path, default=None)
    ap.add_argument("--runs", default="dp-mlm,np-mlm", help="comma-separated, see parse_run")
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--trainable-layers", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--pairs", type=int, default=None, help="use only the first N pairs")
    ap.add_argument(
        "--senders",
        type=int,
        default=None,
        help="train on the first N real senders (plus every canary sender) only: a small "
        "setting where the canaries are sampled often, for the audit on a CPU",
    )
    ap.add_argument("--out", type=Path, default=Path("bench/out/model_quality.json"))
    ap.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    ap.add_argument(
        "--exposure-samples",
        type=int,
        default=0,
        help="also estimate each canary's pseudo-likelihood exposure against this many random "
        "candidates (0: only the exact masked-joint exposure)",
    )
    args = ap.parse_args()

    data = torch.load(args.data, weights_only=False)
    if args.senders:
        canaries = data["n_canary_senders"]
        data["train"] = data["train"][: args.senders] + data["train"][-canaries:]
        data["train_pairs"] = data["train_pairs"][: args.senders]
    test = data["pairs"][: args.pairs] if args.pairs else data["pairs"]
    val = data["val_pairs"][: args.pairs] if args.pairs else data["val_pairs"]
    base = args.base or base_model_path()
    device = pick_device()
    results: dict[str, Any] = {
        "settings": {k: str(v) for k, v in vars(args).items()}
        | {"base": str(base), "device": str(device)},
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))

    mlm, tok = load_base(base)
    mlm = mlm.to(device)
    results["base"] = {
        "val": retrieval(mlm.bert, tok, val, device),
        "test": retrieval(mlm.bert, tok, test, device),
    }
    print("base", json.dumps(results["base"]), flush=True)
    del mlm
    save()
    for spec in args.runs.split(","):
        run = parse_run(spec, args)
        examples = data["train"] if run["objective"] == "mlm" else data["train_pairs"]
        n = len(examples)
        config = TrainingConfig(
            target_epsilon=args.epsilon,
            steps=run["steps"],
            expected_senders_per_batch=args.batch,
            learning_rate=run["lr"],
            trainable_layers=run["layers"],
            senders_per_chunk=args.chunk,
            max_grad_norm=args.max_grad_norm,
            objective=run["objective"],
            private=run["private"],
            seed=1,
            population_size=n,  # the benchmark corpus is ours: its size is declared
            amp=not args.no_amp,
        )
        event = plan_training(config) if run["private"] else None
        trainer = Trainer(config, base, seed=1, event=event)
        t0 = time.perf_counter()
        trainer.fit(examples)
        if device.type == "cuda":
            torch.cuda.synchronize()
        entry: dict[str, Any] = run | {
            "train_s": time.perf_counter() - t0,
            "engine": trainer.engine,
            "n_senders": n,
        }
        if event is not None:
            entry |= privacy_entry(event, n)
        entry["val"] = retrieval(trainer.model.bert, tok, val, device)
        entry["test"] = retrieval(trainer.model.bert, tok, test, device)
        if run["objective"] == "mlm":
            entry["canaries"] = audit(trainer.model, tok, data, device, args.exposure_samples)
        results[spec] = entry
        print(spec, json.dumps({k: v for k, v in entry.items() if k != "canaries"}), flush=True)
        save()
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print_tables(results)


def print_tables(r: dict) -> None:
    print("\n| model | val recall@10 | test recall@10 (+- 1 se) | test MRR | epsilon | train s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key, entry in r.items():
        if key == "settings":
            continue
        v, t = entry["val"], entry["test"]
        eps = f"{entry['epsilon_pld']:.2f}" if "epsilon_pld" in entry else "-"
        print(
            f"| {key} | {v['recall@10']:.3f} | {t['recall@10']:.3f} +- {t['se']:.3f} | "
            f"{t['mrr']:.3f} | {eps} | {entry.get('train_s', 0):.0f} |"
        )
    print("\n| model | canary reps | exposure bits: mean, max (n) | unplanted: mean, max (n) |")
    print("| --- | --- | --- | --- |")
    for key, entry in r.items():
        if key == "settings" or "canaries" not in entry:
            continue
        can = entry["canaries"]
        refs = can["references"]
        for reps in sorted({c["reps"] for c in can["planted"]}):
            ex = [c["exposure"] for c in can["planted"] if c["reps"] == reps]
            print(
                f"| {key} | {reps} | {sum(ex) / len(ex):.1f}, {max(ex):.1f} ({len(ex)}) | "
                f"{sum(refs) / len(refs):.1f}, {max(refs):.1f} ({len(refs)}) |"
            )
            pll = [
                c["pll_exposure"]
                for c in can["planted"]
                if c["reps"] == reps and "pll_exposure" in c
            ]
            if pll:
                pref = [c["pll_reference"] for c in can["planted"]]
                print(
                    f"| {key} (pseudo-likelihood, {can['pll_samples']} samples) | {reps} | "
                    f"{sum(pll) / len(pll):.1f}, {max(pll):.1f} ({len(pll)}) | "
                    f"{sum(pref) / len(pref):.1f}, {max(pref):.1f} ({len(pref)}) |"
                )


if __name__ == "__main__":
    main()
