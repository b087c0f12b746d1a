"""Answers of ``POST /v1/queries`` as pandas DataFrames.

A :class:`Result` is a DataFrame with one row per released number: ``value``, its interval
(``lower``, ``upper``, at ``confidence_level``) and ``bias``, the answer's notes on what
clamping, the per-sender cap or a threshold may have changed (the interval does not cover
them; the same notes on every row). Rows are indexed by what the number is about: a group key,
a quantile, a bin, a term, a sentiment statistic (``statistic``), or both a group and a
statistic. The answer's ``cost``, ``budget``, ``snapshot_id``, ``replay``, ``bias_notes``
and the whole JSON (``raw``) are attributes. ``plot()`` draws the values with their intervals
(matplotlib).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

Row = dict[str, Any]


class Result(pd.DataFrame):
    """A query's answer: a DataFrame with the answer's facts as attributes."""

    _metadata = [
        "kind",
        "cost",
        "budget",
        "snapshot_id",
        "replay",
        "bias_notes",
        "confidence_level",
        "raw",
    ]

    @property
    def _constructor(self) -> type[Result]:
        return Result

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """Bars (or, for a time axis, a line) of ``value`` with the interval drawn; returns
        the matplotlib Axes. Needs matplotlib (``pip install privtext-client[plot]``).
        ``pd.DataFrame(result).plot`` is pandas' own plotting."""
        from privtext.client.plotting import plot_result  # matplotlib only when plotting

        return plot_result(self, ax=ax, **kwargs)


def _estimate(est: dict[str, Any]) -> Row:
    lower, upper = est.get("interval") or (None, None)
    return {"value": est.get("value"), "lower": lower, "upper": upper}


def _sentiment_rows(part: dict[str, Any]) -> list[tuple[str, Row]]:
    rows = [("mean_compound", _estimate(part["mean_compound"]))]
    rows += [(f"share_{name}", _estimate(est)) for name, est in part["shares"].items()]
    return rows


def _scalar_rows(kind: str, result: dict[str, Any]) -> tuple[list[Any], list[Row], str | None]:
    """Index, rows and the index's name of an answer without ``group_by``."""
    if "quantiles" in result and isinstance(result["quantiles"], list):
        qs = result["quantiles"]
        return [q["quantile"] for q in qs], [_estimate(q) for q in qs], "quantile"
    if "bins" in result:
        bins = result["bins"]
        index = [pd.Interval(b["lower"], b["upper"], closed="left") for b in bins]
        return index, [_estimate(b) for b in bins], "bin"
    if "terms" in result and kind == "top_terms":
        terms = result["terms"]
        rows = [_estimate({"value": t["senders"], "interval": t["interval"]}) for t in terms]
        return [t["term"] for t in terms], rows, "term"
    if "mean_compound" in result:
        pairs = _sentiment_rows(result)
        return [p[0] for p in pairs], [p[1] for p in pairs], "statistic"
    if "topics" in result:
        topics = result["topics"]
        rows = [
            {**_estimate(t["count"]), "terms": [w["term"] for w in t["terms"]]} for t in topics
        ]
        return list(range(len(topics))), rows, "topic"
    if "count" in result and isinstance(result["count"], dict):  # mean_embedding
        row = {**_estimate(result["count"]), "nearest_terms": result.get("nearest_terms")}
        return ["count"], [row], "statistic"
    return [kind], [_estimate(result)], None


def _group_rows(groups: list[dict[str, Any]]) -> tuple[Any, list[Row]]:
    if groups and "mean_compound" in groups[0]:
        index, rows = [], []
        for g in groups:
            for stat, row in _sentiment_rows(g):
                index.append((g["key"], stat))
                rows.append(row)
        return pd.MultiIndex.from_tuples(index, names=["key", "statistic"]), rows
    return pd.Index([g["key"] for g in groups], name="key"), [_estimate(g) for g in groups]


def result_from(answer: dict[str, Any]) -> Result:
    """The :class:`Result` of one decoded answer of ``POST /v1/queries`` (not a dry run)."""
    kind = str(answer.get("kind", ""))
    if answer.get("groups") is not None:
        index, rows = _group_rows(answer["groups"])
    else:
        values, rows, name = _scalar_rows(kind, answer.get("result") or {})
        index = pd.Index(values, name=name)
    bias = list(answer.get("bias") or [])
    frame = Result(rows, index=index, columns=_columns(rows))
    frame["bias"] = [tuple(bias)] * len(frame)
    frame.kind = kind
    frame.cost = answer.get("cost")
    frame.budget = answer.get("budget")
    frame.snapshot_id = answer.get("snapshot_id")
    frame.replay = bool(answer.get("replay"))
    frame.bias_notes = bias
    frame.confidence_level = answer.get("confidence_level")
    frame.raw = answer
    return frame


def _columns(rows: list[Row]) -> list[str]:
    columns = ["value", "lower", "upper"]
    for row in rows:
        columns += [c for c in row if c not in columns]
    return columns
