"""Public per-message features, each computed from one message alone.

Kept free of heavy imports so that worker processes start quickly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

#: A token is a maximal run of Unicode letters/digits, optionally joined by inner apostrophes
#: ("don't", "it's"), matched on the lowercased text. Underscores and punctuation separate tokens.
TOKEN_RE = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")

#: Columns produced by :func:`score_texts`, in order.
SENTIMENT_COLUMNS = ("sentiment_compound", "sentiment_pos", "sentiment_neu", "sentiment_neg")

_analyzer: SentimentIntensityAnalyzer | None = None


def tokenize(text: str) -> list[str]:
    """Split ``text`` into lowercase word tokens (see :data:`TOKEN_RE`).

    >>> tokenize("Don't PANIC, it's 42_ok!")
    ["don't", 'panic', "it's", '42', 'ok']
    """
    return TOKEN_RE.findall(text.lower())


def _get_analyzer() -> SentimentIntensityAnalyzer:
    global _analyzer  # one analyzer per process: loading the lexicon takes ~0.1 s
    if _analyzer is None:
        _analyzer = SentimentIntensityAnalyzer()
    return _analyzer


def score_texts(texts: Sequence[str]) -> tuple[list[int], list[tuple[float, float, float, float]]]:
    """Token counts and VADER scores ``(compound, pos, neu, neg)`` for each text.

    Runs in worker processes over chunks of messages; each result depends on its text only.
    """
    analyzer = _get_analyzer()
    tokens = [len(TOKEN_RE.findall(t.lower())) for t in texts]
    scores = []
    for text in texts:
        s = analyzer.polarity_scores(text)
        scores.append((s["compound"], s["pos"], s["neu"], s["neg"]))
    return tokens, scores
