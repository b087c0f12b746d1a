"""The budget page's chart: cumulative spent epsilon over time, as plain SVG geometry.

Pure functions, no Flask: ``cumulative_spend`` replays an analyst's ledger entries with the
ledger's own maths (``Spend.of`` summed, then ``Spend.epsilon`` at the budget's delta, i.e. the
admission bound), and ``build_chart`` turns the series into coordinates, ticks and labels that
the template draws as one step polyline, a dashed budget line and two labelled axes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from mechanisms.ledger import LedgerEntry, Spend

#: Most points drawn per analyst: beyond this, intermediate points are thinned (the first and
#: last are always kept), so a long history costs at most this many RDP conversions.
MAX_POINTS = 400

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 44


@dataclass(frozen=True)
class Point:
    at: datetime
    epsilon: float  # cumulative spent epsilon (admission bound) after this entry


@dataclass(frozen=True)
class Tick:
    pos: float  # x or y in SVG user units
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float
    points: str  # the polyline's ``points`` attribute
    budget_y: float | None  # y of the dashed budget line; None when there is no budget
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    x_caption: str
    last_epsilon: float  # the series' final value (0.0 when nothing was spent)
    count: int  # points drawn
    start: datetime  # the time at the left end of the x axis
    end: datetime  # the time at the right end


def cumulative_spend(
    entries: Iterable[LedgerEntry], delta: float, *, max_points: int = MAX_POINTS
) -> list[Point]:
    """The cumulative admission-bound epsilon at ``delta`` after each live entry, oldest first.

    Refunded entries are skipped (the ledger does not count them); reserved and committed
    entries count, as in ``Ledger.remaining``. At most ``max_points`` points are returned.
    """
    live = sorted(
        (e for e in entries if e.status != "refunded"), key=lambda e: (e.created_at, e.id)
    )
    if not live:
        return []
    n = len(live)
    keep = _thin(n, max_points)
    total = Spend()
    points: list[Point] = []
    for i, entry in enumerate(live):
        total = total + Spend.of(entry.event)
        if i in keep:
            points.append(Point(entry.created_at, total.epsilon(delta)))
    return points


def _thin(n: int, max_points: int) -> set[int]:
    if n <= max_points:
        return set(range(n))
    step = (n - 1) / (max_points - 1)
    return {round(k * step) for k in range(max_points)} | {n - 1}


def nice_step(span: float, target: int = 4) -> float:
    """A 1-2-2.5-5 x 10^k step that cuts ``span`` (> 0) into about ``target`` pieces."""
    raw = span / target
    base = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * base >= raw:
            return m * base
    return 10 * base  # pragma: no cover - the loop always returns


def fmt_epsilon(value: float) -> str:
    if math.isinf(value):
        return "∞"
    return f"{value:.4g}"


def _time_span(
    points: Sequence[Point], start: datetime | None, end: datetime
) -> tuple[datetime, datetime]:
    """The time axis: from ``start`` (default: the first point; moved back to a point before
    it) to ``end`` (moved on to a later point), at least a minute long."""
    if start is None:
        start = points[0].at if points else end - timedelta(hours=1)
    elif points:
        start = min(start, points[0].at)
    if points:  # another worker's clock may run ahead of this one's
        end = max(end, points[-1].at)
    if end <= start:
        end = start + timedelta(minutes=1)
    return start, end


def _y_scale(points: Sequence[Point], budget_epsilon: float | None) -> tuple[float, float]:
    """(tick step, top of the axis) for the points and the budget line."""
    finite = [p.epsilon for p in points if math.isfinite(p.epsilon)]
    if budget_epsilon is not None and math.isfinite(budget_epsilon):
        finite.append(budget_epsilon)
    top_value = max([*finite, 0.0])
    # 10% headroom, kept within floats whose quarter is still a normal positive number.
    span = min(max(top_value * 1.1, 1e-300), 1e300) if top_value > 0 else 1.0
    step = nice_step(span)
    return step, step * math.ceil(span / step)


def _x_labels(start: datetime, end: datetime) -> tuple[list[tuple[datetime, str]], str]:
    """Three labelled instants (start, middle, end) and the axis caption."""
    long = (end - start).total_seconds() >= 2 * 86400
    fmt = "%Y-%m-%d" if long else "%H:%M:%S"
    instants = [start + (end - start) * f for f in (0.0, 0.5, 1.0)]
    caption = "time (UTC)" if long else f"time (UTC) on {start:%Y-%m-%d}"
    if not long and start.date() != end.date():
        caption = f"time (UTC), {start:%Y-%m-%d} to {end:%Y-%m-%d}"
    return [(at, at.strftime(fmt)) for at in instants], caption


def build_chart(
    points: Sequence[Point],
    *,
    budget_epsilon: float | None,
    end: datetime,
    start: datetime | None = None,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Chart:
    """Lay out ``points`` (oldest first) between ``start`` and ``end``: charts laid out with the
    same ``start`` and ``end`` share their time axis. Without ``start``, the first point's time;
    a point before ``start`` moves it back."""
    start, end = _time_span(points, start, end)
    step, y_max = _y_scale(points, budget_epsilon)
    x0, x1 = float(LEFT), float(width - RIGHT)
    y0, y1 = float(height - BOTTOM), float(TOP)  # y0: the x axis (epsilon 0)
    span = (end - start).total_seconds()

    def x(at: datetime) -> float:
        return x0 + (x1 - x0) * (at - start).total_seconds() / span

    def y(eps: float) -> float:
        eps = min(max(eps, 0.0), y_max) if not math.isnan(eps) else y_max
        return y0 - (y0 - y1) * (eps / y_max)

    coords: list[tuple[float, float]] = [(x0, y0)]
    prev = 0.0
    for p in points:
        coords += [(x(p.at), y(prev)), (x(p.at), y(p.epsilon))]
        prev = p.epsilon
    coords.append((x1, y(prev)))

    y_ticks = tuple(
        Tick(y(k * step), fmt_epsilon(k * step)) for k in range(round(y_max / step) + 1)
    )
    labels, caption = _x_labels(start, end)
    x_ticks = tuple(Tick(x(at), text) for at, text in labels)
    return Chart(
        width=width,
        height=height,
        left=x0,
        right=x1,
        top=y1,
        bottom=y0,
        points=" ".join(f"{a:.1f},{b:.1f}" for a, b in coords),
        budget_y=y(budget_epsilon) if budget_epsilon is not None else None,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        x_caption=caption,
        last_epsilon=points[-1].epsilon if points else 0.0,
        count=len(points),
        start=start,
        end=end,
    )
