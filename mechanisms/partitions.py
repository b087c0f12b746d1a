"""Partition selection for keys that are not public (Desfontaines et al. 2022).

Each sender contributes to at most ``max_keys`` keys; a key's distinct-sender count gets
discrete Laplace (or Gaussian) noise and the key is released only when its noisy count reaches
a threshold. A key that only one sender has appears in one neighbour and not the other; the
threshold makes its release that improbable: with at most ``max_keys`` such keys the chance any
is released is at most delta' = delta / (1 + delta) (Laplace) or delta / 2 (Gaussian, whose
noise takes the other half). The whole release is (epsilon, delta)-DP; charge
:func:`partition_selection_event`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import numpy as np

from ._grid import check_coordinates
from .errors import InvalidParameterError, check_delta, check_positive
from .events import PrivacyEvent
from .gaussian import GaussianMechanism
from .laplace import LaplaceMechanism

__all__ = ["partition_threshold", "select_partitions", "partition_selection_event"]

MECHANISMS = ("laplace", "gaussian")


def _mechanism(
    epsilon: float, delta: float, max_keys: int, mechanism: str, rng: np.random.Generator | None
) -> tuple[LaplaceMechanism | GaussianMechanism, float]:
    """The noise mechanism and the delta left for the threshold."""
    epsilon = check_positive("epsilon", epsilon)
    delta = check_delta("delta", delta, allow_zero=False)
    keys = check_coordinates(max_keys)
    if mechanism == "laplace":
        return LaplaceMechanism(sensitivity=keys, epsilon=epsilon, rng=rng), delta / (1 + delta)
    if mechanism == "gaussian":
        mech = GaussianMechanism(
            sensitivity=math.sqrt(keys) * (1 + 1e-12), epsilon=epsilon, delta=delta / 2, rng=rng
        )
        return mech, delta / 2 / (1 + delta)
    raise InvalidParameterError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")


def _upper_tail(mech: LaplaceMechanism | GaussianMechanism, m: int) -> float:
    """P(noise >= m) for m >= 1, rounded up a little."""
    if isinstance(mech, LaplaceMechanism):
        p = math.nextafter(math.exp(-1.0 / mech.scale), 1.0)
        return math.exp(m * math.log(p)) / (1 + p) * (1 + 1e-9)
    sigma = mech.sigma
    ks = np.arange(0, int(math.ceil(40 * sigma)) + 40, dtype=np.float64)
    w = np.exp(-(ks**2) / (2 * sigma * sigma))
    total = w[0] + 2 * w[1:].sum()
    return float(w[m:].sum() / total) * (1 + 1e-9) if m < ks.size else 0.0


def partition_threshold(
    *, epsilon: float, delta: float, max_keys: int, mechanism: str = "laplace"
) -> int:
    """Smallest integer threshold t such that max_keys * P(1 + noise >= t) <= the threshold's
    share of delta.

    Args:
        epsilon: in (0, inf), for the noisy counts (sensitivity max_keys L1 / sqrt(max_keys) L2).
        delta: in (0, 1); partition selection is impossible with delta = 0.
        max_keys: integer >= 1, the most keys one sender may contribute to.
        mechanism: "laplace" or "gaussian".

    Raises InvalidParameterError for any parameter out of range.
    """
    mech, share = _mechanism(epsilon, delta, max_keys, mechanism, None)
    target = share / max_keys
    lo, hi = 1, 2
    while _upper_tail(mech, hi) > target:
        lo, hi = hi, hi * 2
    while lo < hi:  # smallest m with tail(m) <= target
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if _upper_tail(mech, mid) > target else (lo, mid)
    return lo + 1


def select_partitions(
    counts: Mapping[Hashable, int],
    *,
    epsilon: float,
    delta: float,
    max_keys: int,
    mechanism: str = "laplace",
    rng: np.random.Generator | None = None,
) -> dict[Hashable, int]:
    """Noisy distinct-sender counts of the keys whose noisy count reaches the threshold.

    ``counts`` is {key: distinct senders}, computed with each sender limited to ``max_keys``
    keys (see :func:`mechanisms.bounding.distinct_sender_counts`). Parameters as in
    :func:`partition_threshold`. Raises InvalidParameterError for bad parameters or counts that
    are not non-negative integers.
    """
    mech, _ = _mechanism(epsilon, delta, max_keys, mechanism, rng)
    threshold = partition_threshold(
        epsilon=epsilon, delta=delta, max_keys=max_keys, mechanism=mechanism
    )
    keys = list(counts)
    values = np.array([counts[k] for k in keys], dtype=np.int64) if keys else np.zeros(0, int)
    if (values < 0).any():
        raise InvalidParameterError("distinct-sender counts must be non-negative integers")
    noisy = np.asarray(mech.randomise(values))
    return {k: int(n) for k, n in zip(keys, noisy.tolist(), strict=True) if n >= threshold}


def partition_selection_event(*, epsilon: float, delta: float) -> PrivacyEvent:
    """What one :func:`select_partitions` call costs: an (epsilon, delta) event."""
    return PrivacyEvent.approx_dp(
        check_positive("epsilon", epsilon), check_delta("delta", delta, allow_zero=False)
    )
