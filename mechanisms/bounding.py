"""Contribution bounding: per-sender caps, clamping, and sensitivities from declared bounds.

The privacy unit is the sender. Every function here takes its bounds as parameters (public,
declared in the query) and never looks at the data to choose them. Caps choose which rows a
sender keeps uniformly at random (OS CSPRNG unless a test injects ``rng``), never by value.
Partition selection for non-public keys lives in :mod:`mechanisms.partitions` and is re-exported
here.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from ._grid import check_coordinates, check_granularity
from ._random import check_rng, random_words
from .errors import InvalidParameterError, check_bounds
from .events import PrivacyEvent
from .laplace import LaplaceMechanism
from .partitions import partition_selection_event, partition_threshold, select_partitions

__all__ = [
    "clamp",
    "count_sensitivity",
    "sum_sensitivity",
    "histogram_sensitivity",
    "cap_contributions",
    "cap_keys",
    "distinct_sender_counts",
    "noisy_mean",
    "NoisyMean",
    "partition_threshold",
    "select_partitions",
    "partition_selection_event",
]


def clamp(values: object, lower: float, upper: float) -> np.ndarray:
    """``values`` clipped to the declared [lower, upper] as float64; NaN becomes ``lower``.

    Raises InvalidParameterError for non-finite bounds or lower > upper (never for data).
    """
    lo, hi = check_bounds(lower, upper)
    array = np.asarray(values, dtype=np.float64)
    return np.clip(np.nan_to_num(array, nan=lo, posinf=hi, neginf=lo), lo, hi)


def count_sensitivity(max_contributions: int = 1) -> int:
    """L1 (= L2) sensitivity of a count when each sender adds at most ``max_contributions`` rows."""
    return check_coordinates(max_contributions)


def sum_sensitivity(lower: float, upper: float, max_contributions: int = 1) -> float:
    """Sensitivity of a sum of values clamped to [lower, upper], at most ``max_contributions``
    rows per sender, add/remove-one-sender neighbours: max_contributions * max(|lower|, |upper|).

    Raises InvalidParameterError for bad bounds or max_contributions < 1.
    """
    lo, hi = check_bounds(lower, upper)
    return check_coordinates(max_contributions) * max(abs(lo), abs(hi))


def histogram_sensitivity(max_keys: int, per_key: float = 1.0) -> tuple[float, float]:
    """(L1, L2) sensitivity of a histogram where a sender touches at most ``max_keys`` keys and
    changes each by at most ``per_key``: (max_keys * per_key, sqrt(max_keys) * per_key)."""
    keys = check_coordinates(max_keys)
    if not per_key > 0 or math.isinf(per_key):
        raise InvalidParameterError(f"per_key must be in (0, inf), got {per_key}")
    return keys * per_key, math.sqrt(keys) * per_key


def _random_rank(groups: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Rank of each row within its group under a uniformly random order."""
    priority = random_words(groups.size, rng)
    order = np.lexsort((priority, groups))
    sorted_groups = groups[order]
    starts = np.r_[0, np.nonzero(sorted_groups[1:] != sorted_groups[:-1])[0] + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, groups.size]))
    rank = np.empty(groups.size, dtype=np.int64)
    rank[order] = np.arange(groups.size) - first
    return rank


