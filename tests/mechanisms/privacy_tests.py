"""Empirical privacy tests in the style of Ding et al. 2018 ("Detecting violations of DP")."""

from __future__ import annotations

import numpy as np

Z = 4.5  # one-sided z per bin or event: about 3.4e-6 false alarms each


def max_log_ratio_excess(a: np.ndarray, b: np.ndarray, epsilon: float, min_count: int) -> float:
    """Largest (log(c_a / c_b) - epsilon) / standard error over outputs seen >= min_count times
    in both samples (equal sample sizes). Above Z means the ratio bound exp(epsilon) is violated.
    """
    lo = int(min(a.min(), b.min()))
    ca = np.bincount(a - lo)
    cb = np.bincount(b - lo, minlength=ca.size)
    ca = np.pad(ca, (0, cb.size - ca.size))
    ok = (ca >= min_count) & (cb >= min_count)
    ca, cb = ca[ok].astype(float), cb[ok].astype(float)
    se = np.sqrt(1 / ca + 1 / cb)
    excess = np.maximum(np.log(ca / cb) - epsilon, np.log(cb / ca) - epsilon) / se
    return float(excess.max())


def max_event_excess(
    a: np.ndarray, b: np.ndarray, epsilon: float, delta: float, thresholds: np.ndarray
) -> float:
    """Largest (P_a(E) - e^eps P_b(E) - delta) / standard error over events E = {output >= t}
    and E = {output <= t}, both orders of the pair (Ding et al. with threshold events).
    """
    worst = -np.inf
    n = a.size
    for x, y in ((a, b), (b, a)):
        xs, ys = np.sort(x), np.sort(y)
        for t in thresholds:
            upper = (1 - np.searchsorted(xs, t) / n, 1 - np.searchsorted(ys, t) / n)
            lower = (np.searchsorted(xs, t, "right") / n, np.searchsorted(ys, t, "right") / n)
            for px, py in (upper, lower):
                gap = px - np.exp(epsilon) * py - delta
                se = np.sqrt((px * (1 - px) + np.exp(2 * epsilon) * py * (1 - py)) / n) + 1e-12
                worst = max(worst, gap / se)
    return float(worst)
