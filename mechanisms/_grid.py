"""What the Laplace and Gaussian mechanisms share: parameter checks and the power-of-two grid.

An integer statistic (``granularity=None``) must arrive with an integer dtype and gets integer
noise. A real statistic is divided by its granularity g (a power of two, so the division is
exact), rounded to the nearest integer, noised there and multiplied back. Rounding moves each
coordinate by at most g/2, so two neighbouring inputs' grid values differ by at most
``sensitivity + g`` per changed coordinate: the mechanisms add ``coordinates * g`` (L1) or
``sqrt(coordinates) * g`` (L2) to the declared sensitivity, where ``coordinates`` is the most
coordinates one privacy unit can change. Whether a value is an integer is decided by its type,
never by its value, so errors do not depend on the data.
"""

from __future__ import annotations

import math
from fractions import Fraction
from numbers import Integral

import numpy as np

from ._random import check_rng
from .errors import InvalidParameterError, check_positive

_MAX_GRID_UNITS = 2.0**52  # grid values and noisy outputs stay exact in float64 and int64


def float_up(value: Fraction) -> float:
    """The smallest float >= value."""
    result = float(value)
    return result if Fraction(result) >= value else math.nextafter(result, math.inf)


def float_down(value: Fraction) -> float:
    """The largest float <= value."""
    result = float(value)
    return result if Fraction(result) <= value else math.nextafter(result, -math.inf)


def check_granularity(granularity: object) -> float | None:
    """None, or a power of two in [2**-40, 2**40]; raise InvalidParameterError otherwise."""
    if granularity is None:
        return None
    g = check_positive("granularity", granularity)
    mantissa, exponent = math.frexp(g)
    if mantissa != 0.5 or not -40 <= exponent - 1 <= 40:
        raise InvalidParameterError(
            f"granularity must be a power of two in [2**-40, 2**40], got {g}"
        )
    return g


def check_coordinates(coordinates: object) -> int:
    """An integer >= 1."""
    if isinstance(coordinates, bool) or not isinstance(coordinates, Integral) or coordinates < 1:
        raise InvalidParameterError(f"coordinates must be an integer >= 1, got {coordinates!r}")
    return int(coordinates)


class GridMechanism:
    """Common state: declared sensitivity, grid, rng. Not used directly."""

    def __init__(
        self, *, sensitivity: float, granularity: float | None, coordinates: int, rng: object
    ) -> None:
        self.sensitivity = check_positive("sensitivity", sensitivity)
        self.granularity = check_granularity(granularity)
        self.coordinates = check_coordinates(coordinates)
        self._rng = check_rng(rng)

    @property
    def unit(self) -> float:
        """Spacing of the output grid: the granularity, or 1 for integer statistics."""
        return 1.0 if self.granularity is None else self.granularity

    @property
    def rounding_error(self) -> float:
        """Most the grid rounding moves one coordinate (g/2; 0 for integer statistics)."""
        return 0.0 if self.granularity is None else self.granularity / 2

    def _to_grid(self, value: object) -> tuple[np.ndarray, bool]:
        """Grid units as int64 array, and whether the input was a scalar."""
        array = np.asarray(value)
        scalar = array.ndim == 0
        if array.dtype == object or array.dtype.kind not in "iuf" or array.dtype == bool:
            raise InvalidParameterError(f"value must be numeric, got dtype {array.dtype}")
        if self.granularity is None:
            if array.dtype.kind == "f":
                raise InvalidParameterError(
                    "a float statistic needs a granularity (a power of two); integer statistics "
                    "must have an integer type"
                )
            if (np.abs(array.astype(np.float64)) > _MAX_GRID_UNITS).any():
                raise InvalidParameterError("an integer statistic must be at most 2**52")
            units = array.astype(np.int64)
        else:
            scaled = array.astype(np.float64) / self.granularity
            if not np.isfinite(scaled).all() or (np.abs(scaled) > _MAX_GRID_UNITS).any():
                raise InvalidParameterError(
                    "value must be finite and at most 2**52 granularities in magnitude"
                )
            units = np.rint(scaled).astype(np.int64)
        return units, scalar

    def _draw(self, size: int) -> np.ndarray:
        """``size`` exact noise draws in grid units (each mechanism's own sampler)."""
        raise NotImplementedError

    def randomise(self, value: int | float | np.ndarray) -> int | float | np.ndarray:
        """Noisy value(s) on the grid; same shape as ``value``.

        Raises InvalidParameterError for a float value without a granularity, non-finite values,
        or values beyond 2**52 grid units.
        """
        units, scalar = self._to_grid(value)
        noise = self._draw(units.size)
        return self._from_grid(units + noise.reshape(units.shape), scalar)

    def _from_grid(self, units: np.ndarray, scalar: bool) -> int | float | np.ndarray:
        if self.granularity is None:
            return int(units.reshape(-1)[0]) if scalar else units
        values = units.astype(np.float64) * self.granularity
        return float(values.reshape(-1)[0]) if scalar else values
