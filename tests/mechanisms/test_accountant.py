"""The accountant against dp-accounting, hand-computed values, and its own invariants."""

from __future__ import annotations

import math
import time

import dp_accounting
import numpy as np
import pytest
from scipy import optimize, special, stats

from mechanisms.accountant import ORDERS, Accountant, PrivacyEvent, epsilon_from_rdp, rdp_vector
from mechanisms.errors import InvalidParameterError, PrivacyError
from mechanisms.rdp import pure_dp_rdp

DELTA = 1e-6
LAP = PrivacyEvent.laplace(0.01)
GAUSS = PrivacyEvent.gaussian(10.0)


def analytic_gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """Balle & Wang 2018 exact epsilon of the continuous Gaussian mechanism (by hand)."""
    s = noise_multiplier

    def gap(eps: float) -> float:
        return (
            stats.norm.cdf(0.5 / s - eps * s) - math.exp(eps) * stats.norm.cdf(-0.5 / s - eps * s)
        ) - delta

    return float(optimize.brentq(gap, 0.0, 100.0))


def test_pld_is_tight_where_every_event_has_a_dominating_pld() -> None:
    sampled = PrivacyEvent.subsampled_gaussian(noise_multiplier=1.0, sampling_rate=0.01, steps=300)
    acc = Accountant([LAP] * 1000 + [sampled])
    assert acc.pld_dominated
    pld = acc.epsilon(DELTA)
    # dp-accounting's own PLD accountant (continuous Laplace, the same DP-SGD): within 0.02
    ref = dp_accounting.pld.PLDAccountant()
    ref.compose(dp_accounting.LaplaceDpEvent(100.0), 1000)
    ref.compose(dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.0)), 300)
    assert ref.get_epsilon(DELTA) <= pld <= ref.get_epsilon(DELTA) + 0.02
    assert pld < acc.epsilon(DELTA, method="rdp") - 0.3  # PLD is what makes it tight here


def test_measured_case_with_discrete_gaussians_reports_the_rdp_bound() -> None:
    """PRIVACY.md's mix. Its PLD row (19.55) modelled each Gaussian as unit sensitivity, which
    is not a bound for a discrete Gaussian of another sensitivity: the tight figure is RDP."""
    acc = Accountant([LAP] * 1000 + [GAUSS] * 1000)
    assert not acc.pld_dominated
    assert acc.epsilon(DELTA) == acc.epsilon(DELTA, method="rdp")
    assert acc.epsilon(DELTA, method="rdp") == pytest.approx(20.68, abs=0.01)
    assert acc.epsilon(DELTA, method="zcdp") == pytest.approx(21.76, abs=0.01)
    # basic: 10 for the Laplace part, each Gaussian its RDP epsilon at delta / 1000
    single = epsilon_from_rdp(rdp_vector(GAUSS), DELTA / 1000)
    assert acc.epsilon(DELTA, method="basic") == pytest.approx(10 + 1000 * single)


def test_single_laplace_hand_values() -> None:
    acc = Accountant([PrivacyEvent.laplace(0.7)])
    assert acc.epsilon(0.0) == 0.7
    for method in ("pld", "rdp", "basic"):
        assert 0.69 <= acc.epsilon(DELTA, method=method) <= 0.7
    # the zCDP conversion (0.245 + 2 sqrt(0.245 ln 1e6) = 3.92) loses to the pure epsilon
    assert acc.epsilon(DELTA, method="zcdp") == 0.7


def test_single_gaussian_against_analytic_and_rdp_accountant() -> None:
    acc = Accountant([PrivacyEvent.gaussian(2.0)])
    # no PLD bounds a discrete Gaussian known by its noise multiplier alone: the RDP figure,
    # above the continuous Gaussian's exact epsilon (and within 25% of it here)
    exact = analytic_gaussian_epsilon(2.0, 1e-5)
    assert acc.epsilon(1e-5) == acc.epsilon(1e-5, method="rdp")
    assert exact < acc.epsilon(1e-5) < 1.25 * exact
    rho = 1 / 8
    assert acc.epsilon(1e-5, method="zcdp") == pytest.approx(
        rho + 2 * math.sqrt(rho * math.log(1e5))
    )
    ref = dp_accounting.rdp.RdpAccountant(orders=list(ORDERS))
    ref.compose(dp_accounting.GaussianDpEvent(2.0))
    assert acc.epsilon(1e-5, method="rdp") == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    assert acc.epsilon(0.0) == math.inf


