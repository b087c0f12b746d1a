"""jobs.states: the job table's lifecycle, each transition allowed only from its states, and
cancelling (``queued -> cancelled`` with the input deleted, ``running -> cancelling``, a final
or missing job unchanged). What each model job does on a cancel is in
tests/models/test_job_bodies.py."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from jobs import states as S
from jobs.context import JobContext


def test_lifecycle_transitions(engine: Engine) -> None:
    job = S.create_job(engine, kind="embedding", created_by="ap_1", params={"count": 2})
    assert (job.status, job.progress, job.started_at, job.error) == ("queued", 0.0, None, None)
    S.mark_running(engine, job.id)
    S.set_progress(engine, job.id, 0.25)
    running = S.get_job(engine, job.id)
    assert running is not None and running.status == "running" and running.progress == 0.25
    assert running.started_at is not None
    with pytest.raises(S.JobStateError):
        S.mark_running(engine, job.id)  # not queued any more
    S.mark_succeeded(engine, job.id, {"count": 2})
    done = S.get_job(engine, job.id)
    assert done is not None and (done.status, done.progress) == ("succeeded", 1.0)
    assert done.finished_at is not None and done.result == {"count": 2}
    with pytest.raises(S.JobStateError):
        S.mark_failed(engine, job.id, "late")  # a finished job stays finished
    S.set_progress(engine, job.id, 0.1)  # ignored once finished
    assert S.get_job(engine, job.id).progress == 1.0  # type: ignore[union-attr]
    assert [j.id for j in S.list_jobs(engine, created_by="ap_1")] == [job.id]
    assert S.list_jobs(engine, created_by="someone else") == []
    with pytest.raises(ValueError):
        S.create_job(engine, kind="mining", created_by="x", params={})


def test_a_job_that_could_not_be_queued_fails_only_while_queued(engine: Engine) -> None:
    queued = S.create_job(engine, kind="training", created_by="ad_1", params={})
    assert S.fail_if_queued(engine, queued.id, "no queue")
    assert S.get_job(engine, queued.id).status == "failed"  # type: ignore[union-attr]
    taken = S.create_job(engine, kind="training", created_by="ad_1", params={})
    S.mark_running(engine, taken.id)
    assert not S.fail_if_queued(engine, taken.id, "no queue")  # its worker settles it
    assert S.get_job(engine, taken.id).status == "running"  # type: ignore[union-attr]


def test_set_reservation_points_the_job_at_its_charge(engine: Engine) -> None:
    job = S.create_job(engine, kind="training", created_by="ad_1", params={},
                       reservation_id="r-full")
    S.set_reservation(engine, job.id, "r-steps")
    assert S.get_job(engine, job.id).reservation_id == "r-steps"  # type: ignore[union-attr]


def test_cancel_a_queued_job_deletes_its_input(ctx: JobContext) -> None:
    job = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 1})
    inp = ctx.write_input(job.id, ["private words"])
    assert inp.stat().st_mode & 0o777 == 0o600
    cancelled = S.cancel(ctx, job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert not inp.exists()
    assert S.claim(ctx, job.id) is None  # the task, delivered later, finds it not queued
    assert S.get_job(ctx.engine, job.id) == cancelled


def test_cancel_a_running_job_asks_its_worker_to_stop(ctx: JobContext) -> None:
    job = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    S.mark_running(ctx.engine, job.id)
    assert not S.cancel_requested(ctx.engine, job.id)
    S.stop_if_cancelled(ctx.engine, job.id)  # not asked: returns
    assert S.cancel(ctx, job.id).status == "cancelling"
    assert S.cancel(ctx, job.id).status == "cancelling"  # asking twice: the same
    assert S.cancel_requested(ctx.engine, job.id)
    with pytest.raises(S.JobCancelled):
        S.stop_if_cancelled(ctx.engine, job.id)
    assert S.mark_cancelled(ctx.engine, job.id, result={"charge": None})
    done = S.get_job(ctx.engine, job.id)
    assert done is not None and done.status == "cancelled" and done.result == {"charge": None}
    assert not S.mark_cancelled(ctx.engine, job.id)  # only from cancelling


def test_a_cancel_that_comes_too_late_leaves_the_job_succeeding(ctx: JobContext) -> None:
    job = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    S.mark_running(ctx.engine, job.id)
    assert S.cancel(ctx, job.id).status == "cancelling"
    S.mark_succeeded(ctx.engine, job.id, {"count": 0})  # the result was being published
    assert S.get_job(ctx.engine, job.id).status == "succeeded"  # type: ignore[union-attr]


def test_cancel_of_a_final_or_missing_job_changes_nothing(ctx: JobContext) -> None:
    ok = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    S.mark_running(ctx.engine, ok.id)
    S.mark_succeeded(ctx.engine, ok.id, {"count": 0})
    bad = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    S.mark_failed(ctx.engine, bad.id, "broken")
    for jid in (ok.id, bad.id):
        before = S.get_job(ctx.engine, jid)
        with pytest.raises(S.JobStateError):
            S.cancel(ctx, jid)
        assert S.get_job(ctx.engine, jid) == before
    with pytest.raises(S.JobStateError):
        S.cancel(ctx, "emb_missing")


def test_failure_messages_carry_no_data() -> None:
    message = S.failure_message(RuntimeError("my card number is 4111 1111 1111 1111"))
    assert "RuntimeError" in message and "4111" not in message
