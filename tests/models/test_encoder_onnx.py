"""models.encoder on ONNX Runtime: vectors equal to the torch path (fp32, within 1e-5), the
export cache (reused; rebuilt when the weights change), the fallback to torch when
onnxruntime is missing or a forward pass fails, and int8 as an opt-in that moves vectors.

The real export runs once per session (a few seconds); the cache tests replace it with a copy
of that export, so they check the cache's keying, not torch's exporter again."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import encoder as E
from models import onnx_runtime as R
from models.encoder import Encoder
from models.registry import base_model_path

pytestmark = pytest.mark.torch  # exports with torch, compares against it

TEXTS = [
    "hi",
    "",
    "How was your weekend? We went hiking up the hill behind the lake and it rained all day.",
    "ok " * 300,  # longer than the 256-token window: truncated like the torch path
    "Das Wetter ist heute schön.",
    "What's your favourite movie?",
]


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def onnx_encoder(onnx_cache: Path) -> Encoder:
    return Encoder(base_model_path(), device="cpu", runtime="onnx", onnx_cache_dir=onnx_cache)


@pytest.fixture(scope="session")
def torch_encoder() -> Encoder:
    return Encoder(base_model_path(), device="cpu", runtime="torch")


@pytest.fixture(scope="session")
def exported(onnx_encoder: Encoder, onnx_cache: Path) -> Path:
    """The fp32 file the session's real export wrote."""
    (file,) = onnx_cache.glob("*/*.fp32.onnx")
    return file


