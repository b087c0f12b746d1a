"""What a coordinator checks in a silo's update before it is averaged in (numpy only).

An update is the silo's trained weights, one array per trainable parameter of the global
model. It is rejected (and logged, never averaged) when it does not have exactly the global
model's arrays (names, shapes, float dtype), when any value is NaN or infinite, when it holds
more than ``max_bytes``, or when its L2 distance from the global weights exceeds ``max_norm``
(0: no bound). Every check reads the update only, never anything of a silo's corpus.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["rejection", "weighted_average"]

Arrays = Mapping[str, np.ndarray]


def rejection(
    update: Arrays, global_arrays: Arrays, *, max_bytes: int, max_norm: float = 0.0
) -> str | None:
    """Why ``update`` must be rejected, or None when it may be averaged in."""
    if set(update) != set(global_arrays):
        return "its arrays are not the global model's"
    size = sum(int(np.asarray(a).nbytes) for a in update.values())
    if size > max_bytes:
        return f"it holds {size} bytes, more than {max_bytes}"
    squared = 0.0
    for name, reference in global_arrays.items():
        array = np.asarray(update[name])
        if array.shape != np.shape(reference) or array.dtype.kind != "f":
            return f"array {name!r} has the wrong shape or dtype"
        if not np.isfinite(array).all():
            return "it holds NaN or infinite values"
        squared += float(np.square(array.astype(np.float64) - reference).sum())
    if max_norm > 0 and not math.sqrt(squared) <= max_norm:
        return f"its distance from the global model exceeds {max_norm}"
    return None


def weighted_average(updates: Sequence[Arrays], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """The weighted mean of accepted updates, array by array (float32)."""
    if not updates or len(updates) != len(weights) or min(weights) <= 0:
        raise ValueError("weighted_average needs updates and positive weights")
    total = float(sum(weights))
    pairs = list(zip(updates, weights, strict=True))
    return {
        name: np.asarray(
            sum(np.asarray(u[name], np.float64) * w for u, w in pairs) / total, np.float32
        )
        for name in updates[0]
    }
