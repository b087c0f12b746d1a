"""jobs.leases and jobs.recovery: a running job holds a lease its worker renews; a job whose
lease expired (its worker died) is failed with its files deleted, a job whose worker is alive
is left alone, and the input of every ended job is deleted. (A training's reservation staying
charged, and a job body holding its lease, are tests/models/test_job_bodies.py; the real
thing, a worker process killed with SIGKILL on the SQLite and the Redis queue, is
tests/service/test_job_crash.py.)"""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import Engine, select

from jobs import leases as L
from jobs import states as S
from jobs.context import INPUT_FILE, JobContext
from jobs.recovery import INTERRUPTED, fail_orphaned, recover, sweep_inputs
from jobs.table import Job, job_leases


def _lease(engine: Engine, job_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            select(job_leases).where(job_leases.c.job_id == job_id)
        ).first()


def _running(ctx: JobContext, texts: list[str] | None = None) -> tuple[Job, str]:
    """An embedding job marked running by a worker ("holder"), with its input on disk."""
    job = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 1})
    ctx.write_input(job.id, texts or ["my private words"])
    holder = L.new_holder()
    S.mark_running(ctx.engine, job.id, holder=holder, lease_s=ctx.lease_s)
    return job, holder


def test_marking_a_job_running_gives_it_a_lease(ctx: JobContext) -> None:
    before = time.time()
    job, holder = _running(ctx)
    lease = _lease(ctx.engine, job.id)
    assert lease is not None and lease.holder == holder
    assert before + ctx.lease_s <= lease.expires_at <= time.time() + ctx.lease_s
    with pytest.raises(S.JobStateError):  # not queued: no second lease, nothing changed
        S.mark_running(ctx.engine, job.id, holder="someone else", lease_s=ctx.lease_s)
    assert _lease(ctx.engine, job.id).holder == holder


def test_a_job_whose_worker_is_alive_is_left_alone(ctx: JobContext) -> None:
    job, _ = _running(ctx)
    assert fail_orphaned(ctx) == []  # the lease runs for another 10 s
    assert fail_orphaned(ctx, at=time.time() + 5) == []
    assert S.get_job(ctx.engine, job.id).status == "running"  # type: ignore[union-attr]
    assert (ctx.job_dir(job.id) / INPUT_FILE).exists()


def test_a_job_whose_lease_expired_is_failed_and_its_files_deleted(ctx: JobContext) -> None:
    job, _ = _running(ctx, ["card 4111 1111 1111 1111"])
    (ctx.job_dir(job.id) / "result.npy").write_bytes(b"a result the worker never reported")
    other, _ = _running(ctx)
    L.renew(ctx.engine, other.id, _lease(ctx.engine, other.id).holder, 60.0)  # alive
    assert fail_orphaned(ctx, at=time.time() + 11) == [job.id]
    failed = S.get_job(ctx.engine, job.id)
    assert failed is not None and failed.status == "failed" and failed.error == INTERRUPTED
    assert failed.finished_at is not None
    assert not ctx.job_dir(job.id).exists()  # input and any result: a failed job publishes nothing
    assert _lease(ctx.engine, job.id) is None
    assert S.get_job(ctx.engine, other.id).status == "running"  # type: ignore[union-attr]
    assert fail_orphaned(ctx, at=time.time() + 11) == []  # done once


def test_a_lease_renewed_in_time_keeps_the_job(ctx: JobContext) -> None:
    job, holder = _running(ctx)
    assert L.renew(ctx.engine, job.id, holder, 10.0, now=time.time() + 8)
    assert fail_orphaned(ctx, at=time.time() + 11) == []
    assert not L.renew(ctx.engine, job.id, "not the holder", 10.0)


def test_a_running_job_without_a_lease_is_failed_once_it_is_old(ctx: JobContext) -> None:
    """Jobs started before leases existed (or by hand): judged by their start time."""
    job = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    S.mark_running(ctx.engine, job.id)  # no holder: no lease
    assert _lease(ctx.engine, job.id) is None
    assert fail_orphaned(ctx) == []
    assert fail_orphaned(ctx, at=time.time() + ctx.lease_s + 1) == [job.id]


def test_the_heartbeat_renews_the_lease_and_releases_it(ctx: JobContext) -> None:
    job = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    holder = L.new_holder()
    S.mark_running(ctx.engine, job.id, holder=holder, lease_s=0.4)
    with L.Heartbeat(ctx.engine, job.id, holder, 0.4) as beat:
        time.sleep(1.2)  # three lease lengths: alive only by renewal
        assert fail_orphaned(ctx) == []
        assert _lease(ctx.engine, job.id).expires_at > time.time()
    assert not beat.lost and _lease(ctx.engine, job.id) is None
    with pytest.raises(ValueError):
        L.Heartbeat(ctx.engine, job.id, holder, 0)


def test_a_heartbeat_whose_job_was_failed_stops(ctx: JobContext) -> None:
    job = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    holder = L.new_holder()
    S.mark_running(ctx.engine, job.id, holder=holder, lease_s=0.4)
    beat = L.Heartbeat(ctx.engine, job.id, holder, 0.4)
    assert fail_orphaned(ctx, at=time.time() + 1) == [job.id]  # e.g. frozen past its lease
    beat.start()
    time.sleep(0.3)
    assert beat.lost
    beat.stop()


def test_inputs_of_ended_jobs_are_swept(ctx: JobContext) -> None:
    ended = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    queued = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    ctx.write_input(ended.id, ["left behind"])
    ctx.write_input(queued.id, ["waiting"])
    S.mark_failed(ctx.engine, ended.id, "the web process died before deleting the texts")
    assert sweep_inputs(ctx) == [ended.id]
    assert not (ctx.job_dir(ended.id) / INPUT_FILE).exists()
    assert (ctx.job_dir(queued.id) / INPUT_FILE).exists()
    assert recover(ctx).inputs_deleted == []


def test_interrupted_jobs_are_failed_at_worker_start(ctx: JobContext) -> None:
    engine = ctx.engine
    a = S.create_job(engine, kind="embedding", created_by="x", params={})
    b = S.create_job(engine, kind="embedding", created_by="x", params={})
    a_input = ctx.write_input(a.id, ["mine"])
    b_input = ctx.write_input(b.id, ["queued"])
    S.mark_running(engine, a.id)
    assert fail_orphaned(ctx, every_running=True) == [a.id]
    assert S.get_job(engine, a.id).status == "failed"  # type: ignore[union-attr]
    assert not a_input.exists() and not ctx.job_dir(a.id).exists()  # the texts went with it
    assert S.get_job(engine, b.id).status == "queued"  # type: ignore[union-attr]
    assert b_input.exists()
