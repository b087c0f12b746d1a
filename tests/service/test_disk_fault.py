"""The data directory's disk fails, fills up or turns read-only: no answer is ever lost from
the ledger, and the service says it is not ready.

The data directory lives on a small ext4 filesystem of its own, on a loop device, mounted with
``errors=remount-ro`` (root only: ``truncate``, ``mkfs.ext4``, ``mount -o loop``).

* **Disk fault under load.** A gunicorn service answers charged queries from several clients;
  midway, an ext4 error is triggered through ``/sys/fs/ext4/<dev>/trigger_fs_error`` (the
  kernel aborts the journal and remounts read-only, as on a failing disk). The service is then
  killed, the filesystem unmounted, checked with ``e2fsck`` and mounted again: every answer a
  client received has its ledger entry, charged, and its audit row (or, where the audit row
  is written after the response, ``settle_after_response``, its reservation is still
  ``reserved``: charged). Requests after the fault answer ``503 store_unavailable``. With
  ``synchronous=NORMAL`` this test failed in 9 runs of 10 (1 to 43 of about 150 answers had
  lost their charge: their commits were still in the page cache); with ``synchronous=FULL``
  (each commit durable before the answer leaves) it passed in every run.
* ``/readyz`` answers 503 on a read-only data directory and on a full one.

Each test is skipped, with the reason, where the run is not root or the machine has no loop
devices, no ext4 or no ``trigger_fs_error`` in sysfs.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mechanisms.ledger import Budget
from service.app import create_app
from service.auth import create_principal, issue_key
from service.config import Settings
from service.store.db import init_db, make_engine
from service.store.ledger import SqlLedger
from service.store.ledger_tables import audit_log, ledger_entries
from tests.procs import children, start_gunicorn

FS_MB = 64
TOOLS = ("truncate", "mkfs.ext4", "e2fsck", "mount", "umount", "findmnt")


def _unavailable() -> str | None:
    """Why a loop-device filesystem cannot be made here, or None."""
    if sys.platform != "linux":
        return "loop devices and ext4 are Linux only"
    if os.geteuid() != 0:
        return "needs root to make and mount a loop-device filesystem (CI runs as root)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (Debian: util-linux, e2fsprogs)"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control is missing)"
    if "ext4" not in Path("/proc/filesystems").read_text():
        return "the kernel has no ext4"
    return None


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check)


@dataclass
class LoopFs:
    image: Path
    mountpoint: Path

    @property
    def device(self) -> str:
        """The loop device's name (``loop3``), as sysfs names it."""
        return Path(_run("findmnt", "-no", "SOURCE", str(self.mountpoint)).stdout.strip()).name

    @property
    def trigger(self) -> Path:
        return Path("/sys/fs/ext4") / self.device / "trigger_fs_error"

    def mount(self, *options: str) -> None:
        opts = ",".join(("loop", "errors=remount-ro", *options))
        _run("mount", "-o", opts, str(self.image), str(self.mountpoint))

    def umount(self) -> None:
        deadline = time.monotonic() + 20
        while _run("umount", str(self.mountpoint), check=False).returncode != 0:
            if time.monotonic() > deadline:
                _run("umount", "-l", str(self.mountpoint), check=False)
                pytest.fail(f"{self.mountpoint} stayed busy")
            time.sleep(0.2)

    def mounted(self) -> bool:
        return _run("findmnt", str(self.mountpoint), check=False).returncode == 0


@pytest.fixture
def loop_fs(tmp_path: Path) -> Iterator[LoopFs]:
    """A fresh ext4 filesystem of FS_MB MiB on a loop device, mounted errors=remount-ro."""
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    fs = LoopFs(tmp_path / "fs.img", tmp_path / "mnt")
    fs.mountpoint.mkdir()
    _run("truncate", "-s", f"{FS_MB}M", str(fs.image))
    _run("mkfs.ext4", "-q", "-F", str(fs.image))
    try:
        fs.mount()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot mount a loop device here: {exc.stderr.strip()}")
    try:
        yield fs
    finally:
        if fs.mounted():
            fs.umount()


