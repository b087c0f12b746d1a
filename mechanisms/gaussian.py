"""The discrete Gaussian mechanism: rho-zCDP integer noise on a power-of-two grid."""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
from scipy.stats import norm

from ._grid import GridMechanism, float_down, float_up
from .errors import InvalidParameterError, check_delta, check_level, check_positive
from .events import PrivacyEvent
from .rdp import ORDERS, epsilon_from_rdp, rdp_vector
from .samplers import discrete_gaussian, exact_sigma_squared

__all__ = ["GaussianMechanism"]

_EXACT_CI_LIMIT = 1e5  # sigma (grid units) up to which intervals are summed from the pmf


def _abs_cdf(sigma: float) -> np.ndarray:
    """P(|X| <= k) for k = 0, 1, ..., about 14 sigma, X discrete Gaussian(sigma)."""
    ks = np.arange(int(math.ceil(14 * sigma)) + 3, dtype=np.float64)
    weights = np.exp(-(ks**2) / (2 * sigma * sigma))
    weights[1:] *= 2
    return np.cumsum(weights) / weights.sum()


@functools.lru_cache(maxsize=4096)
def _quantile(sigma: float, level: float) -> int:
    """Smallest k >= 0 with P(|X| <= k) >= level (normal approximation beyond 1e5)."""
    if sigma > _EXACT_CI_LIMIT:
        return max(0, math.ceil(norm.ppf((1 + level) / 2) * sigma - 0.5))
    cdf = _abs_cdf(sigma)
    return min(int(np.searchsorted(cdf, level * (1 - 1e-15))), cdf.size - 1)


def _rho_for(epsilon: float, delta: float) -> float:
    """Largest rho whose RDP curve (alpha * rho at ORDERS) converts to at most epsilon at delta."""
    orders = np.asarray(ORDERS)
    lo, hi = 0.0, max(epsilon, 1.0) * 4
    for _ in range(64):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if epsilon_from_rdp(orders * mid, delta) <= epsilon else (lo, mid)
    return lo


