"""A job worker killed with SIGKILL mid-job, on the SQLite queue and on the Redis queue: the job
is failed (not left ``running`` for ever) and its input texts are deleted, by the next worker
that starts (SQLite: one consumer per data directory) or by a worker already running elsewhere
once the dead worker's lease has expired (Redis), which meanwhile leaves a live worker's job
alone. The real ``privtext worker`` runs in its own processes, as in production."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine

from jobs import states as J
from jobs.context import INPUT_FILE
from jobs.recovery import INTERRUPTED
from jobs.table import Job
from models.job_bodies import write_embedding_input
from service.config import Settings
from service.job_queue import job_context, make_queue
from service.store.db import init_db, make_engine

pytestmark = pytest.mark.torch  # the killed job encodes

LEASE_S = 2  # the workers renew every 0.5 s and look for expired leases every 1 s
TEXTS = [f"message number {i} about the weather and the trains" for i in range(512 * 60)]


@dataclass
class Workers:
    """``privtext worker`` processes on one data directory and queue."""

    data_dir: Path
    queue_url: str
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "PRIVTEXT_DATA_DIR": str(self.data_dir),
            "PRIVTEXT_QUEUE_URL": self.queue_url,
            "PRIVTEXT_JOB_LEASE_S": str(LEASE_S),
            "PRIVTEXT_EMBEDDING_DEVICE": "cpu",
            "HF_HUB_OFFLINE": "1",
        }
        log = open(self.logs / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115 - the process owns it
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("privtext")), "worker", "--workers", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def output(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.logs.glob("worker-*.log"))
        )

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def queue_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return ""
    import redis

    url = str(request.getfixturevalue("redis_url"))
    redis.Redis.from_url(url).flushdb()  # nothing queued by an earlier test
    return url


@pytest.fixture
def setup(data_dir: Path, queue_url: str, tmp_path: Path) -> Iterator[tuple[Engine, Workers]]:
    settings = Settings.load({"data_dir": str(data_dir), "queue_url": queue_url})
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    workers = Workers(data_dir, queue_url, tmp_path)
    try:
        yield engine, workers
    finally:
        workers.stop_all()
        engine.dispose()


def _enqueue(engine: Engine, data_dir: Path, queue_url: str, texts: list[str]) -> Job:
    settings = Settings.load({"data_dir": str(data_dir), "queue_url": queue_url})
    ctx = job_context(settings, engine)
    job = J.create_job(engine, kind="embedding", created_by="ap_x", params={"count": len(texts)})
    write_embedding_input(ctx, job.id, texts)
    make_queue(settings, engine).enqueue("embedding", job.id)
    return job


def _wait(what: str, until: Callable[[], bool], workers: Workers, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting until {what}\n{workers.output()}")


def _job(engine: Engine, job_id: str) -> Job:
    job = J.get_job(engine, job_id)
    assert job is not None
    return job


def test_a_worker_killed_mid_job_leaves_a_failed_job_and_no_texts(
    setup: tuple[Engine, Workers], data_dir: Path, queue_url: str
) -> None:
    engine, workers = setup
    job = _enqueue(engine, data_dir, queue_url, TEXTS)
    texts = data_dir / "jobs" / job.id / INPUT_FILE
    first = workers.start()
    _wait("the job is part done", lambda: _job(engine, job.id).progress > 0, workers)
    assert _job(engine, job.id).status == "running" and texts.exists()

    if queue_url:
        # Redis: a second worker, as on another host, leaves the live worker's job alone
        # (its lease is renewed) for several lease lengths...
        workers.start()
        time.sleep(3 * LEASE_S)
        assert _job(engine, job.id).status == "running", workers.output()
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        # ... and fails it once the dead worker's lease has expired.
        _wait("the job is failed", lambda: _job(engine, job.id).status == "failed", workers, 30)
    else:
        # SQLite: one consumer per data directory; the next worker fails it when it starts.
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        assert _job(engine, job.id).status == "running"  # nothing else could move it
        workers.start()
        _wait("the job is failed", lambda: _job(engine, job.id).status == "failed", workers, 60)

    failed = _job(engine, job.id)
    assert failed.error == INTERRUPTED and failed.finished_at is not None
    assert not texts.exists() and not texts.parent.exists(), "the job's texts are still on disk"

    # The surviving worker goes on running jobs.
    after = _enqueue(engine, data_dir, queue_url, ["one more", "and another"])
    _wait("the next job succeeds", lambda: _job(engine, after.id).status == "succeeded", workers)
    assert not (data_dir / "jobs" / after.id / INPUT_FILE).exists()
