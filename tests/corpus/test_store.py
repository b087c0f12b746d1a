"""Snapshot store: switching, listing, locked read-only connections, concurrency."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import duckdb
import pytest

from corpus import SnapshotNotFound, SnapshotStore, ingest_file


def make_source(path: Path, n: int, sender_prefix: str = "s") -> Path:
    rows = [{"sender": f"{sender_prefix}{i % 3}", "conversation": "c", "timestamp": i,
             "text": f"msg {i}"} for i in range(n)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def count(store: SnapshotStore, snapshot: str | None = None) -> int:
    conn = store.connect(snapshot)
    try:
        return conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    finally:
        conn.close()


def test_empty_store(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    assert store.live() is None
    assert store.list() == []
    assert not store.is_reachable()
    with pytest.raises(SnapshotNotFound):
        store.connect()
    with pytest.raises(SnapshotNotFound):
        store.cursor()


def test_snapshot_switching(tmp_path: Path) -> None:
    first = ingest_file(make_source(tmp_path / "a.jsonl", 5), tmp_path)
    store = SnapshotStore(tmp_path)
    assert store.live() == first
    info, cur = store.cursor()
    assert info == first and cur.execute("SELECT count(*) FROM messages").fetchone() == (5,)
    second = ingest_file(make_source(tmp_path / "b.jsonl", 8), tmp_path)
    assert second.id != first.id
    assert store.live() == second
    assert [s.id for s in store.list()] == [first.id, second.id]
    assert count(store) == 8
    info, cur = store.cursor()  # the cached store follows LIVE
    assert info == second and cur.execute("SELECT count(*) FROM messages").fetchone() == (8,)
    assert count(store, first.id) == 5  # an old snapshot stays readable by id

    assert store.activate(first.id) == first
    assert store.live() == first
    assert SnapshotStore(tmp_path).live() == first  # another process sees the switch
    assert count(store) == 5
    assert store.cursor()[0] == first
    assert store.get(second.id) == second
    assert store.is_reachable()


def test_activate_unknown_keeps_live(tmp_path: Path) -> None:
    first = ingest_file(make_source(tmp_path / "a.jsonl", 5), tmp_path)
    store = SnapshotStore(tmp_path)
    for bad in ("snap-20990101T000000Z-deadbeef", "../../etc", first.id + "/.."):
        with pytest.raises(SnapshotNotFound):
            store.activate(bad)
    assert store.live() == first


def test_snapshot_layout_and_public_info(tmp_path: Path) -> None:
    info = ingest_file(make_source(tmp_path / "a.jsonl", 5), tmp_path)
    assert info.id.startswith("snap-") and len(info.id) == len("snap-20261125T233000Z-") + 8
    assert info.path == tmp_path / "corpus" / "snapshots" / info.id
    assert sorted(p.name for p in info.path.iterdir()) == ["manifest.json", "messages.parquet"]
    assert (tmp_path / "corpus" / "LIVE").read_text().strip() == info.id
    assert not info.messages_path.stat().st_mode & 0o222  # written once, then read-only
    public = info.to_dict()
    assert set(public) == {"id", "created_at", "source", "metadata_columns"}
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert not any("count" in k or "rows" in k for k in manifest)


def test_connection_is_locked_to_its_snapshot(tmp_path: Path) -> None:
    ingest_file(make_source(tmp_path / "a.jsonl", 5), tmp_path)
    other = tmp_path / "other.csv"
    other.write_text("x\n1\n")
    conn = SnapshotStore(tmp_path).connect()
    with pytest.raises(duckdb.PermissionException):
        conn.execute(f"SELECT * FROM read_csv('{other}')")
    with pytest.raises(duckdb.PermissionException):
        conn.execute(f"COPY (SELECT 1) TO '{tmp_path / 'out.csv'}'")
    with pytest.raises(duckdb.Error):
        conn.execute("SET enable_external_access = true")
    assert conn.execute("SELECT current_setting('TimeZone')").fetchone() == ("UTC",)


def test_cursors_per_thread(tmp_path: Path) -> None:
    ingest_file(make_source(tmp_path / "a.jsonl", 30), tmp_path)
    store = SnapshotStore(tmp_path)
    results: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                _, cur = store.cursor()
                results.append(cur.execute("SELECT count(*) FROM messages").fetchone()[0])
                cur.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [30] * 80
    store.close()


def test_concurrent_ingests_do_not_collide(tmp_path: Path) -> None:
    sources = [make_source(tmp_path / f"{i}.jsonl", 10 + i, f"p{i}-") for i in range(4)]
    infos: list = []
    errors: list[BaseException] = []

    def work(src: Path) -> None:
        try:
            infos.append(ingest_file(src, tmp_path / "data", workers=1))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    store = SnapshotStore(tmp_path / "data")
    assert sorted(s.id for s in store.list()) == sorted(i.id for i in infos)
    assert sorted(count(store, i.id) for i in infos) == [10, 11, 12, 13]
    assert store.live() in infos
    assert list(store.tmp_dir.iterdir()) == []


def test_clean_stale_tmp(tmp_path: Path) -> None:
    import os

    store = SnapshotStore(tmp_path)
    old, young = store.tmp_dir / "ingest-killed", store.tmp_dir / "ingest-running"
    for d in (old, young):  # what a killed and a running ingest leave under tmp/
        d.mkdir(parents=True)
    (old / "messages.parquet").write_bytes(b"partial")
    os.utime(old, (0, 0))
    assert store.clean_stale_tmp(older_than_s=3600) == [old]
    assert list(store.tmp_dir.iterdir()) == [young]
