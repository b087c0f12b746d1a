"""Small synthetic chat corpora for tests (deterministic, no real people)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

WORDS = (
    "hello refund great terrible love hate ok fine pizza weather movie game train "
    "happy sad awful wonderful price delivery support thanks please sorry"
).split()


def make_messages(
    n_senders: int = 20, per_sender: int = 8, *, seed: int = 7, heavy: int = 0
) -> list[dict[str, str]]:
    """``n_senders`` senders with ``per_sender`` messages each; sender 0 gets ``heavy`` more."""
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    rows = []
    for s in range(n_senders):
        count = per_sender + (heavy if s == 0 else 0)
        for i in range(count):
            ts = start + timedelta(hours=rng.randrange(0, 24 * 60))
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
            rows.append(
                {
                    "sender": f"user{s}",
                    "conversation": f"conv{(s + i) % 7}",
                    "timestamp": ts.isoformat(),
                    "text": text,
                    "channel": rng.choice(["web", "app"]),
                }
            )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path
