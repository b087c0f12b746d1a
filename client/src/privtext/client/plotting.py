"""``Result.plot()``: the released values with their intervals, so the noise shows at a glance.

Bars with error bars from ``lower`` to ``upper``; a line with a shaded band when the rows are
dates (a ``group_by`` over days, weeks or months); grouped bars, one colour per statistic, for
sentiment by group. Imported only when plotting, so the client works without matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from privtext.client.results import Result


def _errors(frame: pd.DataFrame) -> np.ndarray:
    value = frame["value"].astype(float).to_numpy()
    lower = frame["lower"].astype(float).to_numpy()
    upper = frame["upper"].astype(float).to_numpy()
    return np.vstack([value - lower, upper - value])


def _dates(index: pd.Index) -> pd.DatetimeIndex | None:
    if isinstance(index, pd.MultiIndex) or not pd.api.types.is_string_dtype(index):
        return None
    try:
        parsed = pd.to_datetime(index, format="%Y-%m-%d")
    except (ValueError, TypeError):
        return None
    return pd.DatetimeIndex(parsed)


def plot_result(result: Result, ax: Any = None, title: str | None = None, **kwargs: Any) -> Any:
    """Draw ``result`` on ``ax`` (a new figure if None); returns the Axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=kwargs.pop("figsize", (8, 4)))
    level = result.confidence_level or 0.95
    if isinstance(result.index, pd.MultiIndex):
        _grouped_bars(result, ax, **kwargs)
    elif (dates := _dates(result.index)) is not None:
        values = result["value"].astype(float)
        ax.plot(dates, values, marker="o", **kwargs)
        ax.fill_between(dates, result["lower"].astype(float), result["upper"].astype(float),
                        alpha=0.25, label=f"{level:.0%} interval")  # fmt: skip
        ax.legend()
    else:
        labels = [str(k) for k in result.index]
        ax.bar(labels, result["value"].astype(float), yerr=_errors(result), capsize=4, **kwargs)
        ax.tick_params(axis="x", labelrotation=45 if len(labels) > 6 else 0)
    ax.set_ylabel(f"value ({level:.0%} interval)")
    ax.set_title(title or _title(result))
    return ax


def _grouped_bars(result: Result, ax: Any, **kwargs: Any) -> None:
    keys = list(dict.fromkeys(result.index.get_level_values(0)))
    stats = list(dict.fromkeys(result.index.get_level_values(1)))
    width = 0.8 / len(stats)
    x = np.arange(len(keys))
    for i, stat in enumerate(stats):
        part = result.xs(stat, level=1).reindex(keys)
        ax.bar(x + i * width, part["value"].astype(float), width, yerr=_errors(part),
               capsize=3, label=stat, **kwargs)  # fmt: skip
    ax.set_xticks(x + width * (len(stats) - 1) / 2, [str(k) for k in keys])
    ax.legend()


def _title(result: Result) -> str:
    cost = (result.cost or {}).get("epsilon")
    spent = f", epsilon {cost:.3g}" if isinstance(cost, int | float) else ""
    return f"{result.kind}{spent}" + (" (replay)" if result.replay else "")
