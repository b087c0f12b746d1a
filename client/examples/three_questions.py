"""Three questions about the demo corpus, asked with privtext's Python client.

    python client/examples/three_questions.py http://localhost:8000 "$ANALYST" [PLOT_DIR]

Spends epsilon 4 of the analyst's budget (1 per query); PLOT_DIR gets one PNG per question.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files, no window

from privtext.client import Client  # noqa: E402

url, key = sys.argv[1], sys.argv[2]
plots = Path(sys.argv[3]) if len(sys.argv) > 3 else None
client = Client(url, key)
months = {"start": "2018-04-01T00:00:00Z", "end": "2018-12-01T00:00:00Z"}

# 1. When was the corpus written? Messages per month (at most 100 per sender).
by_month = client.count(group_by={"time": "month", "range": months})
print(by_month[["value", "lower", "upper"]])
busiest = by_month["value"].idxmax()
print(f"busiest month: {busiest}; charged epsilon {by_month.cost['epsilon']:.3g}")

# 2. Do apologies sound negative? Sentiment shares, overall and with "sorry".
overall = client.sentiment()
sorry = client.sentiment(
    filters={"keywords": {"terms": ["sorry"]}}, max_messages_per_sender=10
)
for name, result in (("all messages", overall), ('with "sorry"', sorry)):
    neg = result.loc["share_negative"]
    print(f"{name}: {neg['value']:.0%} negative [{neg['lower']:.0%}, {neg['upper']:.0%}]")

# 3. What do people talk about? How many senders mention each of a few declared topics.
topics = client.top_terms(terms=["movie", "music", "game", "food", "work", "school"])
print(topics["value"].sort_values(ascending=False))
print("budget left:", round(client.budget()["remaining_epsilon"], 3))

if plots is not None:
    plots.mkdir(parents=True, exist_ok=True)
    for name, result in (("months", by_month), ("sorry", sorry), ("topics", topics)):
        result.plot().figure.savefig(plots / f"{name}.png")
