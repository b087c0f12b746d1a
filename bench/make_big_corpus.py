"""Build the 1,000,000-message benchmark corpus and ingest it as a live snapshot.

Usage: .venv/bin/python bench/make_big_corpus.py DATA_DIR [--messages 1000000]

The demo corpus (chitchat-dataset, 258,145 messages, 1,315 senders) replicated
ceil(N / 258,145) times, each copy with fresh sender and conversation ids (``<id>~<copy>``),
truncated to exactly N messages, then ingested through the normal ingest path
(``corpus.ingest.build_snapshot``: VADER scores and tokens, random sender ids and
per-sender ranks, parquet, publish, LIVE). Texts, timestamps and metadata are the demo's.
"""

from __future__ import annotations

import argparse
import math
import time

from corpus import SnapshotStore
from corpus.ingest import build_snapshot, read_demo
from corpus.readers import Records


def replicate(demo: Records, n: int) -> Records:
    copies = math.ceil(n / len(demo))
    out = Records(metadata={name: [] for name in demo.metadata})
    for c in range(copies):
        take = min(len(demo), n - len(out))
        if take <= 0:
            break
        out.sender.extend(f"{s}~{c}" for s in demo.sender[:take])
        out.conversation.extend(f"{v}~{c}" for v in demo.conversation[:take])
        out.ts_us.extend(demo.ts_us[:take])
        out.text.extend(demo.text[:take])
        for name, values in demo.metadata.items():
            out.metadata[name].extend(values[:take])
    assert len(out) == n, len(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--messages", type=int, default=1_000_000)
    args = parser.parse_args()

    t0 = time.perf_counter()
    demo = read_demo()
    records = replicate(demo, args.messages)
    t1 = time.perf_counter()
    copies = math.ceil(args.messages / len(demo))
    info = build_snapshot(
        records,
        args.data_dir,
        source=f"bench: demo corpus x{copies}, fresh ids, first {args.messages}",
    )
    t2 = time.perf_counter()
    conn = SnapshotStore(args.data_dir).connect(info)
    n, senders, convs, capped = conn.execute(
        "SELECT count(*), count(DISTINCT sender_id), count(DISTINCT conversation_id), "
        "count(*) FILTER (msg_rank < 100) FROM messages"
    ).fetchone()
    conn.close()
    print(f"read + replicate: {t1 - t0:.1f} s; ingest (score, write, publish): {t2 - t1:.1f} s")
    print(f"snapshot {info.id} live in {args.data_dir}")
    print(
        f"messages {n:,}, senders {senders:,}, conversations {convs:,}, "
        f"under a cap of 100 per sender: {capped:,} ({capped / n:.1%})"
    )
    assert n == args.messages


if __name__ == "__main__":
    main()
