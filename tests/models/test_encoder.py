"""models.encoder: shape, normalisation, determinism, batching invariance, and agreement with
sentence-transformers' encode on the same weights (fp32 on the CPU: within 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest

from models.encoder import Encoder, clear_cache, default_device, get_encoder
from models.registry import base_model_path

pytestmark = pytest.mark.torch  # encodes with torch

TEXTS = [
    "hi",
    "How was your weekend? We went hiking up the hill behind the lake and it rained all day.",
    "",
    "ok " * 300,  # longer than the 256-token window: truncated like sentence-transformers
    "Das Wetter ist heute schön.",
    "What's your favourite movie?",
]


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    return get_encoder("base", base_model_path(), device="cpu")


def test_shape_dtype_and_unit_norm(encoder: Encoder) -> None:
    out = encoder.encode(TEXTS)
    assert out.shape == (len(TEXTS), 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_deterministic_and_independent_of_batching(encoder: Encoder) -> None:
    a = encoder.encode(TEXTS)
    b = encoder.encode(TEXTS)
    np.testing.assert_array_equal(a, b)
    one_by_one = np.concatenate([encoder.encode([t], batch_size=1) for t in TEXTS])
    np.testing.assert_allclose(one_by_one, a, atol=1e-5)
    # The same text in another batch, at another position, gets the same vector.
    c = encoder.encode(["something else entirely", TEXTS[1], "x"], batch_size=2)
    np.testing.assert_allclose(c[1], a[1], atol=1e-5)


def test_matches_sentence_transformers(encoder: Encoder) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(base_model_path()), device="cpu")
    ref = st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    out = encoder.encode(TEXTS)
    assert np.abs(ref - out).max() < 1e-5


def test_token_budget_batches(encoder: Encoder) -> None:
    lengths = np.array([3, 250, 10, 250, 7, 40] * 50)
    batches = encoder._batches(lengths, batch_size=64)
    seen = np.sort(np.concatenate(batches))
    np.testing.assert_array_equal(seen, np.arange(len(lengths)))
    for idx in batches:
        assert len(idx) <= 64
        assert len(idx) == 1 or len(idx) * lengths[idx].max() <= encoder.max_batch_tokens
    widths = [int(lengths[idx].max()) for idx in batches]
    assert widths == sorted(widths, reverse=True)  # longest first, so padding stays small


def test_empty_input_and_bad_arguments(encoder: Encoder) -> None:
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode(["a", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        encoder.encode(["a"], batch_size=0)


def test_constructor_checks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotFoundError):
        Encoder(tmp_path)
    with pytest.raises(ValueError):
        Encoder(base_model_path(), device="cpu", precision="int3")
    with pytest.raises(ValueError):
        Encoder(base_model_path(), device="cpu", precision="fp16")


def test_device_is_chosen_automatically() -> None:
    import torch

    assert default_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_one_encoder_per_model_version(encoder: Encoder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    assert get_encoder("base", base_model_path(), device="cpu") is encoder
    # Another version (a copy of the weights under another id) replaces it in the cache.
    other = tmp_path / "m"
    shutil.copytree(base_model_path(), other)
    e2 = get_encoder("m-other", other, device="cpu")
    assert e2 is not encoder
    assert get_encoder("m-other", other, device="cpu") is e2
    clear_cache()
    assert get_encoder("base", base_model_path(), device="cpu") is not encoder


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_close_to_cpu(encoder: Encoder) -> None:
    fp16 = Encoder(base_model_path())
    assert fp16.device.type == "cuda" and fp16.precision == "fp16"
    assert (fp16.encode(TEXTS) * encoder.encode(TEXTS)).sum(1).min() > 0.9999
    fp32 = Encoder(base_model_path(), device="cuda", precision="fp32")
    np.testing.assert_allclose(fp32.encode(TEXTS), encoder.encode(TEXTS), atol=1e-5)


def test_bf16_on_cpu_is_close(encoder: Encoder) -> None:
    bf16 = Encoder(base_model_path(), device="cpu", precision="bf16")
    cos = (bf16.encode(TEXTS) * encoder.encode(TEXTS)).sum(1)
    assert cos.min() > 0.999