@pytest.fixture
def disk_data_dir(loop_fs: LoopFs, corpus_file: Path) -> Path:
    """A data directory on the loop filesystem with the test corpus ingested."""
    from corpus.ingest import ingest_file

    data = loop_fs.mountpoint / "data"
    data.mkdir()
    ingest_file(corpus_file, data, workers=1)
    return data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(port: int, method: str, path: str, token: str = "", body: Any = None):  # type: ignore[no-untyped-def]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    except (OSError, http.client.HTTPException) as exc:
        return -1, repr(exc)
    finally:
        conn.close()


def _crash(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL gunicorn's workers and master (what a crash leaves), and wait for them."""
    workers = children(proc.pid)
    for pid in [*workers, proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)


WORKERS = 2
CLIENTS = 6
ANSWERS_BEFORE_FAULT = 150
AFTER_FAULT_S = 1.5


@pytest.mark.gunicorn
def test_answers_survive_a_disk_fault(loop_fs: LoopFs, disk_data_dir: Path, tmp_path: Path) -> None:  # noqa: C901 - one scenario (load, fault, crash, fsck, audit), its steps in order
    if not loop_fs.trigger.exists():
        pytest.skip(f"{loop_fs.trigger} is missing (kernel without ext4's sysfs error trigger)")
    db_url = f"sqlite:///{disk_data_dir / 'state.db'}"
    engine = make_engine(db_url)
    init_db(engine)
    pid = create_principal(engine, name="busy", role="analyst")
    SqlLedger(engine).set_budget(pid, Budget(1000.0, 1e-6))
    token = issue_key(engine, pid)
    engine.dispose()
    os.sync()  # the set-up is on disk; what the fault can lose is the service's own writes

    port = _free_port()
    env = {
        **os.environ,
        "PRIVTEXT_DATA_DIR": str(disk_data_dir),
        "PRIVTEXT_DATABASE_URL": db_url,
        "PRIVTEXT_LOG_LEVEL": "WARNING",
        "PRIVTEXT_MIN_FREE_DISK_MB": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }
    log = tmp_path / "gunicorn.log"
    proc = start_gunicorn(env, port, WORKERS, log)
    try:
        deadline = time.monotonic() + 60
        while _request(port, "GET", "/readyz")[0] != 200 or len(children(proc.pid)) < WORKERS:
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("gunicorn did not become ready:\n" + log.read_text())
            time.sleep(0.2)

        results: list[tuple[int, Any]] = []
        lock, stop, counter = threading.Lock(), threading.Event(), iter(range(10**6))

        def client() -> None:
            while not stop.is_set():
                with lock:
                    i = next(counter)
                body = {
                    "kind": "count",
                    "privacy": {"epsilon": 0.01},
                    "max_messages_per_sender": 5,
                    "confidence_level": round(0.5 + i / 10_000, 4),  # distinct: no replays
                }
                status, answer = _request(port, "POST", "/v1/queries", token, body)
                with lock:
                    results.append((status, answer))

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while sum(s == 200 for s, _ in list(results)) < ANSWERS_BEFORE_FAULT:
            assert time.monotonic() < deadline, Counter(s for s, _ in results)
            time.sleep(0.01)
        loop_fs.trigger.write_text("privtext disk-fault test\n")
        time.sleep(AFTER_FAULT_S)
        stop.set()
        for t in threads:
            t.join(90)
        ready_after = _request(port, "GET", "/readyz")
    finally:
        _crash(proc)

    codes = Counter(s for s, _ in results)
    for status, body in results:
        assert status in (200, 500, 503), (status, body)
        if status == 503:
            assert body["code"] == "store_unavailable", body
        if status == 500:
            assert body["code"] == "query_failed", body  # after the read: charged, one body
    assert codes[503] >= 1, f"the fault never reached a request: {codes}"
    assert ready_after[0] == 503, ready_after

    # Unmount, check and repair, mount again: what is on disk now is what survived.
    loop_fs.umount()
    fsck = _run("e2fsck", "-fy", str(loop_fs.image), check=False)
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr  # 1: errors corrected
    loop_fs.mount()

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            entries = {
                e.id: e.status
                for e in conn.execute(
                    select(ledger_entries).where(ledger_entries.c.principal_id == pid)
                )
            }
            audits = conn.execute(
                select(audit_log).where(
                    audit_log.c.principal_id == pid, audit_log.c.status == "released"
                )
            ).all()
    finally:
        engine.dispose()
    by_id = {a.id: a for a in audits}
    by_reservation = {a.reservation_id: a for a in audits}
    # Where the audit row is written after the response (``settle_after_response``), a fault
    # between the two may take the row; the reservation, durable before the answer left,
    # then stays ``reserved``: charged all the same.
    settles_late = getattr(Settings.load({"testing": False}), "settles_after_response", False)

    answered = [body for status, body in results if status == 200]
    lost_charge, lost_audit, unsettled = [], [], 0
    for body in answered:
        aid = body["audit_id"]
        row = by_id.get(aid) if isinstance(aid, int) else by_reservation.get(aid)
        reservation = row.reservation_id if row is not None else aid
        if entries.get(reservation) not in ("reserved", "committed"):
            lost_charge.append(aid)
        if row is None:
            if settles_late and entries.get(reservation) == "reserved":
                unsettled += 1
            else:
                lost_audit.append(aid)
    summary = (
        f"{len(answered)} answers received, statuses {dict(codes)}, "
        f"{unsettled} settled after the response and cut off by the fault (charged)"
    )
    assert not lost_charge, f"{len(lost_charge)} answers lost their charge; {summary}"
    assert not lost_audit, f"{len(lost_audit)} answers lost their audit row; {summary}"
    print(f"disk fault: {summary}; after fsck no answer lacks its charge")


def test_readyz_is_503_on_a_read_only_data_dir(loop_fs: LoopFs, disk_data_dir: Path) -> None:
    app = create_app({"data_dir": str(disk_data_dir), "testing": True, "min_free_disk_mb": 1})
    svc = app.extensions["privtext"]
    pid = create_principal(svc.engine, name="ana", role="analyst")
    with app.app_context():
        SqlLedger(svc.engine).set_budget(pid, Budget(10.0, 1e-6))
    token = issue_key(svc.engine, pid)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    try:
        assert client.get("/readyz").status_code == 200
        query = {"kind": "count", "privacy": {"epsilon": 0.1}}
        assert client.post("/v1/queries", json=query, headers=headers).status_code == 200

        svc.engine.dispose()  # no file open for writing: the remount is allowed
        _run("mount", "-o", "remount,ro", str(loop_fs.mountpoint))
        resp = client.get("/readyz")
        assert resp.status_code == 503
        assert resp.get_json()["errors"]["checks"] == {
            "state_store": False,
            "corpus": True,
            "disk": False,
        }
        # a query cannot be charged: 503 in the envelope, before the corpus is read
        resp = client.post("/v1/queries", json={**query, "confidence_level": 0.9}, headers=headers)
        assert resp.status_code == 503, resp.get_json()
        assert resp.get_json()["code"] == "store_unavailable"
    finally:
        svc.engine.dispose()


def test_readyz_is_503_on_a_full_data_dir(loop_fs: LoopFs, disk_data_dir: Path) -> None:
    app = create_app({"data_dir": str(disk_data_dir), "testing": True, "min_free_disk_mb": 1})
    client = app.test_client()
    ballast = loop_fs.mountpoint / "ballast"
    try:
        assert client.get("/readyz").status_code == 200
        with open(ballast, "wb") as fh:  # as root: the blocks reserved for root too
            try:
                while True:
                    fh.write(b"\0" * (1 << 20))
                    fh.flush()
            except OSError:
                pass
        resp = client.get("/readyz")
        assert resp.status_code == 503
        assert resp.get_json()["errors"]["checks"]["disk"] is False
        ballast.unlink()
        assert client.get("/readyz").status_code == 200
    finally:
        ballast.unlink(missing_ok=True)
        app.extensions["privtext"].engine.dispose()
