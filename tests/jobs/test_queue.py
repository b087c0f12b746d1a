"""jobs.queue: the huey backend chosen by configuration, one task per kind registered under
``privtext.<kind>`` with the body the caller gives, run inline on the memory queue and found
by its name across two queue objects on one SQLite file (a web process and a worker). The
model jobs' bodies through the queue are tests/models/test_job_bodies.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs import states as S
from jobs.context import JobContext
from jobs.queue import make_huey, make_queue


def test_queue_backends(tmp_path: Path) -> None:
    from huey import MemoryHuey, RedisHuey, SqliteHuey

    assert isinstance(make_huey("", tmp_path), SqliteHuey)
    assert (tmp_path / "jobs.db").exists()
    if __import__("importlib").util.find_spec("redis") is not None:  # the client connects lazily
        assert isinstance(make_huey("redis://localhost:6379/0", tmp_path), RedisHuey)
    mem = make_huey("memory://", tmp_path)
    assert isinstance(mem, MemoryHuey) and mem.immediate
    with pytest.raises(ValueError):
        make_huey("amqp://x", tmp_path)


def _bodies(ran: list[tuple[str, str]]) -> dict[str, object]:
    def body(kind: str):  # type: ignore[no-untyped-def]
        def run(job_id: str, ctx: JobContext) -> None:
            ran.append((kind, job_id))
            if not S.claim(ctx, job_id):
                return
            S.mark_succeeded(ctx.engine, job_id, {"by": kind})

        return run

    return {"training": body("training"), "embedding": body("embedding")}


def test_tasks_run_inline_on_the_memory_queue(ctx: JobContext, tmp_path: Path) -> None:
    ran: list[tuple[str, str]] = []
    queue = make_queue(make_huey("memory://", tmp_path), lambda: ctx, _bodies(ran))  # type: ignore[arg-type]
    job = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    queue.enqueue("embedding", job.id)
    assert ran == [("embedding", job.id)]
    done = S.get_job(ctx.engine, job.id)
    assert done is not None and done.status == "succeeded" and done.result == {"by": "embedding"}
    with pytest.raises(KeyError):
        queue.enqueue("mining", job.id)


def test_only_known_kinds_are_registered(ctx: JobContext, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mining"):
        make_queue(make_huey("memory://", tmp_path), lambda: ctx, {"mining": lambda j, c: None})


def test_a_job_crosses_the_sqlite_queue_by_task_name(ctx: JobContext, tmp_path: Path) -> None:
    """What the web process enqueues, another process's huey (the worker) runs: two queue
    objects on the same SQLite file, the task found by its registered name."""
    web_ran: list[tuple[str, str]] = []
    worker_ran: list[tuple[str, str]] = []
    web = make_queue(make_huey("", tmp_path), lambda: ctx, _bodies(web_ran))  # type: ignore[arg-type]
    worker = make_queue(make_huey("", tmp_path), lambda: ctx, _bodies(worker_ran))  # type: ignore[arg-type]
    job = S.create_job(ctx.engine, kind="training", created_by="ad_1", params={})
    web.enqueue("training", job.id)
    assert S.get_job(ctx.engine, job.id).status == "queued"  # type: ignore[union-attr]
    task = worker.huey.dequeue()
    assert task is not None and task.name == "privtext.training" and task.args == (job.id,)
    worker.huey.execute(task)
    assert (web_ran, worker_ran) == ([], [("training", job.id)])
    assert S.get_job(ctx.engine, job.id).status == "succeeded"  # type: ignore[union-attr]
    assert worker.huey.dequeue() is None