class GaussianMechanism(GridMechanism):
    """Discrete Gaussian noise; rho = effective L2 sensitivity**2 / (2 sigma**2) zCDP.

    Args:
        sensitivity: L2 sensitivity in (0, inf), in the statistic's units.
        rho: zCDP cost in (0, inf); or ``epsilon`` in (0, inf) with ``delta`` in (0, 1), for
            which the largest rho whose RDP conversion gives (epsilon, delta) is used; or
            ``sigma`` in (0, inf). Exactly one of the three ways.
        granularity: None for an integer statistic, else a power of two g in [2**-40, 2**40].
        coordinates: most coordinates one privacy unit can change (rounding adds sqrt(c) g).
        rng: None for the OS CSPRNG; a seeded numpy Generator only in tests.

    sigma may be rounded up slightly (to the exact sampler's rational sigma**2); ``sigma`` and
    ``rho`` report the values used (rho rounded up).

    Raises:
        InvalidParameterError: any parameter out of range, or not exactly one way of sizing.
    """

    def __init__(
        self,
        *,
        sensitivity: float,
        rho: float | None = None,
        epsilon: float | None = None,
        delta: float | None = None,
        sigma: float | None = None,
        granularity: float | None = None,
        coordinates: int = 1,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(
            sensitivity=sensitivity, granularity=granularity, coordinates=coordinates, rng=rng
        )
        ways = (rho is not None) + (epsilon is not None or delta is not None) + (sigma is not None)
        if ways != 1:
            raise InvalidParameterError("give exactly one of rho, (epsilon, delta) and sigma")
        unit = Fraction(self.unit)
        rounding = 0.0
        if self.granularity is not None:
            rounding = math.nextafter(math.sqrt(self.coordinates), math.inf) * self.granularity
        self._effective = Fraction(self.sensitivity) + Fraction(rounding)
        self.target_epsilon: float | None = None
        self.target_delta: float | None = None
        if epsilon is not None or delta is not None:
            if epsilon is None or delta is None:
                raise InvalidParameterError("epsilon and delta go together")
            self.target_epsilon = check_positive("epsilon", epsilon)
            self.target_delta = check_delta("delta", delta, allow_zero=False)
            rho = _rho_for(self.target_epsilon, self.target_delta)
        if rho is not None:
            rho = check_positive("rho", rho)
            wanted = float_up(self._effective / unit) / math.sqrt(2 * rho)
            # two ulps cover the rounding of the division and the square root
            sigma_units = math.nextafter(math.nextafter(wanted, math.inf), math.inf)
        else:
            sigma_units = float_up(Fraction(check_positive("sigma", sigma)) / unit)
        self._sigma_units = sigma_units
        self._sigma2_units = exact_sigma_squared(sigma_units)

    @property
    def sigma(self) -> float:
        """Noise standard-deviation parameter in the statistic's units (rounded up)."""
        return math.nextafter(math.sqrt(float(self._sigma2_units)), math.inf) * self.unit

    @property
    def rho(self) -> float:
        """zCDP cost: effective sensitivity**2 / (2 sigma**2), rounded up."""
        return float_up(self._effective**2 / (2 * self._sigma2_units * Fraction(self.unit) ** 2))

    @property
    def noise_multiplier(self) -> float:
        """sigma / effective L2 sensitivity (rounded down), as the accountant takes it."""
        return float_down(Fraction(math.sqrt(0.5 / self.rho)))

    @property
    def effective_sensitivity(self) -> float:
        """Declared sensitivity plus the grid's rounding term (rounded up)."""
        return float_up(self._effective)

    def epsilon_at(self, delta: float) -> float:
        """A sound epsilon at ``delta`` in (0, 1) for one release (RDP conversion)."""
        return epsilon_from_rdp(rdp_vector(self.event()), check_delta("delta", delta))

    @property
    def variance(self) -> float:
        """Variance of the noise (at most sigma**2)."""
        s = math.sqrt(float(self._sigma2_units))
        if s > _EXACT_CI_LIMIT:
            return self.sigma**2
        ks = np.arange(-int(14 * s) - 3, int(14 * s) + 4, dtype=np.float64)
        w = np.exp(-(ks**2) / (2 * s * s))
        return float((ks**2 * w).sum() / w.sum()) * self.unit**2

    def confidence_interval(self, level: float = 0.95) -> float:
        """Half-width h with P(|output - true value| <= h) >= level, level in (0, 1).

        The exact quantile of the discrete noise (summed from its pmf; for sigma above 1e5 grid
        units the normal approximation), plus the rounding bound g/2 on a grid.
        """
        sigma = math.sqrt(float(self._sigma2_units))
        return _quantile(sigma, check_level(level)) * self.unit + self.rounding_error

    def _draw(self, size: int) -> np.ndarray:
        noise = discrete_gaussian(self._sigma_units, size, rng=self._rng)
        assert isinstance(noise, np.ndarray)
        return noise

    def event(self) -> PrivacyEvent:
        """The privacy event to charge for one call of :meth:`randomise`."""
        return PrivacyEvent.gaussian(self.noise_multiplier)

    @classmethod
    def from_accuracy(
        cls,
        *,
        sensitivity: float,
        half_width: float,
        level: float = 0.95,
        granularity: float | None = None,
        coordinates: int = 1,
        rng: np.random.Generator | None = None,
    ) -> GaussianMechanism:
        """The cheapest (largest-sigma) mechanism whose ``confidence_interval(level)`` is at most
        ``half_width`` (> 0, and at least g/2 on a grid).

        Raises InvalidParameterError when no mechanism can meet it or a parameter is invalid.
        """
        level = check_level(level)
        half_width = check_positive("half_width", half_width)
        probe = cls(
            sensitivity=sensitivity,
            sigma=1.0,
            granularity=granularity,
            coordinates=coordinates,
            rng=rng,
        )
        k = math.floor((half_width - probe.rounding_error) / probe.unit)
        if k < 0:
            raise InvalidParameterError("half_width is below the grid's rounding error")
        lo, hi = 2.0**-20, max(2.0 * (k + 1), 1.0)  # sigma in grid units
        if _quantile(lo, level) > k:
            raise InvalidParameterError("no Gaussian mechanism meets this accuracy")
        for _ in range(60):
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if _quantile(mid, level) <= k else (lo, mid)
        sigma = float_down(Fraction(lo) * Fraction(probe.unit))
        for step in range(64):
            mech = cls(
                sensitivity=sensitivity,
                sigma=sigma,
                granularity=granularity,
                coordinates=coordinates,
                rng=rng,
            )
            if mech.confidence_interval(level) <= half_width:
                return mech
            sigma *= 1 - 1e-9 * 2.0**step
        raise InvalidParameterError("no Gaussian mechanism meets this accuracy")  # pragma: no cover
