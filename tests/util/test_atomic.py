"""util.atomic: a staged directory is published whole or not at all, and a pointer flip is one
rename that a concurrent reader never sees half done."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from util import atomic


def test_published_directory_is_complete_and_staging_is_gone(tmp_path: Path) -> None:
    target = tmp_path / "versions" / "v1"
    with atomic.staging_dir(tmp_path / "tmp", prefix="w-") as staging:
        assert staging.parent == tmp_path / "tmp" and staging.name.startswith("w-")
        (staging / "sub").mkdir()
        (staging / "sub" / "data.bin").write_bytes(b"x" * 1000)
        (staging / "manifest.json").write_text("{}")
        atomic.publish_dir(staging, target)
        assert not staging.exists()
    assert (target / "sub" / "data.bin").read_bytes() == b"x" * 1000
    assert (target / "manifest.json").read_text() == "{}"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_failure_inside_the_block_publishes_nothing_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "versions" / "v1"
    with pytest.raises(RuntimeError, match="killed mid-write"):
        with atomic.staging_dir(tmp_path / "tmp", prefix="w-") as staging:
            (staging / "half.bin").write_bytes(b"partial")
            raise RuntimeError("killed mid-write")
    assert not staging.exists()
    assert not target.exists() and not (tmp_path / "versions").exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_block_that_never_publishes_leaves_nothing(tmp_path: Path) -> None:
    with atomic.staging_dir(tmp_path / "tmp", prefix="w-") as staging:
        (staging / "unused").write_text("x")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_an_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "v1"
    target.mkdir()
    (target / "old").write_text("kept")
    with pytest.raises(FileExistsError):
        with atomic.staging_dir(tmp_path / "tmp", prefix="w-") as staging:
            (staging / "new").write_text("lost")
            atomic.publish_dir(staging, target)
    assert sorted(p.name for p in target.iterdir()) == ["old"]
    assert (target / "old").read_text() == "kept"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_publish_fsyncs_every_file_and_directory_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_rename = atomic.fsync_path, os.rename

    def fsync(path: str | os.PathLike[str]) -> None:
        events.append(f"fsync {Path(path).name}")
        real_fsync(path)

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append("rename")
        real_rename(src, dst)

    monkeypatch.setattr(atomic, "fsync_path", fsync)
    monkeypatch.setattr(os, "rename", rename)
    with atomic.staging_dir(tmp_path / "tmp", prefix="w-") as staging:
        (staging / "d").mkdir()
        (staging / "d" / "a").write_text("a")
        (staging / "b").write_text("b")
        atomic.publish_dir(staging, tmp_path / "out" / "v1")
    before = events[: events.index("rename")]
    assert sorted(before) == sorted(["fsync a", "fsync d", "fsync b", f"fsync {staging.name}"])
    assert events[events.index("rename") + 1 :] == ["fsync out"]  # the new entry is durable


def test_pointer_round_trip_and_format(tmp_path: Path) -> None:
    pointer = tmp_path / "root" / "LIVE"
    assert atomic.read_pointer(pointer) is None
    atomic.write_pointer(pointer, "snap-1")
    assert pointer.read_bytes() == b"snap-1\n"  # the on-disk format of LIVE and ACTIVE
    atomic.write_pointer(pointer, "snap-2")
    assert atomic.read_pointer(pointer) == "snap-2"
    assert sorted(p.name for p in pointer.parent.iterdir()) == ["LIVE"]  # no temporaries left
    for bad in ("two\nlines", "café"):
        with pytest.raises(ValueError):
            atomic.write_pointer(pointer, bad)
    assert atomic.read_pointer(pointer) == "snap-2"


def test_the_pointer_flip_is_a_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pointer = tmp_path / "ACTIVE"
    atomic.write_pointer(pointer, "m-old")
    before = os.stat(pointer).st_ino
    replaces: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        replaces.append((Path(src), Path(dst)))
        assert Path(dst).read_text() == "m-old\n"  # the old value stays whole until the rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with open(pointer, encoding="ascii") as held:  # a reader that opened it before the flip
        atomic.write_pointer(pointer, "m-new")
        assert held.read() == "m-old\n"
    [(src, dst)] = replaces
    assert dst == pointer and src.parent == pointer.parent and src.name.startswith(".ACTIVE-")
    assert os.stat(pointer).st_ino != before  # a new file took the name; none was rewritten
    assert pointer.read_text() == "m-new\n"


def test_a_failed_pointer_write_keeps_the_old_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pointer = tmp_path / "LIVE"
    atomic.write_pointer(pointer, "snap-1")

    def fail(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_pointer(pointer, "snap-2")
    assert atomic.read_pointer(pointer) == "snap-1"
    assert [p.name for p in tmp_path.iterdir()] == ["LIVE"]


@pytest.mark.seconds
def test_a_reader_never_sees_a_half_written_pointer(tmp_path: Path) -> None:
    pointer = tmp_path / "LIVE"
    # long values, so that a non-atomic write would be seen part-way through
    values = ["a" * 50_000, "b" * 70_000, "c" * 30_000]
    atomic.write_pointer(pointer, values[0])
    seen: set[str | None] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(atomic.read_pointer(pointer))

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for i in range(300):
            atomic.write_pointer(pointer, values[i % len(values)])
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert seen <= set(values)  # never empty, never a prefix, never missing
    assert len(seen) > 1  # the readers did run during the flips


def test_remove_stale_keeps_young_entries(tmp_path: Path) -> None:
    root = tmp_path / "tmp"
    assert atomic.remove_stale(root, 60) == []
    old, young = root / "w-killed", root / "w-running"
    for d in (old, young):
        d.mkdir(parents=True)
        (d / "part").write_text("x")
    os.utime(old, (0, 0))
    assert atomic.remove_stale(root, older_than_s=3600) == [old]
    assert list(root.iterdir()) == [young]
