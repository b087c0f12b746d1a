"""One family of privacy errors for privtext.

Everything in :mod:`mechanisms` raises a subclass of :class:`PrivacyError`; only ``service/``
turns these into HTTP statuses.
"""

from __future__ import annotations

import math
from numbers import Real

__all__ = [
    "PrivacyError",
    "InvalidParameterError",
    "BudgetExhaustedError",
    "check_positive",
    "check_delta",
    "check_finite",
    "check_bounds",
    "check_level",
]


class PrivacyError(Exception):
    """Base class of every privacy error raised by :mod:`mechanisms`."""


class InvalidParameterError(PrivacyError, ValueError):
    """A privacy parameter is out of its valid range, infinite, NaN or of the wrong type."""


class BudgetExhaustedError(PrivacyError):
    """A release would exceed the remaining privacy budget.

    ``remaining_epsilon`` and ``remaining_delta`` are what is left (``None`` when unknown).
    """

    def __init__(
        self,
        message: str,
        *,
        remaining_epsilon: float | None = None,
        remaining_delta: float | None = None,
    ) -> None:
        super().__init__(message)
        self.remaining_epsilon = remaining_epsilon
        self.remaining_delta = remaining_delta


def _as_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidParameterError(f"{name} must be a real number, got {type(value).__name__}")
    result = float(value)
    if math.isnan(result) or math.isinf(result):
        raise InvalidParameterError(f"{name} must be finite, got {result}")
    return result


def check_finite(name: str, value: object) -> float:
    """Return ``value`` as a float; raise :class:`InvalidParameterError` if not finite real."""
    return _as_float(name, value)


def check_positive(name: str, value: object) -> float:
    """Return ``value`` as a float in (0, inf); raise :class:`InvalidParameterError` otherwise."""
    result = _as_float(name, value)
    if result <= 0:
        raise InvalidParameterError(f"{name} must be > 0, got {result}")
    return result


def check_delta(name: str, value: object, *, allow_zero: bool = True) -> float:
    """Return ``value`` as a float in [0, 1) (or (0, 1) when ``allow_zero`` is false)."""
    result = _as_float(name, value)
    if result < 0 or result >= 1 or (result == 0 and not allow_zero):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise InvalidParameterError(f"{name} must be in {interval}, got {result}")
    return result


def check_level(value: object) -> float:
    """Return a confidence level in (0, 1); raise :class:`InvalidParameterError` otherwise."""
    result = _as_float("level", value)
    if not 0 < result < 1:
        raise InvalidParameterError(f"level must be in (0, 1), got {result}")
    return result


def check_bounds(lower: object, upper: object) -> tuple[float, float]:
    """Return finite ``(lower, upper)`` with lower <= upper; raise otherwise."""
    lo = _as_float("lower", lower)
    hi = _as_float("upper", upper)
    if lo > hi:
        raise InvalidParameterError(f"lower bound {lo} is greater than upper bound {hi}")
    return lo, hi
