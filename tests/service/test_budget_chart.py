"""The budget page's chart geometry: the replayed series and its layout at the edges."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from mechanisms.events import PrivacyEvent
from mechanisms.ledger import LedgerEntry, Spend
from service.budget_chart import MAX_POINTS, build_chart, cumulative_spend, nice_step

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _entry(i: int, event: PrivacyEvent, status: str = "committed", hours: float = 0) -> LedgerEntry:
    return LedgerEntry(f"rsv_{i:04d}", "an_x", event, status, T0 + timedelta(hours=hours or i))


def _coords(points: str) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in (p.split(",") for p in points.split())]


def test_cumulative_spend_skips_refunds_and_sorts_by_time() -> None:
    entries = [
        _entry(3, PrivacyEvent.laplace(0.25)),
        _entry(1, PrivacyEvent.laplace(0.5)),
        _entry(2, PrivacyEvent.laplace(1.0), status="refunded"),
        _entry(4, PrivacyEvent.laplace(0.1), status="reserved"),
    ]
    series = cumulative_spend(entries, 1e-6)
    assert [p.at for p in series] == [T0 + timedelta(hours=h) for h in (1, 3, 4)]
    assert [p.epsilon for p in series] == pytest.approx([0.5, 0.75, 0.85])


def test_cumulative_spend_uses_the_ledgers_admission_bound() -> None:
    events = [PrivacyEvent.gaussian(3.0) for _ in range(5)]
    series = cumulative_spend([_entry(i + 1, e) for i, e in enumerate(events)], 1e-6)
    total = Spend()
    for e in events:
        total = total + Spend.of(e)
    assert series[-1].epsilon == pytest.approx(total.epsilon(1e-6), rel=1e-12)
    assert all(a.epsilon < b.epsilon for a, b in zip(series, series[1:], strict=False))


def test_long_histories_are_thinned_but_keep_the_last_point() -> None:
    entries = [_entry(i, PrivacyEvent.laplace(0.001), hours=i / 100) for i in range(1, 1001)]
    series = cumulative_spend(entries, 1e-6)
    assert len(series) <= MAX_POINTS + 1
    assert series[0].at == entries[0].created_at and series[-1].at == entries[-1].created_at
    total = Spend()
    for e in entries:
        total = total + Spend.of(e.event)
    # Many small Laplace releases: the RDP conversion (not basic composition's 1.0) is the bound.
    assert series[-1].epsilon == pytest.approx(total.epsilon(1e-6), rel=1e-12)
    assert series[-1].epsilon < 1.0


def test_chart_is_a_step_line_inside_the_plot() -> None:
    series = cumulative_spend([_entry(i, PrivacyEvent.laplace(0.5)) for i in (1, 2, 3)], 1e-6)
    chart = build_chart(series, budget_epsilon=2.0, end=T0 + timedelta(hours=5))
    pts = _coords(chart.points)
    assert len(pts) == 2 + 2 * len(series)
    assert pts[0] == (chart.left, chart.bottom) and pts[-1][0] == chart.right
    for x, y in pts:
        assert chart.left <= x <= chart.right and chart.top <= y <= chart.bottom
    assert [x for x, _ in pts] == sorted(x for x, _ in pts)
    assert chart.budget_y is not None and chart.top <= chart.budget_y < pts[-1][1]
    assert chart.last_epsilon == pytest.approx(1.5)
    assert chart.y_ticks[0].label == "0" and float(chart.y_ticks[-1].label) >= 2.0


@pytest.mark.parametrize("budget", [None, 5e-324, 1e-12, 1.0, 1e300, 1.7e308, math.inf])
def test_chart_survives_extreme_budgets(budget: float | None) -> None:
    chart = build_chart([], budget_epsilon=budget, end=T0)
    for x, y in _coords(chart.points):
        assert math.isfinite(x) and math.isfinite(y)
    assert 2 <= len(chart.y_ticks) <= 12
    assert chart.budget_y is None or math.isfinite(chart.budget_y)


def test_chart_clamps_an_infinite_spend_and_a_clock_ahead() -> None:
    series = cumulative_spend([_entry(1, PrivacyEvent.approx_dp(1.0, 0.5))], 1e-6)
    assert series[-1].epsilon == math.inf
    chart = build_chart(series, budget_epsilon=1.0, end=T0)  # entry is after "now"
    pts = _coords(chart.points)
    assert all(chart.top <= y <= chart.bottom for _, y in pts)
    assert all(chart.left <= x <= chart.right for x, _ in pts)


@pytest.mark.parametrize("span", [1e-300, 0.3, 1.0, 7.0, 1e300])
def test_nice_step(span: float) -> None:
    step = nice_step(span)
    assert 2 <= math.ceil(span / step) <= 5
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert round(mantissa, 6) in {1.0, 2.0, 2.5, 5.0}
