"""Speed: one DP-SGD step against one non-private step, same model, same batch, same run.

A fixed batch of ``--batch`` senders (their bounded samples from the demo corpus, see
model_bench_data.py) is stepped on repeatedly; each round times a non-private step and a DP
step of each engine, interleaved so that machine load hits all alike; medians are reported.

    PYTHONPATH=. .venv/bin/python bench/model_bench_data.py --data-dir DATA
    PYTHONPATH=. .venv/bin/python bench/bench_model_speed.py --batch 32 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    from mechanisms.events import PrivacyEvent
    from models.registry import base_model_path
    from models.trainer import Trainer, pick_device
    from models.training import TrainingConfig

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=Path("bench/out/model_bench_data.pt"))
    ap.add_argument("--base", type=Path, default=None, help="base model dir (default: package)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--trainable-layers", type=int, default=2)
    ap.add_argument("--engines", default="microbatch,opacus")
    ap.add_argument("--chunk", type=int, default=8, help="senders per chunk (opacus/non-private)")
    ap.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    args = ap.parse_args()

    data = torch.load(args.data, weights_only=False)
    rng = random.Random(1)
    batch = rng.sample(data["train"][: -data["n_canary_senders"]], args.batch)
    n_msgs = sum(len(e) for e in batch)
    n_tok = sum(len(s) for e in batch for s in e)
    base = args.base or base_model_path()
    event = PrivacyEvent.subsampled_gaussian(noise_multiplier=1.0, sampling_rate=0.1, steps=100)
    device = pick_device()
    trainers = {}
    # "nonprivate": chunks of --chunk senders in one backward (the default non-private step);
    # "nonprivate-1": one sender per backward (the same padding as the microbatch DP engine)
    for name in ["nonprivate", "nonprivate-1", *args.engines.split(",")]:
        config = TrainingConfig(
            trainable_layers=args.trainable_layers,
            expected_senders_per_batch=args.batch,
            senders_per_chunk=1 if name == "nonprivate-1" else args.chunk,
            engine="microbatch" if name.startswith("nonprivate") else name,
            private=not name.startswith("nonprivate"),
            seed=0,
            amp=not args.no_amp,
        )
        trainers[name] = Trainer(config, base, seed=0, event=event)
    n_params = sum(p.numel() for p in trainers["nonprivate"].params)

    def step(name: str) -> float:
        trainer = trainers[name]
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        if name.startswith("nonprivate"):
            trainer.nonprivate_step(batch)
        else:
            trainer.dp_step(batch)
        sync()
        return time.perf_counter() - t0

    for name in trainers:  # warm-up
        step(name)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.rounds):
        for name in trainers:
            times[name].append(step(name))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    dev = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    )
    print(
        f"device {dev}; batch {args.batch} senders = {n_msgs} messages, {n_tok} tokens; "
        f"trainable params {n_params:,} (top {args.trainable_layers} layers + MLM head); "
        f"amp {'bf16' if device.type == 'cuda' and not args.no_amp else 'off'}; "
        f"{args.rounds} rounds, medians"
    )
    print("| step | median s | min s | x non-private |")
    print("| --- | --- | --- | --- |")
    for name, ts in times.items():
        ratio = med[name] / med["nonprivate"]
        print(f"| {name} | {med[name]:.3f} | {min(ts):.3f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
