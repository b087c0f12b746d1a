"""Exact, vectorised discrete Laplace and discrete Gaussian samplers.

Algorithms 1-3 of Canonne, Kamath, Steinke 2020 ("The discrete Gaussian for differential
privacy"), run in lockstep over numpy uint64 arrays. Every accept/reject decision compares
integers; no floating-point ``exp`` or ``log`` decides a sample. Randomness is ``os.urandom``
unless a test injects a seeded ``numpy.random.Generator`` as ``rng``.

Parameters are rationals: a float scale is used exactly (``Fraction(scale)``) when its numerator
and denominator fit in 62 bits, and otherwise rounded *up* to a dyadic rational that does (more
noise, never less). ``sigma**2`` is rounded up to a multiple of ``2**-k`` (k <= 16, chosen so that
the vectorised arithmetic fits in 64 bits). :func:`exact_laplace_scale` and
:func:`exact_sigma_squared` return the rationals actually sampled; mechanisms report their cost
from those. Draws whose intermediates would overflow 64 bits (probability below 1e-100 for the
Laplace; large sigma for the Gaussian) are redone by the Python-integer reference
implementation in :mod:`mechanisms._exact_scalar`, so the output is exact in every case. That
path also serves requests of at most 32 draws, where it is faster than numpy's overheads.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from . import _exact_scalar
from ._random import check_rng, random_bits, uniform_below
from .errors import InvalidParameterError, check_positive

__all__ = [
    "discrete_laplace",
    "discrete_gaussian",
    "exact_laplace_scale",
    "exact_sigma_squared",
    "MAX_SCALE",
]

MAX_SCALE = 2.0**40  # largest scale or sigma accepted
_LIMIT = 1 << 62
_I63 = (1 << 63) - 1  # fast-path overflow limit (tests lower it to exercise the slow lanes)
_INT64_MAX = (1 << 63) - 1


def _dyadic_ceil(x: Fraction, limit: int = _LIMIT) -> Fraction:
    """``x`` if numerator and denominator are below ``limit``, else ceil to a dyadic that is."""
    if x.numerator < limit and x.denominator < limit:
        return x
    k = 61 - max(0, math.ceil(math.log2(float(x)) + 1))
    while True:
        r = Fraction(-((-x.numerator << k) // x.denominator) if k >= 0 else 0, 1 << k)
        if r.numerator < limit and r.denominator < limit:
            return r
        k -= 1


def exact_laplace_scale(scale: float) -> Fraction:
    """The rational scale that :func:`discrete_laplace` samples for ``scale`` (>= ``scale``).

    Raises InvalidParameterError unless ``2**-40 <= scale <= 2**40`` and finite.
    """
    value = check_positive("scale", scale)
    if not 2.0**-40 <= value <= MAX_SCALE:
        raise InvalidParameterError(f"scale must be in [2**-40, 2**40], got {value}")
    return _dyadic_ceil(Fraction(value))


def exact_sigma_squared(sigma: float) -> Fraction:
    """The rational sigma**2 that :func:`discrete_gaussian` samples for ``sigma`` (>= sigma**2).

    Raises InvalidParameterError unless ``2**-20 <= sigma <= 2**40`` and finite.
    """
    value = check_positive("sigma", sigma)
    if not 2.0**-20 <= value <= MAX_SCALE:
        raise InvalidParameterError(f"sigma must be in [2**-20, 2**40], got {value}")
    exact = Fraction(value) ** 2
    # 2 * a * b * t**2 (about 2 sigma**4 b**2) must stay below 2**62 for the fast path.
    k = int(min(16, max(0, (59 - 4 * math.log2(value + 1)) // 2)))
    den = 1 << k
    rounded = Fraction(-((-exact.numerator * den) // exact.denominator), den)
    return exact if exact.denominator <= den else rounded


def _bern_exp_frac(num: np.ndarray, den: int, rng: np.random.Generator | None) -> np.ndarray:
    """Bernoulli(exp(-num/den)) per lane for 0 <= num <= den < 2**63 (CKS Algorithm 1)."""
    result = np.empty(num.size, dtype=bool)
    idx = np.arange(num.size)
    k = 1
    while idx.size:
        a = uniform_below(den, idx.size, rng) < num
        if k > 1:
            a &= uniform_below(k, idx.size, rng) == 0
        result[idx[~a]] = k % 2 == 1
        idx, num = idx[a], num[a]
        k += 1
    return result


def _bern_exp_one(count: int, rng: np.random.Generator | None) -> np.ndarray:
    """``count`` draws of Bernoulli(exp(-1)) (CKS Algorithm 1 with gamma = 1)."""
    result = np.empty(count, dtype=bool)
    idx = np.arange(count)
    k = 2  # Bernoulli(1/1) always succeeds
    while idx.size:
        a = uniform_below(k, idx.size, rng) == 0
        result[idx[~a]] = k % 2 == 1
        idx = idx[a]
        k += 1
    return result


def _bern_exp(
    whole: np.ndarray, rem: np.ndarray, den: int, rng: np.random.Generator | None
) -> np.ndarray:
    """Bernoulli(exp(-(whole + rem/den))) per lane, with 0 <= rem < den < 2**62."""
    result = np.ones(whole.size, dtype=bool)
    idx = np.nonzero(whole > 0)[0]
    j = 1
    while idx.size:  # exp(-whole) as ``whole`` independent Bernoulli(exp(-1)), stop at failure
        ok = _bern_exp_one(idx.size, rng)
        result[idx[~ok]] = False
        idx = idx[ok]
        idx = idx[whole[idx] > j]
        j += 1
    alive = np.nonzero(result)[0]
    result[alive] = _bern_exp_frac(rem[alive], den, rng)
    return result


def _geometric_exp_one(count: int, rng: np.random.Generator | None) -> np.ndarray:
    """Number of successes before the first failure of Bernoulli(exp(-1)) trials."""
    v = np.zeros(count, dtype=np.uint64)
    idx = np.arange(count)
    while idx.size:
        ok = _bern_exp_one(idx.size, rng)
        idx = idx[ok]
        v[idx] += np.uint64(1)
    return v


def _dlap_batch(t: int, s: int, count: int, rng: np.random.Generator | None) -> np.ndarray:
    """Up to ``count`` discrete Laplace(t/s) draws (CKS Algorithm 2; rejected lanes dropped)."""
    if t == 1:
        u = np.zeros(count, dtype=np.uint64)
    else:
        u = uniform_below(t, count, rng)
        u = u[_bern_exp_frac(u, t, rng)]
    v = _geometric_exp_one(u.size, rng)
    safe = v <= np.uint64((_I63 - t) // t)
    x = u + np.uint64(t) * np.where(safe, v, 0)
    y = (x // np.uint64(s)).astype(np.int64)
    if not safe.all():
        # astronomically rare: finish these same lanes in Python integers, in place, so that
        # neither the values nor their order depend on which lanes overflowed
        for i in np.nonzero(~safe)[0]:
            y[i] = _to_int64([(int(u[i]) + t * int(v[i])) // s])[0]
    negative = random_bits(u.size, rng)
    keep = ~(negative & (y == 0))
    return np.where(negative, -y, y)[keep]


def _to_int64(values: list[int]) -> np.ndarray:
    if any(abs(v) > _INT64_MAX for v in values):
        raise OverflowError("a noise draw does not fit in 64 bits")
    return np.array(values, dtype=np.int64)


_CHUNK = 1 << 18  # lanes per vectorised pass: bounds memory and keeps arrays in cache
_SCALAR_PATH_MAX = 32  # below this many draws the Python-integer path is faster


def _fill(batch, one, size: int | None) -> int | np.ndarray:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int | np.integer)):
        raise InvalidParameterError(f"size must be None or an integer, got {size!r}")
    n = 1 if size is None else int(size)
    if n < 0:
        raise InvalidParameterError(f"size must be >= 0, got {size}")
    if n <= _SCALAR_PATH_MAX:
        values = [one() for _ in range(n)]
        return values[0] if size is None else _to_int64(values).reshape(n)
    parts: list[np.ndarray] = []
    have = 0
    while have < n:
        need = min(n - have, _CHUNK)
        got = batch(need + need // 4 + 8)[:need]  # oversample for rejections
        parts.append(got)
        have += got.size
    out = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    return int(out[0]) if size is None else out


def discrete_laplace(
    scale: float, size: int | None = None, *, rng: np.random.Generator | None = None
) -> int | np.ndarray:
    """Exact draws of the discrete Laplace: P(k) proportional to exp(-|k| / scale), k in Z.

    Args:
        scale: in [2**-40, 2**40]; sampled exactly at :func:`exact_laplace_scale` (``scale``).
        size: None for one Python int, otherwise the length of an int64 array.
        rng: None for the OS CSPRNG; a seeded numpy Generator only in tests.

    Raises:
        InvalidParameterError: scale not finite or out of range, size < 0, bad rng.
    """
    rng = check_rng(rng)
    exact = exact_laplace_scale(scale)
    t, s = exact.numerator, exact.denominator
    return _fill(
        lambda n: _dlap_batch(t, s, n, rng),
        lambda: _exact_scalar.discrete_laplace(exact, rng),
        size,
    )


def _dgauss_batch(sigma2: Fraction, count: int, rng: np.random.Generator | None) -> np.ndarray:
    a, b = sigma2.numerator, sigma2.denominator
    t = math.isqrt(a // b) + 1
    den = 2 * a * b * t * t
    if den >= _LIMIT:  # large sigma: Python-integer reference path (slow, exact)
        return _to_int64([_exact_scalar.discrete_gaussian(sigma2, rng) for _ in range(count)])
    y = _dlap_batch(t, 1, count, rng)
    absy = np.abs(y)
    fits = absy < np.int64((_I63 - a) // (b * t))
    # w = |y| b t - a; gamma = w**2 / den
    w = np.abs(np.where(fits, absy, 0) * np.int64(b * t) - np.int64(a)).astype(np.uint64)
    estimate = np.floor(w.astype(np.float64) ** 2 / float(den))
    fits &= estimate < 2.0**48
    whole = np.maximum(estimate - 2.0, 0.0).astype(np.uint64)  # safe lower bound on floor(gamma)
    rem = w * w - whole * np.uint64(den)  # exact mod 2**64, and the true value is < 4 den
    extra = rem // np.uint64(den)
    whole += extra
    rem -= extra * np.uint64(den)
    accept = _bern_exp(np.where(fits, whole, 0), np.where(fits, rem, 0), den, rng)
    for i in np.nonzero(~fits)[0]:
        # the same candidate's acceptance test in Python integers (rare for sigma < 3e4);
        # decided in place so that the accepted values and their order stay unbiased
        gamma = (abs(int(y[i])) - sigma2 / t) ** 2 / (2 * sigma2)
        accept[i] = _exact_scalar.bernoulli_exp(gamma, rng)
    return y[accept]


def discrete_gaussian(
    sigma: float, size: int | None = None, *, rng: np.random.Generator | None = None
) -> int | np.ndarray:
    """Exact draws of the discrete Gaussian: P(k) proportional to exp(-k**2 / (2 sigma**2)).

    Args:
        sigma: in [2**-20, 2**40]; sampled exactly at variance parameter
            :func:`exact_sigma_squared` (``sigma``). Vectorised for sigma below about 3e4;
            above, the Python-integer path is used (exact, about 5e4 samples/s).
        size: None for one Python int, otherwise the length of an int64 array.
        rng: None for the OS CSPRNG; a seeded numpy Generator only in tests.

    Raises:
        InvalidParameterError: sigma not finite or out of range, size < 0, bad rng.
    """
    rng = check_rng(rng)
    sigma2 = exact_sigma_squared(sigma)
    return _fill(
        lambda n: _dgauss_batch(sigma2, n, rng),
        lambda: _exact_scalar.discrete_gaussian(sigma2, rng),
        size,
    )
