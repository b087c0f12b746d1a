"""The service as ``make run`` sets it up, on loopback, for the tests that drive it from
outside (the README's tour, the Python client): a data directory with the demo corpus (a slice
of it by default: the full demo takes about 40 s to ingest on 2 cores), ``privtext
ensure-admin``, then ``privtext serve`` (gunicorn) on a free port. ``make run`` also starts
``privtext worker``: only the tests that queue a job ask for it (``worker=True``). One
gunicorn worker, not make run's two: each imports the whole service."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from corpus import ingest_demo
from service.cli import main as cli

#: Where the venv's console scripts are (``privtext``), as ``make run`` calls them.
BIN = Path(sys.executable).parent
#: The demo slice the default runs ingest: 20,000 messages (about 2.5 s).
DEMO_SLICE = 20_000


@dataclass(frozen=True)
class Served:
    """A running ``privtext serve``: its address, the admin key and the directory it ran in
    (``data/`` and a ``.venv`` link, as at the repository root after ``make run``)."""

    root: Path
    address: str  # host:port
    admin_key: str
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _environ(data: Path, address: str) -> dict[str, str]:
    return {
        **os.environ,
        "PRIVTEXT_DATA_DIR": str(data),
        "PRIVTEXT_BIND": address,
        # make run's default is 2; one worker halves the start (each imports the whole service)
        "PRIVTEXT_WORKERS": "1",
        "PRIVTEXT_QUERY_RATE_PER_MINUTE": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(data.parent / "prom"),
    }


def _wait_ready(proc: subprocess.Popen[bytes], address: str, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"privtext serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://{address}/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("privtext serve did not become ready:\n" + log.read_text())


@contextmanager
def make_run(
    root: Path, *, demo_limit: int | None = DEMO_SLICE, worker: bool = False
) -> Iterator[Served]:
    """Ingest the demo corpus (``demo_limit`` None: all of it, through ``privtext ingest
    --demo`` as ``make run`` does), ensure an admin key and serve, in ``root`` (with
    ``privtext worker`` beside it when ``worker``); stop both on exit."""
    data = root / "data"
    (root / ".venv").symlink_to(BIN.parent)
    address = f"127.0.0.1:{_free_port()}"
    env = _environ(data, address)
    if demo_limit is None:
        subprocess.run([str(BIN / "privtext"), "ingest", "--demo", "--if-missing"], env=env,
                       check=True, capture_output=True)  # fmt: skip
    else:
        ingest_demo(data, limit=demo_limit, workers=1)
    # ``privtext ensure-admin`` in this process: a subprocess would import the service again
    done = CliRunner().invoke(cli, ["--data-dir", str(data), "ensure-admin"], env=env)
    assert done.exit_code == 0, done.output
    admin_key = (data / "admin-key.txt").read_text().strip()
    log = root / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "privtext"), "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    procs = [proc]
    try:
        if worker:
            with open(root / "worker.log", "wb") as out:
                procs.append(subprocess.Popen([str(BIN / "privtext"), "worker"], env=env,
                                              stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))  # fmt: skip
        _wait_ready(proc, address, log)
        yield Served(root, address, admin_key, log)
    finally:
        for p in procs:
            _stop(p)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