def cap_contributions(
    sender_ids: object, max_contributions: int, *, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Boolean mask keeping at most ``max_contributions`` rows per sender, chosen at random.

    Raises InvalidParameterError for max_contributions < 1 or a bad rng.
    """
    cap = check_coordinates(max_contributions)
    rng = check_rng(rng)
    senders = np.asarray(sender_ids)
    if senders.size == 0:
        return np.zeros(0, dtype=bool)
    _, groups = np.unique(senders, return_inverse=True)
    return _random_rank(groups.reshape(-1), rng) < cap


def cap_keys(
    sender_ids: object, keys: object, max_keys: int, *, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (sender, key) pairs with at most ``max_keys`` keys per sender, chosen at random.

    Returns (senders, keys) arrays of the kept pairs. Raises InvalidParameterError for
    max_keys < 1, mismatched lengths or a bad rng.
    """
    cap = check_coordinates(max_keys)
    rng = check_rng(rng)
    s, k = np.asarray(sender_ids), np.asarray(keys)
    if s.shape != k.shape or s.ndim != 1:
        raise InvalidParameterError("sender_ids and keys must be 1-d arrays of the same length")
    if s.size == 0:
        return s, k
    _, s_codes = np.unique(s, return_inverse=True)
    _, k_codes = np.unique(k, return_inverse=True)
    pairs = np.unique(np.stack([s_codes, k_codes], axis=1), axis=0, return_index=True)[1]
    pair_senders = s_codes[pairs]
    keep = pairs[_random_rank(pair_senders, rng) < cap]
    return s[keep], k[keep]


def distinct_sender_counts(
    sender_ids: object, keys: object, max_keys: int, *, rng: np.random.Generator | None = None
) -> dict[Hashable, int]:
    """{key: number of distinct senders}, each sender counted for at most ``max_keys`` keys."""
    _, kept_keys = cap_keys(sender_ids, keys, max_keys, rng=rng)
    values, counts = np.unique(kept_keys, return_counts=True)
    pairs = zip(values.tolist(), counts.tolist(), strict=True)
    return {value: int(count) for value, count in pairs}


@dataclass(frozen=True)
class NoisyMean:
    """A mean released as noisy sum / noisy count, with its (approximate) interval and cost."""

    mean: float
    noisy_sum: float
    noisy_count: int
    approx_half_width: float  # delta-method approximation from the two exact intervals
    events: tuple[PrivacyEvent, ...]


def noisy_mean(
    values: object,
    *,
    lower: float,
    upper: float,
    epsilon: float,
    max_contributions: int = 1,
    granularity: float = 2.0**-10,
    level: float = 0.95,
    rng: np.random.Generator | None = None,
) -> NoisyMean:
    """Mean of values already capped per sender: clamp, then noisy sum and noisy count with
    epsilon / 2 each (Laplace). The mean is clamped to [lower, upper]; with a noisy count below 1
    it is the midpoint. Its interval is approximate (ratio of two noisy values): say so.

    Raises InvalidParameterError for bad bounds, epsilon, granularity or level.
    """
    lo, hi = check_bounds(lower, upper)
    g = check_granularity(granularity)
    assert g is not None
    clamped = clamp(values, lo, hi)
    # fixed-point sum (Casacuberta et al. 2022): each value on the grid, summed in int64
    units = np.rint(clamped / g).astype(np.int64)
    per_row = max(abs(round(lo / g)), abs(round(hi / g)), 1)
    if per_row * max(units.size, 1) > 2**52:
        raise InvalidParameterError("too many rows for this granularity and these bounds")
    sum_mech = LaplaceMechanism(
        sensitivity=check_coordinates(max_contributions) * per_row, epsilon=epsilon / 2, rng=rng
    )
    count_mech = LaplaceMechanism(
        sensitivity=count_sensitivity(max_contributions), epsilon=epsilon / 2, rng=rng
    )
    noisy_sum = float(sum_mech.randomise(int(units.sum()))) * g
    noisy_count = int(count_mech.randomise(int(clamped.size)))
    if noisy_count < 1:
        mean, half = (lo + hi) / 2, (hi - lo) / 2
    else:
        mean = min(max(noisy_sum / noisy_count, lo), hi)
        s_hw = sum_mech.confidence_interval(level) * g
        c_hw = count_mech.confidence_interval(level)
        half = min((s_hw + abs(mean) * c_hw) / max(noisy_count - c_hw, 1), (hi - lo) / 2)
    return NoisyMean(mean, noisy_sum, noisy_count, half, (sum_mech.event(), count_mech.event()))
