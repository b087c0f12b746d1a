"""``Client(url, key)``: the analyst's side of the privtext HTTP API.

One method per query kind, taking the API's own field names (``of``, ``feature``, ``bounds``,
``bins``, ``quantiles``, ``k``, ``terms``, ``group_by``, ``filters``, ``privacy``,
``max_messages_per_sender``, ``confidence_level``, ``dry_run``; README.md's table says what
each means). A parameter left as None is not sent, so the service's default applies. Answers
come back as :class:`~privtext.client.results.Result` DataFrames; a dry run
(``dry_run=True``, or :meth:`Client.price`) as a :class:`Quote`; every error as a
:class:`~privtext.client.errors.PrivtextError` (``BudgetExhausted`` carries what is left).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import requests

from privtext.client.errors import error_from
from privtext.client.results import Result, result_from


@dataclass(frozen=True)
class Quote:
    """The price of a query, nothing charged or read: ``cost`` (the event and its epsilon at
    the budget's delta, and ``marginal_epsilon``: how much the spent total would grow),
    whether the budget and the corpus cap afford it now, and the predicted interval
    half-widths. When the same query was answered before, ``replay`` is True and ``result``
    holds that stored answer (asking for it again is free)."""

    cost: dict[str, Any]
    affordable: bool | None
    predicted: dict[str, Any] | None
    budget: dict[str, Any]
    replay: bool
    result: Result | None
    raw: dict[str, Any]


def _body(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, **{k: v for k, v in params.items() if v is not None}}


class Client:
    """A session with the service at ``url`` (e.g. ``http://localhost:8000``) under ``key``
    (an analyst's API key). ``timeout`` is in seconds, per request."""

    def __init__(self, url: str, key: str, *, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        if "://" not in self.url:
            self.url = "http://" + self.url
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {key}"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP -------------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._session.request(
            method, self.url + path, timeout=self.timeout, **kwargs
        )
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            raise error_from(response.status_code, body, response.headers.get("Retry-After"))
        return body

    def query(self, body: dict[str, Any]) -> Result | Quote:
        """Send one ``POST /v1/queries`` body as it is; the methods below build it for you."""
        answer = self._call("POST", "/v1/queries", json=body)
        if answer.get("dry_run"):
            stored = result_from(answer) if answer.get("replay") else None
            return Quote(
                cost=answer["cost"],
                affordable=answer.get("affordable"),
                predicted=answer.get("predicted"),
                budget=answer["budget"],
                replay=bool(answer.get("replay")),
                result=stored,
                raw=answer,
            )
        return result_from(answer)

    def price(self, kind: str, **params: Any) -> Quote:
        """What ``kind`` with ``params`` would cost (a dry run): nothing charged or read."""
        quote = self.query(_body(kind, {**params, "dry_run": True}))
        assert isinstance(quote, Quote)
        return quote

    # -- one method per query kind ----------------------------------------------------------

    def count(self, of: str | None = None, **common: Any) -> Result | Quote:
        """Messages (default), ``senders`` or ``conversations``."""
        return self.query(_body("count", {"of": of, **common}))

    def sum(self, feature: str, bounds: dict[str, float] | None = None, **common: Any) -> Any:
        """The sum of a per-message ``feature``, each value clamped to ``bounds``."""
        return self.query(_body("sum", {"feature": feature, "bounds": bounds, **common}))

    def mean(self, feature: str, bounds: dict[str, float] | None = None, **common: Any) -> Any:
        """The mean of ``feature`` (a noisy sum over a noisy count)."""
        return self.query(_body("mean", {"feature": feature, "bounds": bounds, **common}))

    def variance(
        self, feature: str, bounds: dict[str, float] | None = None, **common: Any
    ) -> Result | Quote:
        """The variance of ``feature``."""
        return self.query(_body("variance", {"feature": feature, "bounds": bounds, **common}))

    def quantiles(
        self,
        feature: str,
        quantiles: list[float] | None = None,
        bounds: dict[str, float] | None = None,
        **common: Any,
    ) -> Result | Quote:
        """Quantiles of ``feature`` (default the median); one row per quantile."""
        params = {"feature": feature, "quantiles": quantiles, "bounds": bounds, **common}
        return self.query(_body("quantiles", params))

    def histogram(
        self,
        feature: str,
        bins: list[float],
        bounds: dict[str, float] | None = None,
        **common: Any,
    ) -> Result | Quote:
        """Counts of ``feature`` in the bins between ascending edges ``bins``; one row per bin."""
        params = {"feature": feature, "bins": bins, "bounds": bounds, **common}
        return self.query(_body("histogram", params))

    def top_terms(
        self,
        k: int | None = None,
        terms: list[str] | None = None,
        bigrams: bool | None = None,
        max_terms_per_sender: int | None = None,
        **common: Any,
    ) -> Result | Quote:
        """The most widespread terms (``value``: how many senders use each), or the counts of
        declared ``terms``; one row per term."""
        params = {
            "k": k,
            "terms": terms,
            "bigrams": bigrams,
            "max_terms_per_sender": max_terms_per_sender,
            **common,
        }
        return self.query(_body("top_terms", params))

    def sentiment(self, bounds: dict[str, float] | None = None, **common: Any) -> Any:
        """Mean VADER compound and the positive, neutral and negative shares; one row per
        statistic (per group and statistic with ``group_by``)."""
        return self.query(_body("sentiment", {"bounds": bounds, **common}))

    def mean_embedding(self, **common: Any) -> Result | Quote:
        """The noisy mean embedding of the matching messages (``raw["result"]`` has the
        vector and its nearest public words)."""
        return self.query(_body("mean_embedding", common))

    def topics(
        self, clusters: int | None = None, iterations: int | None = None, **common: Any
    ) -> Result | Quote:
        """DP k-means topics; one row per topic (its noisy size, and its nearest words)."""
        params = {"clusters": clusters, "iterations": iterations, **common}
        return self.query(_body("topics", params))

    # -- budget, history, who am I -------------------------------------------------------------

    def budget(self) -> dict[str, Any]:
        """``GET /v1/budget``: the budget, the admission bound spent, the tight figure, what
        remains, and the counts of reserved and committed charges."""
        return dict(self._call("GET", "/v1/budget"))

    def history(self, limit: int = 100, offset: int = 0) -> pd.DataFrame:
        """``GET /v1/budget/history``: one row per charge, newest first, with the privacy
        event's fields as columns (``event.kind``, ``event.epsilon``, ...)."""
        page = self._call("GET", "/v1/budget/history", params={"limit": limit, "offset": offset})
        frame = pd.json_normalize(page["entries"])
        for column in ("created_at", "settled_at"):
            if column in frame:
                frame[column] = pd.to_datetime(frame[column], format="ISO8601", utc=True)
        return frame

    def me(self) -> dict[str, Any]:
        """``GET /v1/me``: who this key is."""
        return dict(self._call("GET", "/v1/me"))

    def snapshot(self) -> dict[str, Any]:
        """``GET /v1/snapshots/live``: the live snapshot's id, metadata columns and features."""
        return dict(self._call("GET", "/v1/snapshots/live"))