def test_subsampled_gaussian_matches_dp_accounting() -> None:
    event = PrivacyEvent.subsampled_gaussian(noise_multiplier=1.0, sampling_rate=0.01, steps=300)
    acc = Accountant([event])
    sampled = dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.0))
    rdp_ref = dp_accounting.rdp.RdpAccountant(orders=list(ORDERS))
    rdp_ref.compose(sampled, 300)
    assert acc.epsilon(1e-5, method="rdp") == pytest.approx(rdp_ref.get_epsilon(1e-5), rel=1e-9)
    pld_ref = dp_accounting.pld.PLDAccountant()
    pld_ref.compose(sampled, 300)
    assert acc.epsilon(1e-5) == pytest.approx(pld_ref.get_epsilon(1e-5), abs=0.02)
    assert acc.epsilon(1e-5) == pytest.approx(1.07, abs=0.02)  # PRIVACY.md figure
    with pytest.raises(InvalidParameterError):
        acc.epsilon(1e-5, method="zcdp")


def test_pure_dp_rdp_is_randomized_response_and_discrete_laplace() -> None:
    orders = np.array(ORDERS)
    for eps in (1e-4, 0.01, 0.5, 3.0):
        curve = pure_dp_rdp(eps)
        assert np.all(curve <= np.minimum(eps, orders * eps**2 / 2) + 1e-15)
        if eps < 0.01:
            continue
        # discrete Laplace, unit sensitivity: Renyi divergence summed over the pmf by hand
        k = np.arange(-4000, 4001)
        log_base = -eps * np.abs(k)  # the normalising constants cancel
        log_shifted = -eps * np.abs(k - 1)
        log_norm = special.logsumexp(log_base)
        for a in (1.5, 2.0, 10.0):
            terms = a * log_base + (1 - a) * log_shifted
            exact = (special.logsumexp(terms) - log_norm) / (a - 1)
            assert pure_dp_rdp(eps, np.array([a]))[0] == pytest.approx(exact, rel=1e-6, abs=1e-15)


def test_epsilon_from_rdp_matches_dp_accounting() -> None:
    curve = np.array(rdp_vector(GAUSS)) * 37
    expected, _ = dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon(ORDERS, curve, 1e-7)
    assert epsilon_from_rdp(curve, 1e-7) == pytest.approx(expected)
    assert epsilon_from_rdp([0.0] * len(ORDERS), 0.0) == 0.0
    assert epsilon_from_rdp(curve, 0.0) == math.inf


@pytest.mark.parametrize(
    "rdp, delta",
    [([1.0] * 3, 1e-6), ([math.nan] * len(ORDERS), 1e-6), ([-1.0] * len(ORDERS), 1e-6),
     ([1.0] * len(ORDERS), 1.0), ([1.0] * len(ORDERS), -0.1), ([1.0] * len(ORDERS), math.nan)],
)
def test_epsilon_from_rdp_rejects_bad_input(rdp: list[float], delta: float) -> None:
    with pytest.raises(InvalidParameterError):
        epsilon_from_rdp(rdp, delta)


def test_rdp_vectors_add_up() -> None:
    acc = Accountant([LAP, GAUSS, GAUSS])
    summed = np.array(rdp_vector(LAP)) + 2 * np.array(rdp_vector(GAUSS))
    assert acc.epsilon(DELTA, method="rdp") <= epsilon_from_rdp(summed, DELTA) + 1e-12


def test_admission_is_sound_and_fast() -> None:
    acc = Accountant([LAP] * 5000 + [GAUSS] * 5000)
    assert len(acc) == 10_000
    budget = acc.epsilon(DELTA, method="rdp") + 0.5
    assert acc.can_afford(GAUSS, epsilon_budget=budget, delta_budget=DELTA)
    assert not acc.can_afford(
        PrivacyEvent.gaussian(0.5), epsilon_budget=budget, delta_budget=DELTA
    )
    timings = []
    for _ in range(200):
        start = time.perf_counter()
        acc.can_afford(GAUSS, epsilon_budget=budget, delta_budget=DELTA)
        timings.append(time.perf_counter() - start)
    assert float(np.median(timings)) < 1e-3


def test_admission_never_exceeds_pld() -> None:
    acc = Accountant()
    budget = 2.0
    while acc.can_afford(GAUSS, epsilon_budget=budget, delta_budget=DELTA):
        acc.add(GAUSS)
    assert acc.epsilon(DELTA) <= budget
    assert len(acc) > 10