def test_onnx_vectors_equal_torch(onnx_encoder: Encoder, torch_encoder: Encoder) -> None:
    assert onnx_encoder.runtime == "onnx" and onnx_encoder.precision == "fp32"
    assert onnx_encoder._model is None  # the torch weights are not loaded beside the session
    ref = torch_encoder.encode(TEXTS)
    out = onnx_encoder.encode(TEXTS)
    assert out.shape == (len(TEXTS), 384) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # Batches of one (no padding at all) and mixed batches give the same vectors.
    one_by_one = np.concatenate([onnx_encoder.encode([t], batch_size=1) for t in TEXTS])
    np.testing.assert_allclose(one_by_one, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(onnx_encoder.encode(TEXTS, batch_size=2), ref, atol=1e-5, rtol=0)


def test_auto_is_onnx_on_cpu_and_env_selects(
    onnx_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(E.RUNTIME_ENV, raising=False)
    assert Encoder(base_model_path(), device="cpu", onnx_cache_dir=onnx_cache).runtime == "onnx"
    monkeypatch.setenv(E.RUNTIME_ENV, "torch")
    assert Encoder(base_model_path(), device="cpu", onnx_cache_dir=onnx_cache).runtime == "torch"
    # bf16 is a torch precision: auto picks torch for it.
    monkeypatch.setenv(E.RUNTIME_ENV, "auto")
    bf16 = Encoder(base_model_path(), device="cpu", precision="bf16", onnx_cache_dir=onnx_cache)
    assert bf16.runtime == "torch"
    # A host-wide "onnx" that cannot apply (bf16 here, or a GPU) means torch, not an error;
    # the same request as an argument is refused.
    monkeypatch.setenv(E.RUNTIME_ENV, "onnx")
    assert Encoder(base_model_path(), device="cpu", precision="bf16").runtime == "torch"
    with pytest.raises(ValueError):
        Encoder(base_model_path(), device="cpu", precision="bf16", runtime="onnx")


def test_bad_runtime_arguments() -> None:
    path = base_model_path()
    with pytest.raises(ValueError):
        Encoder(path, device="cpu", runtime="tensorrt")
    with pytest.raises(ValueError):
        Encoder(path, device="cpu", runtime="onnx", precision="bf16")
    with pytest.raises(ValueError):
        Encoder(path, device="cpu", runtime="torch", precision="int8")


def test_cache_is_reused(
    onnx_encoder: Encoder, onnx_cache: Path, exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_export(*args: Any) -> None:
        raise AssertionError("exported again although the weights did not change")

    monkeypatch.setattr(R, "_export", no_export)
    before = sorted(onnx_cache.rglob("*"))
    again = Encoder(base_model_path(), device="cpu", runtime="onnx", onnx_cache_dir=onnx_cache)
    assert again.runtime == "onnx"
    assert sorted(onnx_cache.rglob("*")) == before
    np.testing.assert_array_equal(again.encode(TEXTS[:3]), onnx_encoder.encode(TEXTS[:3]))


def test_cache_rebuilt_when_weights_change(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.numpy import load_file, save_file

    calls: list[Path] = []

    def fake_export(path: Path, tokenizer: Any, out: Path) -> None:
        calls.append(out)
        shutil.copyfile(exported, out)

    monkeypatch.setattr(R, "_export", fake_export)
    model = tmp_path / "model"
    shutil.copytree(base_model_path(), model)
    cache = tmp_path / "cache"
    first = R.onnx_model_file(model, None, cache)
    assert len(calls) == 1 and first.is_file()
    assert R.onnx_model_file(model, None, cache) == first and len(calls) == 1

    weights = load_file(str(model / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + np.float32(1e-3)
    save_file(weights, str(model / "model.safetensors"))
    second = R.onnx_model_file(model, None, cache)
    assert len(calls) == 2 and second != first and second.is_file()
    assert not first.exists()  # the stale export of this directory is removed
    assert [p.name for p in cache.rglob("*") if p.is_file()] == [second.name]


def test_falls_back_when_onnxruntime_is_missing(
    torch_encoder: Encoder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with caplog.at_level(logging.WARNING, logger="models.encoder"):
        enc = Encoder(base_model_path(), device="cpu", runtime="onnx", onnx_cache_dir=tmp_path)
    assert enc.runtime == "torch"
    assert "falling back to torch" in caplog.text
    assert not any(tmp_path.iterdir())  # nothing exported
    np.testing.assert_allclose(enc.encode(TEXTS), torch_encoder.encode(TEXTS), atol=1e-6)
    monkeypatch.delenv(E.RUNTIME_ENV, raising=False)
    assert Encoder(base_model_path(), device="cpu", onnx_cache_dir=tmp_path).runtime == "torch"


def test_falls_back_when_export_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_export(*args: Any) -> None:
        raise RuntimeError("ONNX export differs from torch by 0.5 on the probe")

    monkeypatch.setattr(R, "_export", broken_export)
    with caplog.at_level(logging.WARNING, logger="models.encoder"):
        enc = Encoder(base_model_path(), device="cpu", runtime="onnx", onnx_cache_dir=tmp_path)
    assert enc.runtime == "torch" and "differs from torch" in caplog.text
    assert not list(tmp_path.rglob("*.onnx*"))  # no partial file left behind
    assert enc.encode(["still answers"]).shape == (1, 384)


def test_falls_back_when_a_forward_pass_fails(
    onnx_cache: Path, torch_encoder: Encoder, caplog: pytest.LogCaptureFixture
) -> None:
    enc = Encoder(base_model_path(), device="cpu", runtime="onnx", onnx_cache_dir=onnx_cache)

    class Broken:
        def run(self, *args: Any) -> Any:
            raise RuntimeError("onnxruntime failed")

    enc._session = Broken()
    with caplog.at_level(logging.WARNING, logger="models.encoder"):
        out = enc.encode(TEXTS)
    assert enc.runtime == "torch" and "forward pass failed" in caplog.text
    np.testing.assert_allclose(out, torch_encoder.encode(TEXTS), atol=1e-6)


def test_int8_is_opt_in_and_moves_vectors(onnx_encoder: Encoder, onnx_cache: Path) -> None:
    int8 = Encoder(base_model_path(), device="cpu", precision="int8", onnx_cache_dir=onnx_cache)
    assert int8.runtime == "onnx" and int8.precision == "int8"
    cos = (int8.encode(TEXTS) * onnx_encoder.encode(TEXTS)).sum(1)
    # Close, but not "unchanged": which is why it is never the default.
    assert cos.min() > 0.9 and cos.mean() > 0.97
    assert list(onnx_cache.glob("*/*.int8.onnx"))
