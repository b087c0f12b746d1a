"""Renyi DP curves at fixed public orders: an additive summary a ledger can store in one row.

``rdp_vector(event)`` gives the event's RDP epsilons at :data:`ORDERS`; vectors add under
composition; ``epsilon_from_rdp(total, delta)`` converts a sum to a sound (epsilon, delta)-DP
bound. :data:`ORDERS` is part of the stored format: never reorder or change it, only add a new
versioned constant.

Curves used (all are upper bounds on the Renyi divergence of the mechanism, so sums are sound):

- pure epsilon-DP (``laplace``): the Renyi divergence of randomized response with parameter
  epsilon, ``log((e^(a eps) + e^((1-a) eps)) / (1 + e^eps)) / (a - 1)``. Every epsilon-DP pair of
  distributions is a post-processing of that pair (Kairouz, Oh, Viswanath 2015), and Renyi
  divergence obeys data processing, so this bounds any epsilon-DP mechanism; it is exact for the
  discrete Laplace with unit sensitivity. It never exceeds ``min(eps, a eps**2 / 2)``.
- discrete Gaussian (``gaussian``): rho-zCDP with rho = 1/(2 nm**2) (Canonne, Kamath, Steinke
  2020, Theorem 14), i.e. RDP ``a * rho`` at every order a.
- ``subsampled_gaussian``: dp-accounting's Poisson-subsampled Gaussian RDP (Mironov, Talwar,
  Zhang 2019) times ``steps``.
- ``approx_dp`` has no finite RDP curve: :func:`rdp_vector` raises for it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant as _rdp

from .errors import InvalidParameterError, check_delta
from .events import PrivacyEvent

__all__ = ["ORDERS", "rdp_vector", "epsilon_from_rdp", "pure_dp_rdp"]

ORDERS: tuple[float, ...] = tuple(
    [1 + i / 8 for i in range(1, 16)]
    + [3 + i / 4 for i in range(28)]
    + [float(a) for a in range(10, 33)]
    + [36.0, 40.0, 44.0, 48.0, 56.0, 64.0, 80.0, 96.0, 128.0, 160.0, 192.0, 256.0, 384.0]
    + [512.0, 768.0, 1024.0, 1536.0, 2048.0, 4096.0]
)
_ORDERS = np.array(ORDERS)


def pure_dp_rdp(epsilon: float, orders: np.ndarray = _ORDERS) -> np.ndarray:
    """RDP curve of any pure ``epsilon``-DP mechanism (randomized response bound), epsilon > 0."""
    a = np.asarray(orders, dtype=float)
    value = (np.logaddexp(a * epsilon, (1 - a) * epsilon) - np.logaddexp(0.0, epsilon)) / (a - 1)
    # Guard the cancellation of the two log-sum-exps (each about log 2 + a * epsilon, with a
    # rounding error of a few ulps): add a bound on that error, so the result stays above the
    # exact value, which is >= 0 (for a tiny epsilon the float difference can come out
    # negative, about -1e-16, and a negative RDP entry is refused by the ledger).
    slack = 8 * np.finfo(float).eps * (np.log(2.0) + a * epsilon + 1.0) / (a - 1)
    value = np.maximum(value * (1 + 1e-12) + slack, 0.0)
    # the zCDP bound a * epsilon**2 / 2, rounded up past its float rounding (two products)
    zcdp = a * epsilon**2 / 2 * (1 + 4 * np.finfo(float).eps)
    return np.minimum(value, np.minimum(epsilon, zcdp))


@functools.lru_cache(maxsize=4096)
def _rdp_cached(event: PrivacyEvent) -> tuple[float, ...]:
    if event.kind == "laplace":
        assert event.epsilon is not None
        curve = pure_dp_rdp(event.epsilon)
    elif event.kind == "gaussian":
        assert event.rho is not None
        curve = _ORDERS * event.rho
    elif event.kind == "subsampled_gaussian":
        assert event.sampling_rate is not None and event.noise_multiplier is not None
        assert event.steps is not None
        per_step = _rdp._compute_rdp_poisson_subsampled_gaussian(
            event.sampling_rate, event.noise_multiplier, ORDERS
        )
        curve = np.asarray(per_step, dtype=float) * event.steps
    else:
        raise InvalidParameterError(
            f"a {event.kind} event has no RDP curve; compose it by basic composition"
        )
    return tuple(float(x) for x in curve)


def rdp_vector(event: PrivacyEvent) -> list[float]:
    """The event's RDP epsilons at :data:`ORDERS` (additive under composition).

    Raises:
        InvalidParameterError: for ``approx_dp`` events (no RDP curve) or a non-event.
    """
    if not isinstance(event, PrivacyEvent):
        raise InvalidParameterError(f"expected a PrivacyEvent, got {type(event).__name__}")
    return list(_rdp_cached(event))


def epsilon_from_rdp(rdp: Sequence[float] | np.ndarray, delta: float) -> float:
    """Sound epsilon at ``delta`` for a summed RDP vector at :data:`ORDERS`.

    Uses dp-accounting's conversion (Canonne, Kamath, Steinke 2020 / Asoodeh et al. 2020):
    ``min_a rdp_a + log(1 - 1/a) - log(delta a) / (a - 1)``, floored at 0.

    Args:
        rdp: len(ORDERS) non-negative, non-NaN values (inf allowed: gives inf).
        delta: in [0, 1); at 0 the result is 0 for an all-zero vector and inf otherwise.

    Raises:
        InvalidParameterError: wrong length, NaN or negative entries, delta out of range.
    """
    delta = check_delta("delta", delta)
    values = np.asarray(rdp, dtype=float)
    if values.shape != (len(ORDERS),):
        raise InvalidParameterError(
            f"rdp must have {len(ORDERS)} entries (one per order), got shape {values.shape}"
        )
    if np.isnan(values).any() or (values < 0).any():
        raise InvalidParameterError("rdp entries must be non-negative numbers")
    eps, _ = _rdp.compute_epsilon(ORDERS, values.tolist(), delta)
    return float(eps) if not math.isnan(eps) else math.inf
