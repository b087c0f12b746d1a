"""Sentence embeddings from a sentence-transformers directory (MiniLM: mean pooling, L2 norm).

``Encoder`` loads the directory's BERT model and fast tokenizer directly (no
sentence-transformers module chain at run time) and encodes with:

* length-sorted, token-budget batches: texts are sorted by token count and cut into batches of
  at most ``max_batch_tokens`` padded tokens, so short texts go in large batches and long texts
  in small ones, with almost no padding (``batch_size`` caps the number of texts per batch);
  the budget is 16,384 tokens on CUDA and 1,024 on the CPU, where batches that stay in cache
  are faster (on 2 cores, 1,000 demo texts: ONNX 2.6-2.8 s at 512-1,024 tokens vs 4.5 s at
  16,384; torch 4.6 s vs 7.7 s);
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

On the CPU the forward pass runs by default on ONNX Runtime (``runtime="auto"``; the
``PRIVTEXT_EMBEDDING_RUNTIME`` environment variable sets the default: auto, torch or onnx);
the export, its cache keyed by the weights, the check against torch and int8 quantisation
(``precision="int8"``, opt-in, ONNX only) live in ``models.onnx_runtime``. When onnxruntime
is missing, or the export, check or a forward pass fails, the encoder logs a warning and uses
torch: an embedding request never fails for the runtime's sake. CUDA always uses torch.

Nothing here downloads: the path must be a local directory (``HF_HUB_OFFLINE`` is set).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.onnx_runtime import (
    default_onnx_cache_dir,
    onnx_model_file,
    onnx_session,
    onnxruntime_available,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
RUNTIMES = ("auto", "torch", "onnx")
RUNTIME_ENV = "PRIVTEXT_EMBEDDING_RUNTIME"
CUDA_BATCH_TOKENS = 16384  # padded tokens per batch (see the module docstring)
CPU_BATCH_TOKENS = 1024


def default_device() -> str:
    import torch  # lazy: torch loads with the first model, not when the service starts

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_runtime() -> str:
    """``$PRIVTEXT_EMBEDDING_RUNTIME`` (auto, torch or onnx), "auto" when unset."""
    return os.environ.get(RUNTIME_ENV, "").strip().lower() or "auto"


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _precision(device: Any, precision: str) -> str:
    """The precision to run on ``device`` (a torch device), "auto" being fp16 on CUDA and fp32
    elsewhere; ValueError for fp16 on the CPU."""
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return precision


def _runtime(device: Any, precision: str, runtime: str, *, from_env: bool) -> str:
    """The runtime that will run: "auto" resolved (ONNX on the CPU in fp32 or int8, else
    torch), an ONNX setting from the environment that cannot apply replaced by torch (logged);
    ValueError for a combination asked for explicitly that cannot run."""
    on_cpu = device.type == "cpu"
    if from_env and runtime == "onnx" and not (on_cpu and precision in ("fp32", "int8")):
        # A host-wide setting that cannot apply here (a GPU, bf16): torch, not an error.
        log.warning("%s=onnx ignored for %s %s: using torch", RUNTIME_ENV, device, precision)
        runtime = "torch"
    if runtime == "onnx" and not on_cpu:
        raise ValueError("the ONNX runtime runs on the CPU only")
    if runtime == "onnx" and precision not in ("fp32", "int8"):
        raise ValueError("the ONNX runtime runs fp32 or int8")
    if precision == "int8" and (runtime == "torch" or not on_cpu):
        raise ValueError("int8 needs the ONNX runtime on the CPU")
    if runtime == "auto":
        runtime = "onnx" if on_cpu and precision in ("fp32", "int8") else "torch"
    return runtime


def _normalizes(path: Path) -> bool:
    """Whether the sentence-transformers model at ``path`` L2-normalises its output (a
    ``Normalize`` module, or no module list); ValueError unless it mean-pools."""
    pooling = _read_json(path / "1_Pooling" / "config.json")
    if pooling and not pooling.get("pooling_mode_mean_tokens", True):
        raise ValueError("only mean-pooling sentence-transformers models are supported")
    modules = _read_json(path / "modules.json")
    types: set[str] = {m.get("type", "") for m in modules} if isinstance(modules, list) else set()
    return (not types) or any(t.endswith("Normalize") for t in types)


# -- the encoder --------------------------------------------------------------------------


class Encoder:
    """Encode texts with the sentence-transformers model in ``path``.

    ``device``: "cpu", "cuda", "cuda:N" or None (CUDA when present). ``precision``: "auto"
    (fp16 autocast on CUDA, fp32 on the CPU), "fp32", "bf16", "fp16" (CUDA only) or "int8"
    (ONNX on the CPU only; moves vectors). ``runtime``: "auto" (ONNX Runtime on the CPU for
    fp32 and int8 when onnxruntime imports, torch otherwise), "torch", "onnx" (CPU only) or
    None (``$PRIVTEXT_EMBEDDING_RUNTIME``, else "auto"); ``self.runtime`` says which one runs
    (torch after a fallback). ``threads``: intra-op threads on the CPU (None: torch's setting
    for torch, the available cores for ONNX). ``onnx_cache_dir``: where exports are cached
    (None: ``$PRIVTEXT_DATA_DIR/cache/onnx``). ``max_batch_tokens``: padded tokens per
    batch, >= 256 (None: 16,384 on CUDA, 1,024 on the CPU).
    Raises FileNotFoundError when ``path`` is not a model directory, ValueError for a bad
    precision or runtime, or a combination that cannot run.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str | None = None,
        *,
        precision: str = "auto",
        runtime: str | None = None,
        threads: int | None = None,
        max_batch_tokens: int | None = None,
        onnx_cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        import torch  # lazy: torch loads with the first model, not when the service starts
        from transformers import AutoConfig, AutoTokenizer  # lazy: as torch

        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"not a model directory: {self.path}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        from_env = runtime is None
        runtime = default_runtime() if runtime is None else runtime
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}")
        self.device = torch.device(device or default_device())
        on_cpu = self.device.type == "cpu"
        precision = _precision(self.device, precision)
        runtime = _runtime(self.device, precision, runtime, from_env=from_env)
        self.precision = precision
        self.threads = threads
        if threads is not None and on_cpu:
            torch.set_num_threads(max(1, threads))
        if max_batch_tokens is None:
            max_batch_tokens = CPU_BATCH_TOKENS if on_cpu else CUDA_BATCH_TOKENS
        if max_batch_tokens < 256:
            raise ValueError("max_batch_tokens must be >= 256")
        self.max_batch_tokens = max_batch_tokens

        st_config = _read_json(self.path / "sentence_bert_config.json")
        self.normalize = _normalizes(self.path)

        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.max_length = int(st_config.get("max_seq_length") or self.tokenizer.model_max_length)
        self.max_length = min(self.max_length, 512)
        self.dim = int(AutoConfig.from_pretrained(str(self.path)).hidden_size)
        self._lock = threading.Lock()  # one forward pass at a time per encoder
        self._model: Any = None
        self._session: Any = None
        self.runtime = "torch"
        if runtime == "onnx":
            self._start_onnx(onnx_cache_dir, threads)
        if self.runtime == "torch":
            self._torch_model()

    def _start_onnx(self, cache_dir: str | os.PathLike[str] | None, threads: int | None) -> None:
        """Run on ONNX Runtime, or fall back to torch (logged) when it is missing or fails."""
        if not onnxruntime_available():
            self._fall_back("onnxruntime is not installed")
            return
        cache = Path(cache_dir) if cache_dir else default_onnx_cache_dir()
        try:
            file = onnx_model_file(self.path, self.tokenizer, cache, self.precision)
            self._session = onnx_session(file, threads or available_cores())
            self.runtime = "onnx"
        except Exception as exc:  # never fail an embedding request for the runtime's sake
            self._fall_back(f"ONNX runtime unavailable ({type(exc).__name__}: {exc})")

    @property
    def model(self) -> Any:
        """The torch model (loaded on first use when the ONNX runtime runs)."""
        return self._torch_model()

    def _torch_model(self) -> Any:
        if self._model is None:
            from transformers import AutoModel  # lazy: only when torch runs the model

            model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
            self._model = model.to(self.device).eval()
        return self._model

    def _fall_back(self, why: str) -> None:
        log.warning("embeddings for %s: %s; falling back to torch (fp32)", self.path, why)
        self._session = None
        self.runtime = "torch"
        if self.precision == "int8":
            self.precision = "fp32"

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
        done = 0
        with self._lock:
            for idx in self._batches(lengths, batch_size):
                width = int(lengths[idx].max())
                input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                for row, i in enumerate(idx):
                    seq = ids[i]
                    input_ids[row, : len(seq)] = seq
                    mask[row, : len(seq)] = 1
                out[idx] = self._forward(input_ids, mask)
                done += len(idx)
                if progress is not None:
                    progress(done / len(texts))
        return out

    def _forward(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean-pooled (and normalised) embeddings of one padded batch."""
        if self._session is not None:
            try:
                feed = {"input_ids": input_ids, "attention_mask": mask}
                emb = np.asarray(self._session.run(None, feed)[0], dtype=np.float32)
            except Exception as exc:
                self._fall_back(f"ONNX forward pass failed ({type(exc).__name__}: {exc})")
            else:
                if self.normalize:
                    norm = np.linalg.norm(emb, axis=1, keepdims=True)
                    emb = emb / np.maximum(norm, 1e-12)
                return emb
        return self._forward_torch(input_ids, mask)

    def _forward_torch(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch  # lazy: only when torch runs the model

        model = self._torch_model()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.inference_mode():
            t_ids = torch.from_numpy(input_ids).to(self.device, non_blocking=True)
            t_mask = torch.from_numpy(mask).to(self.device, non_blocking=True)
            with torch.autocast(
                device_type=self.device.type,
                dtype=dtype or torch.float32,
                enabled=dtype is not None,
            ):
                hidden = model(
                    input_ids=t_ids,
                    attention_mask=t_mask,
                    token_type_ids=torch.zeros_like(t_ids),
                ).last_hidden_state
            hidden = hidden.float()
            m = t_mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, p=2, dim=1)
            return emb.cpu().numpy()  # type: ignore[no-any-return]


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
    key = f"{model_id}\0{Path(path)}\0{device}\0{sorted(kwargs.items())}"
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
