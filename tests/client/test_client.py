"""``privtext.client`` against the real service: gunicorn on loopback over a demo slice, set up
as ``make run`` does (``tests/served.py``). Each kind's answer as a DataFrame, dry-run
pricing, budget and history, the error envelope as exceptions, and plots with their intervals.

Cost: the session's service (``served_demo``, 8 s to start, shared with the README tour's
test) and about 40 queries: 5 s (measured on a loaded 2-core machine, 2026-12-02)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer
from privtext.client import (
    AuthenticationError,
    BudgetExhausted,
    Client,
    Conflict,
    InvalidRequest,
    Quote,
    Result,
)

from tests.client.conftest import new_analyst
from tests.served import Served

pytestmark = pytest.mark.gunicorn
ROOT = Path(__file__).resolve().parents[2]
MONTHS = {"start": "2018-04-01T00:00:00Z", "end": "2018-08-01T00:00:00Z"}


def _intervals_hold(result: Result) -> None:
    assert list(result.columns[:4]) == ["value", "lower", "upper", "bias"]
    for _, row in result.iterrows():
        assert row["lower"] <= row["value"] <= row["upper"] or math.isnan(row["value"])


def test_each_kind_is_a_frame_with_its_answer_as_attributes(served: Served, key: str) -> None:
    client = Client(served.url, key)
    live = client.snapshot()["id"]
    count = client.count(of="senders")
    assert isinstance(count, Result) and list(count.index) == ["count"]
    assert count.snapshot_id == live and count.cost["epsilon"] == pytest.approx(1.0)
    assert count.replay is False and count.budget["remaining_epsilon"] == pytest.approx(19.0)
    assert count.raw["result"]["value"] == count.loc["count", "value"]
    mean = client.mean("tokens", bounds={"lower": 0, "upper": 40}, privacy={"epsilon": 0.5})
    assert mean.bias_notes and mean["bias"].iloc[0] == tuple(mean.bias_notes)
    assert mean.cost["epsilon"] == pytest.approx(0.5)
    quantiles = client.quantiles("chars", quantiles=[0.5, 0.9])
    assert list(quantiles.index) == [0.5, 0.9] and quantiles.index.name == "quantile"
    histogram = client.histogram("tokens", bins=[0, 5, 10, 20, 40])
    assert [(b.left, b.right) for b in histogram.index] == [(0, 5), (5, 10), (10, 20), (20, 40)]
    terms = client.top_terms(terms=["movie", "game"])
    assert set(terms.index) == {"movie", "game"} and terms.index.name == "term"
    sentiment = client.sentiment()
    assert list(sentiment.index) == [
        "mean_compound", "share_positive", "share_neutral", "share_negative"
    ]  # fmt: skip
    months = client.count(group_by={"time": "month", "range": MONTHS})
    assert list(months.index) == ["2018-04-01", "2018-05-01", "2018-06-01", "2018-07-01"]
    by_rating = client.sentiment(group_by={"metadata": "rating_upbeat", "values": ["5", "10"]})
    assert by_rating.index.names == ["key", "statistic"] and len(by_rating) == 8
    for result in (count, mean, quantiles, histogram, terms, sentiment, months, by_rating):
        _intervals_hold(result)
    others = [client.sum("chars"), client.variance("sentiment_compound")]
    assert [r.kind for r in others] == ["sum", "variance"]
    # the same query again: the stored answer, free, and marked so
    again = client.count(of="senders")
    assert again.replay is True and again.cost["epsilon"] == 0
    assert again.loc["count", "value"] == count.loc["count", "value"]


def test_price_budget_and_history(served: Served, key: str) -> None:
    client = Client(served.url, key)
    quote = client.price("mean", feature="chars")
    assert isinstance(quote, Quote) and quote.affordable is True and quote.replay is False
    assert quote.cost["epsilon"] == pytest.approx(1.0) and "sum" in quote.predicted["parts"]
    assert client.budget()["committed"] == 0  # a price charges nothing
    client.count()
    client.count(privacy={"epsilon": 0.25})
    budget = client.budget()
    assert budget["committed"] == 2 and budget["spent_epsilon"] == pytest.approx(1.25)
    history = client.history()
    assert isinstance(history, pd.DataFrame) and len(history) == 2
    assert list(history["event.epsilon"]) == [0.25, 1.0]  # newest first
    assert set(history["status"]) == {"committed"}
    assert isinstance(history["created_at"].dtype, pd.DatetimeTZDtype)
    # a dry run of a query already answered gives that answer back
    again = client.count(dry_run=True)
    assert isinstance(again, Quote) and again.replay is True and again.result is not None


def test_errors_are_exceptions_with_the_envelope(served: Served) -> None:
    client = Client(served.url, new_analyst(served, epsilon=1.5))
    with pytest.raises(InvalidRequest) as invalid:
        client.mean("no_such_feature")
    assert invalid.value.status == 422 and "feature" in invalid.value.errors
    assert invalid.value.request_id
    client.count()
    with pytest.raises(BudgetExhausted) as exhausted:
        client.count(of="senders")  # epsilon 1 more: 2 > 1.5
    assert exhausted.value.status == 409 and exhausted.value.code == "budget_exhausted"
    assert exhausted.value.remaining_epsilon == pytest.approx(0.5)
    assert exhausted.value.remaining_delta == pytest.approx(1e-6)
    with pytest.raises(Conflict) as not_ready:
        client.mean_embedding(privacy={"mechanism": "gaussian", "epsilon": 0.1, "delta": 1e-7})
    assert not_ready.value.code == "embeddings_not_ready"
    with pytest.raises(AuthenticationError):
        Client(served.url, "ptk_0000000000000000_nope").budget()
    assert client.budget()["committed"] == 1  # nothing else was charged


def test_plots_draw_the_intervals(served: Served, key: str, tmp_path: Path) -> None:
    client = Client(served.url, key)
    bars = client.histogram("tokens", bins=[0, 5, 10, 20, 40]).plot()
    (errorbars,) = [c for c in bars.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars.patches) == 4 and errorbars.has_yerr
    line = client.count(group_by={"time": "month", "range": MONTHS}).plot()
    assert not line.patches and len(line.lines) == 1 and len(line.lines[0].get_xdata()) == 4
    assert any(isinstance(c, PolyCollection) for c in line.collections)  # the interval band
    grouped = client.sentiment(group_by={"metadata": "rating_upbeat", "values": ["5", "10"]})
    ax = grouped.plot()
    assert len(ax.patches) == 8 and len(ax.get_legend().get_texts()) == 4
    ax.figure.savefig(tmp_path / "sentiment.png")
    assert (tmp_path / "sentiment.png").stat().st_size > 1000


def test_the_readme_example_runs(served: Served, tmp_path: Path) -> None:
    script = ROOT / "client" / "examples" / "three_questions.py"
    readme = (ROOT / "README.md").read_text()
    assert script.read_text().split('"""', 2)[2].strip() in readme  # the README shows it whole
    done = subprocess.run(
        [sys.executable, str(script), served.url, new_analyst(served), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": f"{ROOT / 'client' / 'src'}", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "busiest month" in done.stdout and "negative" in done.stdout
    assert "budget left: 16.0" in done.stdout
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["months.png", "sorry.png", "topics.png"]
