"""Sentence embeddings from a sentence-transformers directory (MiniLM: mean pooling, L2 norm).

``Encoder`` loads the directory's BERT model and fast tokenizer directly (no
sentence-transformers module chain at run time) and encodes with:

* length-sorted, token-budget batches: texts are sorted by token count and cut into batches of
  at most ``max_batch_tokens`` padded tokens, so short texts go in large batches and long texts
  in small ones, with almost no padding (``batch_size`` caps the number of texts per batch);
* one tokenizer call for the whole input (the Rust tokenizer parallelises it), then batches
  padded from the token ids;
* ``torch.inference_mode()``, the process's torch thread count set once;
* the device chosen automatically (CUDA when present); "auto" precision is fp16 autocast on
  CUDA (measured on an H200, BENCHMARKS.md "Embeddings throughput": median 0.65 s vs
  0.79-0.87 s in fp32
  for 10,000 texts, cosine to fp32 >= 0.999999) and fp32 on the CPU, where bf16 autocast
  (opt-in) is about 2x faster on AVX512-BF16 but moves vectors by up to 3e-3 (cosine
  >= 0.9999).

The output is what ``SentenceTransformer(path).encode(texts, normalize_embeddings=True)``
returns (float32, L2-normalised, ``(n, dim)``), within float rounding in fp32.

Nothing here downloads: the path must be a local directory (``HF_HUB_OFFLINE`` is set).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class Encoder:
    """Encode texts with the sentence-transformers model in ``path``.

    ``device``: "cpu", "cuda", "cuda:N" or None (CUDA when present). ``precision``: "auto"
    (fp16 autocast on CUDA, fp32 on the CPU), "fp32", "bf16" or "fp16" (CUDA only).
    ``threads``: torch intra-op threads on CPU (None: leave torch's setting).
    Raises FileNotFoundError when ``path`` is not a model directory, ValueError for a bad
    precision.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str | None = None,
        *,
        precision: str = "auto",
        threads: int | None = None,
        max_batch_tokens: int = 16384,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"not a model directory: {self.path}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        self.device = torch.device(device or default_device())
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
        self.precision = precision
        if threads is not None and self.device.type == "cpu":
            torch.set_num_threads(max(1, threads))
        if max_batch_tokens < 256:
            raise ValueError("max_batch_tokens must be >= 256")
        self.max_batch_tokens = max_batch_tokens

        st_config = _read_json(self.path / "sentence_bert_config.json")
        pooling = _read_json(self.path / "1_Pooling" / "config.json")
        if pooling and not pooling.get("pooling_mode_mean_tokens", True):
            raise ValueError("only mean-pooling sentence-transformers models are supported")
        modules = _read_json(self.path / "modules.json")
        types: set[str] = (
            {m.get("type", "") for m in modules} if isinstance(modules, list) else set()
        )
        self.normalize = (not types) or any(t.endswith("Normalize") for t in types)

        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.max_length = int(st_config.get("max_seq_length") or self.tokenizer.model_max_length)
        self.max_length = min(self.max_length, 512)
        model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
        self.model = model.to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self._lock = threading.Lock()  # one forward pass at a time per encoder

    # -- encoding -----------------------------------------------------------------------

    def _batches(self, lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """Indices sorted by length (longest first), cut by text count and padded tokens."""
        order = np.argsort(-lengths, kind="stable")
        batches: list[np.ndarray] = []
        start = 0
        n = len(order)
        while start < n:
            longest = int(lengths[order[start]])
            take = max(1, min(batch_size, self.max_batch_tokens // max(1, longest)))
            batches.append(order[start : start + take])
            start += take
        return batches

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 256,
        *,
        progress: Callable[[float], None] | None = None,
    ) -> np.ndarray:
        """``(len(texts), dim)`` float32 embeddings, L2-normalised (as the model's config says).

        ``batch_size``: at most this many texts per forward pass (>= 1). ``progress`` is
        called with the fraction done after each batch. Raises TypeError unless every text
        is a str.
        """
        import torch

        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be strings")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids: list[list[int]] = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, add_special_tokens=True
        )["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        pad_id = self.tokenizer.pad_token_id or 0
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        batches = self._batches(lengths, batch_size)
        done = 0
        with self._lock, torch.inference_mode():
            for idx in batches:
                width = int(lengths[idx].max())
                input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                for row, i in enumerate(idx):
                    seq = ids[i]
                    input_ids[row, : len(seq)] = seq
                    mask[row, : len(seq)] = 1
                t_ids = torch.from_numpy(input_ids).to(self.device, non_blocking=True)
                t_mask = torch.from_numpy(mask).to(self.device, non_blocking=True)
                with torch.autocast(
                    device_type=self.device.type,
                    dtype=dtype or torch.float32,
                    enabled=dtype is not None,
                ):
                    hidden = self.model(
                        input_ids=t_ids,
                        attention_mask=t_mask,
                        token_type_ids=torch.zeros_like(t_ids),
                    ).last_hidden_state
                hidden = hidden.float()
                m = t_mask.unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                if self.normalize:
                    emb = torch.nn.functional.normalize(emb, p=2, dim=1)
                out[idx] = emb.cpu().numpy()
                done += len(idx)
                if progress is not None:
                    progress(done / len(texts))
        return out


# -- one encoder per process, per model version ------------------------------------------

_CACHE: dict[str, Encoder] = {}
_CACHE_LOCK = threading.Lock()


def get_encoder(
    model_id: str, path: str | os.PathLike[str], *, device: str | None = None, **kwargs: Any
) -> Encoder:
    """This process's encoder for ``model_id`` at ``path``, loaded once.

    When another model version becomes active, the next call with its id loads it and drops
    the previous one (one model in memory per process).
    """
    key = f"{model_id}\0{Path(path)}\0{device}"
    with _CACHE_LOCK:
        enc = _CACHE.get(key)
        if enc is None:
            enc = Encoder(path, device=device, **kwargs)
            _CACHE.clear()
            _CACHE[key] = enc
        return enc


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
