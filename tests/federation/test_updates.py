"""What a coordinator rejects, and how it averages (numpy only: a few ms)."""

from __future__ import annotations

import numpy as np
import pytest

from federation.updates import rejection, weighted_average

GLOBAL = {"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.float32)}
MAX = 10**6


def _update(**changes: np.ndarray) -> dict[str, np.ndarray]:
    return {**{k: v.copy() for k, v in GLOBAL.items()}, **changes}


def test_a_well_formed_update_is_accepted() -> None:
    assert rejection(_update(a=np.full((2, 3), 0.5, np.float32)), GLOBAL, max_bytes=MAX) is None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_infinite_values_are_rejected(bad: float) -> None:
    a = np.zeros((2, 3), np.float32)
    a[1, 2] = bad
    assert rejection(_update(a=a), GLOBAL, max_bytes=MAX) == "it holds NaN or infinite values"


def test_other_arrays_shapes_dtypes_and_sizes_are_rejected() -> None:
    missing = {"a": GLOBAL["a"]}
    extra = {**GLOBAL, "c": np.zeros(1, np.float32)}
    assert rejection(missing, GLOBAL, max_bytes=MAX) == "its arrays are not the global model's"
    assert rejection(extra, GLOBAL, max_bytes=MAX) == "its arrays are not the global model's"
    reshaped = _update(a=np.zeros((3, 2), np.float32))
    assert "wrong shape" in str(rejection(reshaped, GLOBAL, max_bytes=MAX))
    ints = _update(b=np.ones(4, np.int32))
    assert "wrong shape or dtype" in str(rejection(ints, GLOBAL, max_bytes=MAX))
    big = _update(b=np.ones(10**5, np.float32))  # 400 kB where 16 B are expected
    assert "bytes, more than" in str(rejection(big, GLOBAL, max_bytes=1000))


def test_an_update_too_far_from_the_global_model_is_rejected() -> None:
    far = _update(a=np.full((2, 3), 1.0, np.float32))  # distance sqrt(6) ~ 2.45
    assert rejection(far, GLOBAL, max_bytes=MAX, max_norm=3.0) is None
    assert "exceeds 2.0" in str(rejection(far, GLOBAL, max_bytes=MAX, max_norm=2.0))
    assert rejection(far, GLOBAL, max_bytes=MAX, max_norm=0.0) is None  # 0: no bound


def test_the_average_is_weighted_array_by_array() -> None:
    one = _update(a=np.full((2, 3), 1.0, np.float32))
    four = _update(a=np.full((2, 3), 4.0, np.float32), b=np.full(4, 3.0, np.float32))
    mean = weighted_average([one, four], [2.0, 1.0])
    np.testing.assert_allclose(mean["a"], np.full((2, 3), 2.0))  # (2*1 + 4) / 3
    np.testing.assert_allclose(mean["b"], np.full(4, 5.0 / 3.0), rtol=1e-6)  # (2*1 + 3) / 3
    assert mean["a"].dtype == np.float32
    with pytest.raises(ValueError):
        weighted_average([one], [0.0])
