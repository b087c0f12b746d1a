"""A part: one noisy release inside a query, and what is done with its mechanism.

A query is answered by one or more parts (a count, a sum, a histogram's bins...), each a name,
an L1 or L2 sensitivity in grid units and a share of the query's cost, with the mechanism that
pricing chose for it (:mod:`service.queries.pricing`). The helpers here add a part's noise,
read its confidence half-width, rebuild it for another sensitivity at the same cost, and draw
copies of its noise for post-processing. Mechanisms are told apart by their type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mechanisms.gaussian import GaussianMechanism
from mechanisms.laplace import LaplaceMechanism
from mechanisms.samplers import discrete_gaussian, discrete_laplace

#: Public limits, checked at pricing before any data is read. A noise scale (or sigma) is at
#: most 2**39 integer units (the exact samplers take up to 2**40), so with exact aggregates
#: clamped to +/- ``AGGREGATE_LIMIT`` a noisy value stays far inside int64 and float64's exact
#: range (noise beyond 2**51 has probability below exp(-4096)).
MAX_NOISE_UNITS = 2.0**39
AGGREGATE_LIMIT = 2**50

Mechanism = LaplaceMechanism | GaussianMechanism


@dataclass
class Part:
    """One noisy release inside a query: its name, L1/L2 sensitivity (in grid units) and
    share of the query's cost."""

    name: str
    sensitivity: float
    share: float
    mechanism: Any = None  # a Mechanism once priced


def laplace(sensitivity: float, epsilon: float) -> LaplaceMechanism:
    return LaplaceMechanism(sensitivity=sensitivity, epsilon=epsilon)


def gaussian(sensitivity: float, rho: float) -> GaussianMechanism:
    return GaussianMechanism(sensitivity=sensitivity, rho=rho)


def cost_of(part: Part) -> float:
    """What a part spends (its epsilon, or its rho): kept when the part is rescaled."""
    mech = part.mechanism
    return float(mech.rho) if isinstance(mech, GaussianMechanism) else float(mech.epsilon)


def noise_scale(part: Part) -> float:
    """The part's noise parameter in the statistic's units: the Laplace scale or the Gaussian
    sigma."""
    mech = part.mechanism
    if isinstance(mech, GaussianMechanism):
        return float(mech.sigma)
    return float(mech.scale)


def rescale(part: Part, plan: Any, sensitivity: float) -> None:
    """Re-build ``part``'s mechanism (that of ``plan.mechanism``) for a new sensitivity at the
    same cost."""
    part.sensitivity = sensitivity
    if plan.mechanism == "laplace":
        part.mechanism = laplace(sensitivity, float(part.mechanism.epsilon))
    else:
        part.mechanism = gaussian(sensitivity, float(part.mechanism.rho))


def half_width(part: Part, level: float) -> float:
    return float(part.mechanism.confidence_interval(level))


def noisy(part: Part, values: Any) -> np.ndarray:
    """``part``'s noise added to exact integer aggregates ``values`` (any nesting).

    Each value is first clamped to +/- ``AGGREGATE_LIMIT``: clamping every coordinate to a
    public interval moves two neighbouring inputs no further apart (in L1 or L2), so the
    sensitivity is unchanged, and no aggregate, however large the data, can make the
    mechanism refuse its input after the corpus was read.
    """
    exact = np.asarray(values, dtype=object)
    if exact.size:
        exact = np.clip(exact, -AGGREGATE_LIMIT, AGGREGATE_LIMIT)
    arr = exact.astype(np.int64)
    return np.asarray(part.mechanism.randomise(arr), dtype=np.float64)


def simulate_noise(part: Part, shape: tuple[int, ...]) -> np.ndarray:
    """Fresh draws of ``part``'s noise distribution, for post-processing only (bootstrap
    intervals of released values); it protects nothing, so a fast non-secret generator is
    used."""
    rng = np.random.default_rng()
    size = int(np.prod(shape))
    mech = part.mechanism
    if isinstance(mech, GaussianMechanism):
        draws = discrete_gaussian(float(mech.sigma), size, rng=rng)
    else:
        draws = discrete_laplace(float(mech.scale), size, rng=rng)
    return np.asarray(draws, dtype=np.float64).reshape(shape)
