"""The discrete Laplace mechanism: pure epsilon-DP integer noise on a power-of-two grid."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from ._grid import GridMechanism, float_down, float_up
from .errors import InvalidParameterError, check_level, check_positive
from .events import PrivacyEvent
from .samplers import discrete_laplace, exact_laplace_scale

__all__ = ["LaplaceMechanism"]


def _tail(p: float, k: int) -> float:
    """P(|X| > k) for the discrete Laplace with parameter p = exp(-1/scale)."""
    return 2.0 * math.exp((k + 1) * math.log(p)) / (1.0 + p)


def _quantile(p: float, level: float) -> int:
    """Smallest k >= 0 with P(|X| <= k) >= level."""
    if p == 0.0:
        return 0
    k = max(0, math.ceil(math.log((1 - level) * (1 + p) / 2) / math.log(p) - 1))
    while _tail(p, k) > 1 - level:
        k += 1
    while k > 0 and _tail(p, k - 1) <= 1 - level:
        k -= 1
    return k


class LaplaceMechanism(GridMechanism):
    """Discrete Laplace noise with pure epsilon-DP: epsilon = effective sensitivity / scale.

    Args:
        sensitivity: L1 sensitivity of the statistic, in (0, inf), in the statistic's units.
        epsilon: in (0, inf); the scale is then (sensitivity + coordinates * g) / epsilon.
        scale: in (0, inf) instead of epsilon (exactly one of the two).
        granularity: None for an integer statistic, else a power of two g in [2**-40, 2**40].
        coordinates: most coordinates one privacy unit can change (for the rounding term).
        rng: None for the OS CSPRNG; a seeded numpy Generator only in tests.

    The scale actually used may be a little larger than requested (it is rounded up to what the
    exact sampler draws from and to the grid); ``scale`` and ``epsilon`` report the values used,
    epsilon rounded up.

    Raises:
        InvalidParameterError: any parameter out of range, both or neither of epsilon and scale.
    """

    def __init__(
        self,
        *,
        sensitivity: float,
        epsilon: float | None = None,
        scale: float | None = None,
        granularity: float | None = None,
        coordinates: int = 1,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(
            sensitivity=sensitivity, granularity=granularity, coordinates=coordinates, rng=rng
        )
        if (epsilon is None) == (scale is None):
            raise InvalidParameterError("give exactly one of epsilon and scale")
        unit = Fraction(self.unit)
        self._effective = Fraction(self.sensitivity) + (
            self.coordinates * unit if self.granularity is not None else 0
        )
        if epsilon is not None:
            wanted = self._effective / Fraction(check_positive("epsilon", epsilon))
        else:
            wanted = Fraction(check_positive("scale", scale))
        self._scale_units = float_up(wanted / unit)
        self._exact_units = exact_laplace_scale(self._scale_units)

    @property
    def scale(self) -> float:
        """Noise scale in the statistic's units (rounded up)."""
        return float_up(self._exact_units * Fraction(self.unit))

    @property
    def epsilon(self) -> float:
        """Pure DP cost: effective L1 sensitivity / scale (rounded up)."""
        return float_up(self._effective / (self._exact_units * Fraction(self.unit)))

    @property
    def effective_sensitivity(self) -> float:
        """Declared sensitivity plus the grid's rounding term (rounded up)."""
        return float_up(self._effective)

    @property
    def _p(self) -> float:
        return math.exp(-1.0 / float(self._exact_units))

    @property
    def variance(self) -> float:
        """Variance of the noise: 2p / (1 - p)**2 grid units squared."""
        p = self._p
        return 2 * p / (1 - p) ** 2 * self.unit**2

    def confidence_interval(self, level: float = 0.95) -> float:
        """Half-width h with P(|output - true value| <= h) >= level, level in (0, 1).

        For integer statistics this is the exact quantile of the discrete noise (the smallest
        such h); on a grid it adds the rounding bound g/2.
        """
        return _quantile(self._p, check_level(level)) * self.unit + self.rounding_error

    def _draw(self, size: int) -> np.ndarray:
        noise = discrete_laplace(self._scale_units, size, rng=self._rng)
        assert isinstance(noise, np.ndarray)
        return noise

    def event(self) -> PrivacyEvent:
        """The privacy event to charge for one call of :meth:`randomise`."""
        return PrivacyEvent.laplace(self.epsilon)

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
    ) -> LaplaceMechanism:
        """The cheapest (largest-scale) mechanism whose ``confidence_interval(level)`` is at most
        ``half_width`` (> 0, and at least g/2 on a grid).

        Raises InvalidParameterError when no mechanism can meet it or a parameter is invalid.
        """
        level = check_level(level)
        half_width = check_positive("half_width", half_width)
        probe = cls(
            sensitivity=sensitivity,
            scale=1.0,
            granularity=granularity,
            coordinates=coordinates,
            rng=rng,
        )
        k = math.floor((half_width - probe.rounding_error) / probe.unit)
        if k < 0:
            raise InvalidParameterError("half_width is below the grid's rounding error")
        lo, hi = 0.0, 1.0  # largest p in (0, 1) with P(|X| > k) <= 1 - level
        for _ in range(200):
            mid = (lo + hi) / 2
            if mid in (lo, hi):
                break
            lo, hi = (mid, hi) if _tail(mid, k) <= 1 - level else (lo, mid)
        units = max(-1.0 / math.log(lo), 2.0**-40) if lo > 0 else 2.0**-40
        scale = float_down(Fraction(units) * Fraction(probe.unit))
        for step in range(64):
            mech = cls(
                sensitivity=sensitivity,
                scale=scale,
                granularity=granularity,
                coordinates=coordinates,
                rng=rng,
            )
            if mech.confidence_interval(level) <= half_width:
                return mech
            scale *= 1 - 1e-12 * 2.0**step
        raise InvalidParameterError("no Laplace mechanism meets this accuracy")  # pragma: no cover
