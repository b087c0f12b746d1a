"""``privtext serve`` as an operator runs it: it honours PRIVTEXT_BIND and runs without the
virtual environment on PATH; Ctrl-C (SIGINT to the whole process group, as a terminal sends
it) and SIGTERM let a request in flight finish with its answer, then stop; the workers recycle
after their request counts, staggered so that they never all recycle together."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mechanisms.ledger import Budget
from service.auth import create_principal, issue_key
from service.gunicorn_worker import recycle_after, stagger_recycling
from service.store.db import init_db, make_engine
from service.store.ledger import SqlLedger


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    token: str
    log: Path


def _start(data_dir: Path, tmp_path: Path, **env: str) -> Served:
    engine = make_engine(f"sqlite:///{data_dir / 'state.db'}")
    init_db(engine)
    pid = create_principal(engine, name="ana", role="analyst")
    SqlLedger(engine).set_budget(pid, Budget(epsilon=100.0, delta=1e-6))
    token = issue_key(engine, pid)
    engine.dispose()
    port = _free_port()
    log = tmp_path / "serve.log"
    environ = {
        **{k: v for k, v in os.environ.items() if k != "PATH"},
        "PATH": "/usr/bin:/bin",  # no virtual environment: gunicorn is not on PATH
        "PRIVTEXT_BIND": f"127.0.0.1:{port}",
        "PRIVTEXT_DATA_DIR": str(data_dir),
        "PRIVTEXT_WORKERS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        **env,
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("privtext")), "serve"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    served = Served(proc, port, token, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"privtext serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            if _request(served, "GET", "/healthz")[0] == 200:
                return served
        except OSError:
            time.sleep(0.2)
    _stop(served)
    pytest.fail("privtext serve did not answer on PRIVTEXT_BIND:\n" + log.read_text())


def _stop(served: Served) -> None:
    if served.proc.poll() is None:
        os.killpg(served.proc.pid, signal.SIGTERM)
    try:
        served.proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(served.proc.pid, signal.SIGKILL)
        served.proc.wait()


@pytest.fixture
def served(data_dir: Path, ingested: Any, tmp_path: Path) -> Iterator[Served]:
    s = _start(data_dir, tmp_path)
    yield s
    _stop(s)


def _request(served: Served, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(_head(served, method, path, len(body)) + body)
        return _response(sock)


def _head(served: Served, method: str, path: str, length: int) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Authorization: Bearer {served.token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.gunicorn
def test_serve_honours_privtext_bind_without_the_venv_on_path(served: Served) -> None:
    status, body = _request(served, "GET", "/readyz")
    assert status == 200, body
    # gunicorn runs under this interpreter, found without PATH
    assert served.proc.poll() is None


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
@pytest.mark.gunicorn
def test_shutdown_lets_the_request_in_flight_finish(served: Served, how: str) -> None:
    body = json.dumps({"kind": "count", "privacy": {"epsilon": 0.5}}).encode()
    with socket.create_connection(("127.0.0.1", served.port), timeout=60) as sock:
        # The request is in flight: a worker has it and is reading its body.
        sock.sendall(_head(served, "POST", "/v1/queries", len(body)) + body[:10])
        time.sleep(1.0)
        if how == "ctrl-c":
            os.killpg(served.proc.pid, signal.SIGINT)  # the master and every worker
        else:
            served.proc.send_signal(signal.SIGTERM)  # the master, as systemd or docker stop
        time.sleep(1.0)
        sock.sendall(body[10:])
        status, answer = _response(sock)
    assert status == 200, answer
    assert json.loads(answer)["kind"] == "count"
    assert served.proc.wait(30) == 0, served.log.read_text()


def test_recycle_counts_are_staggered_across_the_workers() -> None:
    import random

    rng = random.Random(7)
    boot = [recycle_after(slot, 4, 2000, 0, rng) for slot in range(4)]
    assert boot == [2000, 2500, 3000, 3500]  # max_requests / n apart
    assert recycle_after(3, 4, 2000, 0, rng) == recycle_after(7, 4, 2000, 0, rng)  # modulo n
    jittered = [recycle_after(1, 2, 2000, 100, rng) for _ in range(200)]
    assert min(jittered) >= 3000 and max(jittered) <= 3100 and len(set(jittered)) > 20
    assert recycle_after(0, 2, 0, 100, rng) == 0  # max_requests 0: never

    # As a post_fork hook: the slot is the number of workers alive at the fork.
    cfg = SimpleNamespace(max_requests=2000, max_requests_jitter=0)
    limits = []
    for alive in range(2):
        worker = SimpleNamespace(max_requests=2000)
        stagger_recycling(SimpleNamespace(WORKERS=dict.fromkeys(range(alive)), num_workers=2,
                                          cfg=cfg), worker)
        limits.append(worker.max_requests)
    assert limits == [2000, 3000]


@pytest.mark.gunicorn
def test_workers_recycle_and_the_service_keeps_answering(
    data_dir: Path, ingested: Any, tmp_path: Path
) -> None:
    served = _start(data_dir, tmp_path, PRIVTEXT_MAX_REQUESTS="4")  # recycle after 4 and 6
    try:
        statuses = [_request(served, "GET", "/healthz")[0] for _ in range(16)]
    finally:
        _stop(served)
    log = served.log.read_text()
    assert statuses == [200] * 16, log
    assert log.count("Autorestarting worker") >= 2, log
    assert log.count("Booting worker") >= 4, log
