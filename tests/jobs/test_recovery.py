"""models.job_leases and models.job_recovery: a running job holds a lease its worker renews;
a job whose lease expired (its worker died) is failed with its files deleted, a job whose
worker is alive is left alone, a training's reservation stays charged, and the input of every
ended job is deleted. (The real thing, a worker process killed with SIGKILL on the SQLite and
the Redis queue, is tests/service/test_job_crash.py.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Budget
from mechanisms.ledger_memory import InMemoryLedger
from models import job_leases as L
from models import jobs as J
from models.job_recovery import INTERRUPTED, fail_orphaned, recover, sweep_inputs
from models.registry import base_model_path
from service.db import make_engine

EVENT = PrivacyEvent.subsampled_gaussian(noise_multiplier=1.0, sampling_rate=0.1, steps=10)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    J.create_tables(eng)
    return eng


@pytest.fixture
def ctx(engine: Engine, tmp_path: Path) -> J.JobContext:
    return J.JobContext(
        engine=engine,
        data_dir=tmp_path / "data",
        ledger=InMemoryLedger(),
        model_source=lambda: ("base", base_model_path()),
        encoder_options={"device": "cpu"},
        lease_s=10.0,
    )


def _lease(engine: Engine, job_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            select(L.job_leases).where(L.job_leases.c.job_id == job_id)
        ).first()


def _running(ctx: J.JobContext, texts: list[str] | None = None) -> tuple[J.Job, str]:
    """An embedding job marked running by a worker ("holder"), with its input on disk."""
    job = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 1})
    J.write_embedding_input(ctx, job.id, texts or ["my private words"])
    holder = L.new_holder()
    J.mark_running(ctx.engine, job.id, holder=holder, lease_s=ctx.lease_s)
    return job, holder


def test_marking_a_job_running_gives_it_a_lease(ctx: J.JobContext) -> None:
    before = time.time()
    job, holder = _running(ctx)
    lease = _lease(ctx.engine, job.id)
    assert lease is not None and lease.holder == holder
    assert before + ctx.lease_s <= lease.expires_at <= time.time() + ctx.lease_s
    with pytest.raises(J.JobStateError):  # not queued: no second lease, nothing changed
        J.mark_running(ctx.engine, job.id, holder="someone else", lease_s=ctx.lease_s)
    assert _lease(ctx.engine, job.id).holder == holder


def test_a_job_whose_worker_is_alive_is_left_alone(ctx: J.JobContext) -> None:
    job, _ = _running(ctx)
    assert fail_orphaned(ctx) == []  # the lease runs for another 10 s
    assert fail_orphaned(ctx, at=time.time() + 5) == []
    assert J.get_job(ctx.engine, job.id).status == "running"  # type: ignore[union-attr]
    assert (ctx.job_dir(job.id) / J.INPUT_FILE).exists()


def test_a_job_whose_lease_expired_is_failed_and_its_files_deleted(ctx: J.JobContext) -> None:
    job, _ = _running(ctx, ["card 4111 1111 1111 1111"])
    (ctx.job_dir(job.id) / J.RESULT_FILE).write_bytes(b"a result the worker never reported")
    other, _ = _running(ctx)
    L.renew(ctx.engine, other.id, _lease(ctx.engine, other.id).holder, 60.0)  # alive
    assert fail_orphaned(ctx, at=time.time() + 11) == [job.id]
    failed = J.get_job(ctx.engine, job.id)
    assert failed is not None and failed.status == "failed" and failed.error == INTERRUPTED
    assert failed.finished_at is not None
    assert not ctx.job_dir(job.id).exists()  # input and any result: a failed job publishes nothing
    assert _lease(ctx.engine, job.id) is None
    assert J.get_job(ctx.engine, other.id).status == "running"  # type: ignore[union-attr]
    assert fail_orphaned(ctx, at=time.time() + 11) == []  # done once


def test_a_lease_renewed_in_time_keeps_the_job(ctx: J.JobContext) -> None:
    job, holder = _running(ctx)
    assert L.renew(ctx.engine, job.id, holder, 10.0, now=time.time() + 8)
    assert fail_orphaned(ctx, at=time.time() + 11) == []
    assert not L.renew(ctx.engine, job.id, "not the holder", 10.0)


def test_a_running_job_without_a_lease_is_failed_once_it_is_old(ctx: J.JobContext) -> None:
    """Jobs started before leases existed (or by hand): judged by their start time."""
    job = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    J.mark_running(ctx.engine, job.id)  # no holder: no lease
    assert _lease(ctx.engine, job.id) is None
    assert fail_orphaned(ctx) == []
    assert fail_orphaned(ctx, at=time.time() + ctx.lease_s + 1) == [job.id]


def test_a_cancelling_training_whose_worker_died_stays_charged(ctx: J.JobContext) -> None:
    ledger: InMemoryLedger = ctx.ledger
    ledger.set_corpus_cap(Budget(epsilon=10.0, delta=1e-5))
    reservation = ledger.reserve_corpus("ad_1", EVENT)
    job = J.create_job(
        ctx.engine,
        kind="training",
        created_by="ad_1",
        params={"event": EVENT.to_dict(), "config": {}},
        reservation_id=reservation.id,
    )
    J.mark_running(ctx.engine, job.id, holder=L.new_holder(), lease_s=ctx.lease_s)
    assert J.cancel_job(ctx, job.id).status == "cancelling"
    assert fail_orphaned(ctx, at=time.time() + 11) == [job.id]
    assert J.get_job(ctx.engine, job.id).status == "failed"  # type: ignore[union-attr]
    # Whether the corpus was read (or a model published) is not known: never refunded.
    entry = next(e for e in ledger.history("ad_1") if e.id == reservation.id)
    assert entry.status == "reserved"
    assert ledger.corpus_remaining().spent_epsilon > 0


def test_the_heartbeat_renews_the_lease_and_releases_it(ctx: J.JobContext) -> None:
    job = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    holder = L.new_holder()
    J.mark_running(ctx.engine, job.id, holder=holder, lease_s=0.4)
    with L.Heartbeat(ctx.engine, job.id, holder, 0.4) as beat:
        time.sleep(1.2)  # three lease lengths: alive only by renewal
        assert fail_orphaned(ctx) == []
        assert _lease(ctx.engine, job.id).expires_at > time.time()
    assert not beat.lost and _lease(ctx.engine, job.id) is None
    with pytest.raises(ValueError):
        L.Heartbeat(ctx.engine, job.id, holder, 0)


def test_a_heartbeat_whose_job_was_failed_stops(ctx: J.JobContext) -> None:
    job = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    holder = L.new_holder()
    J.mark_running(ctx.engine, job.id, holder=holder, lease_s=0.4)
    beat = L.Heartbeat(ctx.engine, job.id, holder, 0.4)
    assert fail_orphaned(ctx, at=time.time() + 1) == [job.id]  # e.g. frozen past its lease
    beat.start()
    time.sleep(0.3)
    assert beat.lost
    beat.stop()


def test_a_job_run_by_a_worker_holds_its_lease_only_while_it_runs(ctx: J.JobContext) -> None:
    seen: list[Any] = []

    def source() -> tuple[str, Path]:
        seen.append(_lease(ctx.engine, job.id))
        raise RuntimeError("no model")

    ctx.model_source = source
    job = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 1})
    J.write_embedding_input(ctx, job.id, ["a"])
    with pytest.raises(RuntimeError):
        J.run_embedding_job(job.id, ctx)
    assert seen[0] is not None and seen[0].expires_at > time.time()
    assert _lease(ctx.engine, job.id) is None
    assert not (ctx.job_dir(job.id) / J.INPUT_FILE).exists()


def test_inputs_of_ended_jobs_are_swept(ctx: J.JobContext) -> None:
    ended = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    queued = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    J.write_embedding_input(ctx, ended.id, ["left behind"])
    J.write_embedding_input(ctx, queued.id, ["waiting"])
    J.mark_failed(ctx.engine, ended.id, "the web process died before deleting the texts")
    assert sweep_inputs(ctx) == [ended.id]
    assert not (ctx.job_dir(ended.id) / J.INPUT_FILE).exists()
    assert (ctx.job_dir(queued.id) / J.INPUT_FILE).exists()
    assert recover(ctx).inputs_deleted == []
