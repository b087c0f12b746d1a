"""Uniform random integers from the OS CSPRNG (or an injected test generator).

Only integer arithmetic is used: no floating-point comparison decides any sample.
``rng=None`` means ``os.urandom``; a seeded :class:`numpy.random.Generator` is accepted so that
tests are reproducible, and must never be passed in product code.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import InvalidParameterError

_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)


def check_rng(rng: object) -> np.random.Generator | None:
    """Return ``rng`` if it is ``None`` or a numpy Generator; raise InvalidParameterError."""
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    raise InvalidParameterError(
        f"rng must be None (OS CSPRNG) or numpy.random.Generator, got {type(rng).__name__}"
    )


def random_bytes(count: int, rng: np.random.Generator | None) -> bytes:
    """``count`` uniformly random bytes."""
    if rng is None:
        return os.urandom(count)
    return rng.bytes(count)


def random_words(count: int, rng: np.random.Generator | None) -> np.ndarray:
    """``count`` independent uniform 64-bit words as a uint64 array."""
    return np.frombuffer(random_bytes(8 * count, rng), dtype=np.uint64)


def random_bits(count: int, rng: np.random.Generator | None) -> np.ndarray:
    """``count`` independent fair bits as a bool array."""
    raw = np.frombuffer(random_bytes((count + 7) // 8, rng), dtype=np.uint8)
    return np.unpackbits(raw)[:count].astype(bool)


def uniform_below(
    bound: int | np.ndarray, count: int, rng: np.random.Generator | None
) -> np.ndarray:
    """Uniform integers in [0, bound) by rejection from 64-bit words (exact, no modulo bias).

    ``bound`` is a Python int in [1, 2**63] or a uint64 array of length ``count`` with entries
    in that range.
    """
    if np.ndim(bound) == 0:
        b = int(bound)  # type: ignore[arg-type]
        if b & (b - 1) == 0:  # power of two: the low bits are uniform
            return random_words(count, rng) & np.uint64(b - 1)
        words = random_words(count, rng)
        if (words <= np.uint64((1 << 64) - (1 << 64) % b - 1)).all():  # the usual case
            return words % np.uint64(b)
    bounds = np.broadcast_to(np.asarray(bound, dtype=np.uint64), (count,))
    out = np.empty(count, dtype=np.uint64)
    todo = np.arange(count)
    while todo.size:
        words = random_words(todo.size, rng)
        lane_bounds = bounds[todo]
        rem = (np.uint64(0) - lane_bounds) % lane_bounds  # 2**64 mod b, by uint64 wraparound
        ok = words <= _MAX - rem  # accept the largest multiple of b below 2**64
        out[todo[ok]] = words[ok] % lane_bounds[ok]
        todo = todo[~ok]
    return out


def randbelow(bound: int, rng: np.random.Generator | None) -> int:
    """One uniform Python int in [0, bound) for any positive ``bound`` (rejection sampling)."""
    if bound == 1:
        return 0
    nbits = (bound - 1).bit_length()
    nbytes = (nbits + 7) // 8
    mask = (1 << nbits) - 1
    while True:
        value = int.from_bytes(random_bytes(nbytes, rng), "little") & mask
        if value < bound:
            return value
