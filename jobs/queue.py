"""The job queue: huey, on SQLite (the default: one file in the data directory) or Redis
(workers on many hosts), chosen by configuration; in memory and immediate for tests.

A job is a plain function first, ``body(job_id, context)``, and a queued huey task second:
:func:`make_queue` registers one thin task per kind, named ``privtext.<kind>``, which is how
a worker process finds the task that a web process enqueued. The bodies are given to it by
the caller (``models.job_bodies.BODIES``), so this package imports nothing above it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from huey import MemoryHuey, RedisHuey, SqliteHuey

from jobs.context import JobContext
from jobs.table import KINDS

C = TypeVar("C", bound=JobContext)


def make_huey(queue_url: str, data_dir: str | os.PathLike[str]) -> Any:
    """The huey instance for ``queue_url``: "" -> SQLite at ``data_dir/jobs.db``,
    ``redis://...`` -> Redis, ``memory://`` -> in-memory and immediate (tests: tasks run
    inline when enqueued)."""
    if not queue_url:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        return SqliteHuey("privtext", filename=str(Path(data_dir) / "jobs.db"))
    if queue_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisHuey("privtext", url=queue_url)
    if queue_url == "memory://":
        return MemoryHuey("privtext", immediate=True)
    raise ValueError("queue_url must be empty, redis://... or memory://")


@dataclass
class Queue:
    """A huey instance with one task per job kind registered on it."""

    huey: Any
    tasks: Mapping[str, Any]

    def enqueue(self, kind: str, job_id: str) -> None:
        """Queue ``job_id`` for the task of its ``kind`` (KeyError for a kind not registered)."""
        self.tasks[kind](job_id)


def make_queue(
    huey: Any,
    context: Callable[[], C],
    bodies: Mapping[str, Callable[[str, C], None]],
) -> Queue:
    """Register a task ``privtext.<kind>`` on ``huey`` for each of ``bodies``; ``context``
    builds this process's context, passed to the body with the job id.

    The tasks are thin: a body that raises has already marked its job failed. Huey's own
    retries are off (a failed job stays failed).
    """
    unknown = set(bodies) - set(KINDS)
    if unknown:
        raise ValueError(f"no job kind {sorted(unknown)}: kinds are {KINDS}")
    tasks = {kind: _task(huey, kind, body, context) for kind, body in bodies.items()}
    return Queue(huey=huey, tasks=tasks)


def _task(
    huey: Any, kind: str, body: Callable[[str, C], None], context: Callable[[], C]
) -> Any:
    @huey.task(name=f"privtext.{kind}", retries=0)
    def task(job_id: str) -> None:
        body(job_id, context())

    return task
