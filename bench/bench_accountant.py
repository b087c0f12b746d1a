"""Accountant benchmark: admission latency and reported epsilon for the measured case.

Run: .venv/bin/python bench/bench_accountant.py
Measured case: 1,000 Laplace releases (epsilon 0.01) + 1,000 discrete Gaussian releases
(sigma 10, L2 sensitivity 1) at delta 1e-6. Admission: ``Accountant.can_afford`` and the
ledger's pure path (summed RDP vector + epsilon_from_rdp) with 10,000 releases on the history.
"""

from __future__ import annotations

import time

import dp_accounting
import numpy as np

from mechanisms.accountant import METHODS, Accountant, PrivacyEvent, epsilon_from_rdp, rdp_vector

DELTA = 1e-6
LAP = PrivacyEvent.laplace(0.01)
GAUSS = PrivacyEvent.gaussian(10.0)


def timed(fn, repeat: int) -> tuple[float, float]:
    """Median and 99th percentile wall time in milliseconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3), float(np.percentile(times, 99) * 1e3)


def main() -> None:
    acc = Accountant([LAP] * 1000 + [GAUSS] * 1000)
    print("measured case: 1000 x Laplace(eps 0.01) + 1000 x discrete Gaussian(sigma 10), "
          "delta 1e-6")
    for method in METHODS:
        med, _ = timed(lambda m=method: acc.epsilon(DELTA, method=m), 5)
        print(f"  {method:6s} epsilon = {acc.epsilon(DELTA, method=method):8.3f}   "
              f"({med:.2f} ms)")
    ref = dp_accounting.pld.PLDAccountant()
    ref.compose(dp_accounting.LaplaceDpEvent(100.0), 1000)
    ref.compose(dp_accounting.GaussianDpEvent(10.0), 1000)
    print(f"  dp-accounting PLDAccountant, continuous Laplace + Gaussian: "
          f"{ref.get_epsilon(DELTA):.3f} (reference)")

    history = Accountant([LAP] * 5000 + [GAUSS] * 5000)
    assert len(history) == 10_000
    budget = history.epsilon(DELTA, method="rdp") + 1.0
    med, p99 = timed(
        lambda: history.can_afford(GAUSS, epsilon_budget=budget, delta_budget=DELTA), 10_000
    )
    print(f"admission, Accountant.can_afford with 10,000 events on history: median {med:.4f} ms,"
          f" p99 {p99:.4f} ms")
    summed = np.array(rdp_vector(LAP)) * 5000 + np.array(rdp_vector(GAUSS)) * 5000
    med, p99 = timed(
        lambda: epsilon_from_rdp(summed + np.array(rdp_vector(GAUSS)), DELTA), 10_000
    )
    print(f"admission, ledger path (stored RDP vector + rdp_vector + epsilon_from_rdp): "
          f"median {med:.4f} ms, p99 {p99:.4f} ms")
    med, _ = timed(lambda: history.epsilon(DELTA, method="pld"), 3)
    print(f"tight PLD report over the same 10,000-event history: {med:.1f} ms")
    med, _ = timed(lambda: Accountant.from_state_dict(history.state_dict()), 3)
    print(f"state_dict round trip of 10,000 events: {med:.1f} ms")


if __name__ == "__main__":
    main()
