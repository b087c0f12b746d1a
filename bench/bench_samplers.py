"""Samples per second: privtext's exact samplers vs OpenDP's and numpy's (unsafe) float samplers.

Run: .venv/bin/python bench/bench_samplers.py [--n 1000000] [--repeat 3]
Prints best-of-``repeat`` throughput for vectorised draws of ``n`` samples, one scalar call,
and the ratio to OpenDP in the same run. Randomness: os.urandom for privtext (no injected rng).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import opendp.prelude as dp

from mechanisms.samplers import discrete_gaussian, discrete_laplace

dp.enable_features("contrib")


def best_rate(fn: Callable[[], object], count: int, repeat: int) -> float:
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scalar-calls", type=int, default=20_000)
    args = parser.parse_args()
    n, repeat, calls = args.n, args.repeat, args.scalar_calls
    zeros = [0] * n
    ints = dp.vector_domain(dp.atom_domain(T=int))
    od_lap = dp.m.make_laplace(ints, dp.l1_distance(T=int), scale=100.0)
    od_gauss = dp.m.make_gaussian(ints, dp.l2_distance(T=int), scale=10.0)
    od_lap_1 = dp.m.make_laplace(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=100.0)
    np_rng = np.random.default_rng()

    rows: list[tuple[str, float]] = []
    rows.append(("privtext discrete_laplace(100), vectorised", best_rate(
        lambda: discrete_laplace(100.0, n), n, repeat)))
    rows.append(("privtext discrete_laplace(3.3333), vectorised", best_rate(
        lambda: discrete_laplace(10 / 3, n), n, repeat)))
    rows.append(("privtext discrete_gaussian(10), vectorised", best_rate(
        lambda: discrete_gaussian(10.0, n), n, repeat)))
    rows.append(("privtext discrete_gaussian(1000), vectorised", best_rate(
        lambda: discrete_gaussian(1000.0, n), n, repeat)))
    rows.append(("OpenDP make_laplace(100) on int vector", best_rate(lambda: od_lap(zeros), n, 1)))
    rows.append(("OpenDP make_gaussian(10) on int vector", best_rate(
        lambda: od_gauss(zeros), n, 1)))
    rows.append(("numpy float laplace (UNSAFE, reference)", best_rate(
        lambda: np_rng.laplace(0, 100.0, n), n, repeat)))
    rows.append(("numpy float normal (UNSAFE, reference)", best_rate(
        lambda: np_rng.normal(0, 10.0, n), n, repeat)))
    rows.append(("privtext discrete_laplace(100), one scalar call", best_rate(
        lambda: [discrete_laplace(100.0) for _ in range(calls)], calls, 1)))
    rows.append(("OpenDP make_laplace(100), one scalar call", best_rate(
        lambda: [od_lap_1(0) for _ in range(calls)], calls, 1)))

    print(f"python {platform.python_version()}, numpy {np.__version__}, cpus {os.cpu_count()}, "
          f"n={n}, best of {repeat}")
    for name, rate in rows:
        print(f"{name:55s} {rate:14,.0f} samples/s")
    rate = dict(rows)
    pairs = [
        ("discrete Laplace vectorised", "privtext discrete_laplace(100), vectorised",
         "OpenDP make_laplace(100) on int vector"),
        ("discrete Gaussian vectorised", "privtext discrete_gaussian(10), vectorised",
         "OpenDP make_gaussian(10) on int vector"),
        ("discrete Laplace scalar call", "privtext discrete_laplace(100), one scalar call",
         "OpenDP make_laplace(100), one scalar call"),
    ]
    print("ratios (privtext / OpenDP, same run):")
    for label, ours, theirs in pairs:
        print(f"  {label}: {rate[ours] / rate[theirs]:.1f}x")
    unsafe = rate["numpy float laplace (UNSAFE, reference)"]
    print(f"  numpy float laplace / privtext discrete Laplace: "
          f"{unsafe / rate['privtext discrete_laplace(100), vectorised']:.1f}x")

if __name__ == "__main__":
    main()
