"""The RDP curve of a pure-DP event: never negative, never below the exact value."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Spend
from mechanisms.rdp import ORDERS, pure_dp_rdp, rdp_vector


@pytest.mark.parametrize("epsilon", [1e-300, 1e-12, 1e-9, 1e-6, 1e-3, 0.1, 1.0, 10.0])
def test_pure_dp_curve_is_non_negative_and_admissible(epsilon: float) -> None:
    """A tiny epsilon used to give entries of about -1e-16 (cancellation), which the ledger
    refused with a 422 after the reservation was made."""
    curve = rdp_vector(PrivacyEvent.laplace(epsilon))
    assert min(curve) >= 0.0
    assert Spend.of(PrivacyEvent.laplace(epsilon)).epsilon(1e-5) >= 0.0


@pytest.mark.parametrize("epsilon", [1e-9, 1e-4, 0.05, 1.0, 5.0])
def test_pure_dp_curve_bounds_the_exact_value(epsilon: float) -> None:
    """Against the exact curve at 60 digits: the float curve is an upper bound at every order."""
    mpmath.mp.dps = 60
    eps = mpmath.mpf(epsilon)
    curve = pure_dp_rdp(epsilon)
    for a, got in zip(ORDERS, curve, strict=True):
        am = mpmath.mpf(a)
        exact = (
            mpmath.log(mpmath.exp(am * eps) + mpmath.exp((1 - am) * eps))
            - mpmath.log(1 + mpmath.exp(eps))
        ) / (am - 1)
        bound = min(exact, eps, am * eps**2 / 2)
        assert mpmath.mpf(float(got)) >= bound, (a, got, bound)
    assert np.all(np.isfinite(curve))