def test_pure_only_history_uses_basic_composition() -> None:
    acc = Accountant([PrivacyEvent.laplace(0.5)] * 3)
    assert acc.can_afford(PrivacyEvent.laplace(0.5), epsilon_budget=2.0, delta_budget=0.0)
    assert not acc.can_afford(PrivacyEvent.laplace(0.51), epsilon_budget=2.0, delta_budget=0.0)
    assert not acc.can_afford(GAUSS, epsilon_budget=100.0, delta_budget=0.0)


def test_approx_dp_events_compose_by_basic_composition() -> None:
    acc = Accountant([PrivacyEvent.approx_dp(0.3, 1e-7), PrivacyEvent.laplace(0.2)])
    assert acc.epsilon(5e-8) == math.inf  # less delta than the approx_dp event took
    assert acc.epsilon(1e-7) == pytest.approx(0.5)  # the Laplace release needs no delta
    assert acc.can_afford(PrivacyEvent.laplace(0.2), epsilon_budget=0.7, delta_budget=1e-7)
    assert acc.epsilon(2e-7) == pytest.approx(0.5, abs=1e-3)
    assert not acc.can_afford(PrivacyEvent.laplace(0.1), epsilon_budget=0.55, delta_budget=2e-7)
    assert acc.can_afford(PrivacyEvent.laplace(0.05), epsilon_budget=0.55, delta_budget=2e-7)
    with pytest.raises(InvalidParameterError):
        rdp_vector(PrivacyEvent.approx_dp(0.3, 1e-7))


def test_state_round_trip() -> None:
    events = [LAP, GAUSS, PrivacyEvent.approx_dp(0.1, 1e-8),
              PrivacyEvent.subsampled_gaussian(noise_multiplier=1.1, sampling_rate=0.02, steps=5)]
    acc = Accountant(events)
    restored = Accountant.from_state_dict(acc.state_dict())
    assert restored.events == acc.events
    assert restored.epsilon(DELTA, method="rdp") == acc.epsilon(DELTA, method="rdp")
    for event in events:
        assert PrivacyEvent.from_dict(event.to_dict()) == event


@pytest.mark.parametrize(
    "build",
    [lambda: PrivacyEvent.laplace(0.0), lambda: PrivacyEvent.laplace(-1.0),
     lambda: PrivacyEvent.laplace(math.inf), lambda: PrivacyEvent.gaussian(math.nan),
     lambda: PrivacyEvent.approx_dp(1.0, 1.0), lambda: PrivacyEvent.approx_dp(1.0, 0.0),
     lambda: PrivacyEvent.subsampled_gaussian(noise_multiplier=1.0, sampling_rate=1.5, steps=1),
     lambda: PrivacyEvent.subsampled_gaussian(noise_multiplier=1.0, sampling_rate=0.5, steps=0),
     lambda: PrivacyEvent("exponential", epsilon=1.0),
     lambda: PrivacyEvent("laplace", epsilon=1.0, noise_multiplier=2.0),
     lambda: PrivacyEvent.from_dict({"kind": "laplace", "epsilon": 1.0, "x": 1}),
     lambda: Accountant.from_state_dict({"version": 99, "events": []}),
     lambda: Accountant().epsilon(1.0), lambda: Accountant().epsilon(1e-6, method="magic"),
     lambda: Accountant().can_afford(LAP, epsilon_budget=0.0, delta_budget=1e-6),
     lambda: Accountant().can_afford(LAP, epsilon_budget=1.0, delta_budget=-1e-6)],
)
def test_invalid_parameters_raise_privacy_errors(build) -> None:
    with pytest.raises(PrivacyError):
        build()


def test_pld_figure_is_never_looser_than_rdp() -> None:
    # many distinct small epsilons off the 1e-3 grid: the finer grid keeps PLD tighter than RDP
    varied = Accountant([PrivacyEvent.laplace(0.01 * (1 + i / 1000)) for i in range(200)])
    assert varied.epsilon(DELTA) < varied.epsilon(DELTA, method="rdp")
    # tiny Gaussian costs, where a 1e-3 grid would dominate: the RDP bound is returned
    tiny = Accountant([PrivacyEvent.gaussian(1e4)] * 10)
    assert tiny.epsilon(DELTA) == tiny.epsilon(DELTA, method="rdp")
