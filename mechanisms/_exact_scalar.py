"""Scalar reference samplers in unbounded Python integers (Canonne, Kamath, Steinke 2020).

These are slow and plainly follow CKS Algorithms 1-3. The vectorised samplers in
:mod:`mechanisms.samplers` use them for the rare draws whose intermediate integers would
overflow 64 bits, and the tests compare the two.
"""

from __future__ import annotations

from fractions import Fraction
from math import isqrt

import numpy as np

from ._random import randbelow


def bernoulli_exp(gamma: Fraction, rng: np.random.Generator | None) -> bool:
    """One exact draw of Bernoulli(exp(-gamma)) for rational gamma >= 0 (CKS Algorithm 1)."""
    num, den = gamma.numerator, gamma.denominator
    while num > den:  # exp(-gamma) = exp(-1) * exp(-(gamma - 1))
        if not bernoulli_exp(Fraction(1), rng):
            return False
        num -= den
    k = 1
    while True:
        # Bernoulli(gamma / k) = Bernoulli(gamma) AND Bernoulli(1 / k)
        if randbelow(den, rng) < num and randbelow(k, rng) == 0:
            k += 1
        else:
            return k % 2 == 1


def discrete_laplace(scale: Fraction, rng: np.random.Generator | None) -> int:
    """One exact draw of the discrete Laplace with scale t/s (CKS Algorithm 2)."""
    t, s = scale.numerator, scale.denominator
    while True:
        u = randbelow(t, rng)
        if not bernoulli_exp(Fraction(u, t), rng):
            continue
        v = 0
        while bernoulli_exp(Fraction(1), rng):
            v += 1
        y = (u + t * v) // s
        negative = randbelow(2, rng) == 1
        if negative and y == 0:
            continue
        return -y if negative else y


def discrete_gaussian(sigma2: Fraction, rng: np.random.Generator | None) -> int:
    """One exact draw of the discrete Gaussian with variance parameter sigma2 (CKS Algorithm 3)."""
    t = _isqrt_floor(sigma2) + 1
    while True:
        y = discrete_laplace(Fraction(t), rng)
        gamma = (abs(y) - sigma2 / t) ** 2 / (2 * sigma2)
        if bernoulli_exp(gamma, rng):
            return y


def _isqrt_floor(x: Fraction) -> int:
    """floor(sqrt(x)) for a non-negative rational x."""
    return isqrt(x.numerator // x.denominator)
