"""ONNX Runtime for the sentence encoder (``models.encoder.Encoder``): export, check, cache,
int8 quantisation and the inference session.

The BERT model plus mean pooling is exported once with ``torch.onnx.export`` (the TorchScript
exporter: it gives the graph that onnxruntime's BERT optimizer fuses into Attention,
SkipLayerNormalization and BiasGelu nodes; the dynamo exporter's graph does not fuse and was
slower), optimised with ``onnxruntime.transformers.optimizer``, checked against torch on a
probe batch and cached under ``$PRIVTEXT_DATA_DIR/cache/onnx``, keyed by the model directory
and by a hash of its weights and config, so changed weights are exported again. On this 2-core
CPU the ONNX path is about 1.7-1.9x the torch path in fp32 with vectors equal to 3e-7
(BENCHMARKS.md "Embeddings throughput"). ``precision="int8"`` (opt-in) quantises the weights
dynamically: faster again, but the vectors move.

The functions here raise when something fails; ``Encoder`` catches that and falls back to
torch. Nothing here downloads: the model path must be a local directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ONNX_OPSET = 17
ONNX_FORMAT = 1  # part of the cache key: bump when the exported graph changes
ONNX_CHECK_ATOL = 1e-4  # an export that differs more from torch on the probe is not used


def default_onnx_cache_dir() -> Path:
    return Path(os.environ.get("PRIVTEXT_DATA_DIR") or "data") / "cache" / "onnx"


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # lazy: probed, loaded by the first session  # noqa: F401
    except ImportError:
        return False
    return True


def weights_fingerprint(path: Path) -> str:
    """Hash of the model's weights and config (and of the export's format and torch version)."""
    import torch  # lazy: torch loads with the first model, not when the service starts

    h = hashlib.sha256(f"onnx {ONNX_FORMAT} opset {ONNX_OPSET} torch {torch.__version__}".encode())
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        f = path / name
        if f.is_file():
            with f.open("rb") as fh:
                h.update(name.encode() + hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()[:32]


def _probe(tokenizer: Any) -> dict[str, np.ndarray]:
    texts = ["", "a short probe", "a somewhat longer probe sentence, with padding around it"]
    enc = tokenizer(texts, padding=True, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def _export(path: Path, tokenizer: Any, out: Path) -> None:
    """Export BERT plus mean pooling to ``out`` (fp32, dynamic batch and sequence axes), fuse
    it with onnxruntime's BERT optimizer when that works, and check it against torch."""
    import torch  # lazy: only an export needs torch
    from transformers import AutoModel  # lazy: only an export needs transformers

    # Eager attention: its graph is the one the optimizer fuses into Attention nodes.
    model = AutoModel.from_pretrained(
        str(path), local_files_only=True, attn_implementation="eager"
    ).eval()

    class MeanPooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

    module = MeanPooled().eval()
    probe = _probe(tokenizer)  # padded, so the traced graph keeps the attention mask
    args = (torch.from_numpy(probe["input_ids"]), torch.from_numpy(probe["attention_mask"]))
    raw = out.with_name(out.name + ".raw")
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and trace notes
        torch.onnx.export(
            module,
            args,
            str(raw),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["input_ids", "attention_mask"],
            output_names=["mean_pooled"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "mean_pooled": {0: "batch"}},
        )
        expected = module(*args).numpy()
    try:
        from onnxruntime.transformers import optimizer  # lazy: only an export optimises

        cfg = model.config
        fused = optimizer.optimize_model(
            str(raw),
            model_type="bert",
            num_heads=int(cfg.num_attention_heads),
            hidden_size=int(cfg.hidden_size),
            opt_level=0,
            use_gpu=False,
        )
        fused.save_model_to_file(str(out))
        raw.unlink()
    except Exception as exc:  # the unfused graph is correct, only slower
        log.warning("onnxruntime BERT optimizer failed (%s); using the unfused export", exc)
        os.replace(raw, out)
    got = onnx_session(out, 1).run(None, probe)[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= ONNX_CHECK_ATOL:
        out.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export differs from torch by {diff:.3g} on the probe")


def _quantize(src: Path, out: Path) -> None:
    """Dynamic int8 quantisation of ``src``'s weights (per channel), except the feed-forward
    output projections, whose outlier activations cost the most accuracy when quantised
    (measured on 300 demo texts: mean cosine to fp32 0.992 without them, 0.987 with them)."""
    import onnx  # lazy: only int8 quantisation reads the graph
    from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: as onnx

    ffn_out = [
        n.name
        for n in onnx.load(str(src), load_external_data=False).graph.node
        if n.op_type == "MatMul"
        and n.name.endswith("/output/dense/MatMul")
        and "/attention/" not in n.name
    ]
    quantize_dynamic(
        str(src),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        nodes_to_exclude=ffn_out,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def onnx_model_file(path: Path, tokenizer: Any, cache_dir: Path, precision: str = "fp32") -> Path:
    """The cached ONNX file for the model in ``path``, exported when missing or when the
    weights changed (older exports of the same directory are removed).

    Files: ``cache_dir/<hash of the directory>/<hash of the weights>.<precision>.onnx``,
    written under a temporary name and renamed, so concurrent workers never read a partial
    file. ``precision``: "fp32" or "int8" (dynamically quantised weights).
    """
    folder = cache_dir / hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    key = weights_fingerprint(path)
    target = folder / f"{key}.{precision}.onnx"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / f"{key}.fp32.onnx"
    tmp_suffix = f".{os.getpid()}.{threading.get_ident()}.tmp"
    if not fp32.is_file():
        log.info("exporting %s to ONNX (%s)", path, fp32)
        tmp = fp32.with_name(fp32.name + tmp_suffix)
        try:
            _export(path, tokenizer, tmp)
            os.replace(tmp, fp32)
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".raw")):
                leftover.unlink(missing_ok=True)
    if precision != "fp32" and not target.is_file():
        tmp = target.with_name(target.name + tmp_suffix)
        try:
            _quantize(fp32, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    for old in folder.glob("*.onnx"):
        if not old.name.startswith(key + "."):
            old.unlink(missing_ok=True)
    return target


def onnx_session(file: Path, threads: int) -> Any:
    import onnxruntime as ort  # lazy: loads with the first model, not when the service starts

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])
