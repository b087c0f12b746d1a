"""models.job_bodies: embedding and training jobs run as plain functions and through huey
inline (MemoryHuey, immediate) and across a SQLite queue, crashes reported as failed with
nothing published, the training charged through ``models.charge.TrainingCharge`` (committed,
refunded only before the corpus was read, charged for the steps begun for a cancel), and
cancels of each kind. The job table, its states and the queue alone are tests/jobs/."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from jobs import leases as L
from jobs import states as S
from jobs.queue import make_huey, make_queue
from jobs.recovery import fail_orphaned
from jobs.table import Job, job_leases, jobs
from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Budget
from mechanisms.ledger_memory import InMemoryLedger
from models import job_bodies as B
from models.charge import TrainingCharge, UnchargedTrainingError
from models.job_bodies import ModelJobContext
from models.training import TrainingCancelled, TrainingConfig

EVENT = PrivacyEvent.subsampled_gaussian(noise_multiplier=1.0, sampling_rate=0.1, steps=10)


@pytest.mark.torch
def test_embedding_job_round_trip(ctx: ModelJobContext) -> None:
    texts = ["hello there", "how are you doing today?", ""] * 3
    job = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 9})
    inp = B.write_embedding_input(ctx, job.id, texts)
    assert inp.stat().st_mode & 0o777 == 0o600
    B.run_embedding_job(job.id, ctx)
    done = S.get_job(ctx.engine, job.id)
    assert done is not None and done.status == "succeeded" and done.progress == 1.0
    assert done.result is not None and done.result["model_id"] == "base"
    assert not inp.exists()  # the texts are gone once the job ended
    path = B.result_path(ctx, done)
    assert path is not None
    vectors = np.load(path)
    assert vectors.shape == (9, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[3], atol=1e-6)


def test_a_crashing_embedding_job_is_failed_and_publishes_nothing(ctx: ModelJobContext) -> None:
    secret = "my card number is 4111 1111 1111 1111"

    def broken() -> tuple[str, Path]:
        raise RuntimeError(f"cannot embed {secret}")

    ctx.model_source = broken
    job = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 1})
    B.write_embedding_input(ctx, job.id, [secret])
    with pytest.raises(RuntimeError):
        B.run_embedding_job(job.id, ctx)
    failed = S.get_job(ctx.engine, job.id)
    assert failed is not None and failed.status == "failed" and failed.finished_at is not None
    assert failed.error is not None and "RuntimeError" in failed.error
    assert "4111" not in failed.error  # the message never carries the data
    assert B.result_path(ctx, failed) is None
    assert list(ctx.job_dir(job.id).iterdir()) == []  # no input, no partial result


@pytest.mark.torch
def test_results_expire(ctx: ModelJobContext) -> None:
    job = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 1})
    B.write_embedding_input(ctx, job.id, ["one"])
    B.run_embedding_job(job.id, ctx)
    done = S.get_job(ctx.engine, job.id)
    assert done is not None and B.result_path(ctx, done) is not None
    assert B.sweep_expired(ctx) == 0  # still within the ttl
    assert B.sweep_expired(ctx, at=done.finished_at + timedelta(seconds=61)) == 1  # type: ignore[operator]
    expired = S.get_job(ctx.engine, job.id)
    assert expired is not None and expired.result is not None and expired.result["expired"]
    assert B.result_path(ctx, expired) is None and not ctx.job_dir(job.id).exists()


def _training_job(ctx: ModelJobContext) -> tuple[Job, Any]:
    """A queued training job reserved as the route reserves it, for the fixed EVENT (the
    fake trainers here do not check the plan)."""
    ledger: InMemoryLedger = ctx.ledger
    ledger.set_corpus_cap(Budget(epsilon=10.0, delta=1e-5))
    charge = TrainingCharge(ledger, "ad_1", EVENT).reserve()
    config = TrainingConfig(target_epsilon=2.0, steps=10, expected_senders_per_batch=2)
    job = B.create_training_job(ctx.engine, charge, config, snapshot_id="snap", activate=False)
    return job, charge.reserved


def _entry_status(ledger: InMemoryLedger, rid: str) -> str:
    return next(e.status for e in ledger.history("ad_1") if e.id == rid)


def test_training_job_commits_its_reservation(ctx: ModelJobContext) -> None:
    job, reservation = _training_job(ctx)
    calls: dict[str, Any] = {}

    def fake_train(config: Any, **kwargs: Any) -> Any:
        calls.update(kwargs, config=config)
        kwargs["progress"](0.5)
        assert S.get_job(ctx.engine, job.id).progress == 0.5  # type: ignore[union-attr]
        return SimpleNamespace(id="m-20261125T000000Z-00000000", epsilon=2.0, delta=1e-5)

    B.run_training_job(job.id, ctx, train=fake_train)
    done = S.get_job(ctx.engine, job.id)
    assert done is not None and done.status == "succeeded"
    assert done.result == {"model_id": "m-20261125T000000Z-00000000", "epsilon": 2.0,
                           "delta": 1e-5}
    assert calls["event"] == EVENT and calls["snapshot_id"] == "snap"
    assert calls["config"].target_epsilon == 2.0 and calls["activate"] is False
    assert _entry_status(ctx.ledger, reservation.id) == "committed"


def test_a_training_job_that_crashes_after_reading_is_failed_and_charged_in_full(
    ctx: ModelJobContext,
) -> None:
    job, reservation = _training_job(ctx)
    spent = ctx.ledger.corpus_remaining().spent_epsilon
    assert spent > 0

    def crash(config: Any, **kwargs: Any) -> Any:
        kwargs["run"].corpus_read = True  # as models.training.train says before its read
        kwargs["run"].steps_started = 3
        kwargs["progress"](0.3)
        raise MemoryError("out of memory while reading sender user7's messages")

    with pytest.raises(MemoryError):
        B.run_training_job(job.id, ctx, train=crash)
    failed = S.get_job(ctx.engine, job.id)
    assert failed is not None and failed.status == "failed"
    assert failed.error == B.FAILED_AFTER_READ  # the same for every failure after the read
    assert failed.result is not None and failed.result["charge"]["status"] == "committed"
    assert failed.result["charge"]["steps"] == 10 and "model_id" not in failed.result
    assert _entry_status(ctx.ledger, reservation.id) == "committed"
    assert ctx.ledger.corpus_remaining().spent_epsilon == spent  # nothing refunded


@pytest.mark.parametrize(
    "error",
    [MemoryError("x"), RuntimeError("user7"), SystemExit(1)],
    ids=lambda e: type(e).__name__,
)
def test_failures_after_the_read_look_the_same(ctx: ModelJobContext, error: BaseException) -> None:
    job, _reservation = _training_job(ctx)

    def crash(config: Any, **kwargs: Any) -> Any:
        kwargs["run"].corpus_read = True
        raise error

    with pytest.raises(type(error)):
        B.run_training_job(job.id, ctx, train=crash)
    failed = S.get_job(ctx.engine, job.id)
    assert failed is not None and (failed.status, failed.error) == ("failed", B.FAILED_AFTER_READ)


def test_a_train_that_does_not_say_whether_it_read_is_charged(ctx: ModelJobContext) -> None:
    job, reservation = _training_job(ctx)

    def crash(config: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        B.run_training_job(job.id, ctx, train=crash)
    assert _entry_status(ctx.ledger, reservation.id) == "committed"


def test_a_training_job_that_fails_before_reading_is_refunded(ctx: ModelJobContext) -> None:
    job, reservation = _training_job(ctx)

    def crash(config: Any, **kwargs: Any) -> Any:
        kwargs["run"].corpus_read = False  # as train() before its read (config, base model)
        raise OSError("base model weights missing")

    with pytest.raises(OSError):
        B.run_training_job(job.id, ctx, train=crash)
    failed = S.get_job(ctx.engine, job.id)
    assert failed is not None and failed.status == "failed" and "OSError" in failed.error
    assert failed.result is not None and failed.result["charge"]["status"] == "refunded"
    assert _entry_status(ctx.ledger, reservation.id) == "refunded"
    assert ctx.ledger.corpus_remaining().spent_epsilon == 0.0


def test_a_training_job_whose_parameters_cannot_load_is_refunded(ctx: ModelJobContext) -> None:
    job, reservation = _training_job(ctx)
    with ctx.engine.begin() as conn:  # a job row written by an older version, say
        conn.execute(
            jobs.update().where(jobs.c.id == job.id).values(
                params=json.dumps({**job.params, "config": {"noise": 1}})
            )
        )

    def must_not_run(config: Any, **kwargs: Any) -> Any:
        raise AssertionError("trained")

    with pytest.raises(Exception, match="unknown training config"):
        B.run_training_job(job.id, ctx, train=must_not_run)
    assert _entry_status(ctx.ledger, reservation.id) == "refunded"


@pytest.mark.torch
def test_tasks_run_inline_on_the_memory_queue(ctx: ModelJobContext, tmp_path: Path) -> None:
    queue = make_queue(make_huey("memory://", tmp_path), lambda: ctx, B.BODIES)
    job = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 2})
    B.write_embedding_input(ctx, job.id, ["a", "b"])
    queue.enqueue("embedding", job.id)
    assert S.get_job(ctx.engine, job.id).status == "succeeded"  # type: ignore[union-attr]

    # A job whose task raises is failed; huey does not retry it.
    job2 = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 1})
    queue.enqueue("embedding", job2.id)  # no input file: the task raises inside
    failed = S.get_job(ctx.engine, job2.id)
    assert failed is not None and failed.status == "failed"
    assert "FileNotFoundError" in (failed.error or "")
    assert json.loads(json.dumps(failed.params)) == {"count": 1}


@pytest.mark.torch
def test_a_job_crosses_the_sqlite_queue_by_task_name(ctx: ModelJobContext, tmp_path: Path) -> None:
    """What the web process enqueues, another process's huey (the worker) runs: two queue
    objects on the same SQLite file, the task found by its registered name."""
    web = make_queue(make_huey("", tmp_path), lambda: ctx, B.BODIES)
    worker = make_queue(make_huey("", tmp_path), lambda: ctx, B.BODIES)
    job = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 2})
    B.write_embedding_input(ctx, job.id, ["queued text", "another"])
    web.enqueue("embedding", job.id)
    assert S.get_job(ctx.engine, job.id).status == "queued"  # type: ignore[union-attr]
    task = worker.huey.dequeue()
    assert task is not None and task.name == "privtext.embedding" and task.args == (job.id,)
    worker.huey.execute(task)
    assert S.get_job(ctx.engine, job.id).status == "succeeded"  # type: ignore[union-attr]
    assert worker.huey.dequeue() is None


# -- cancelling ----------------------------------------------------------------------------


def test_cancel_a_queued_training_job_refunds_and_the_task_then_does_nothing(
    ctx: ModelJobContext, tmp_path: Path
) -> None:
    job, reservation = _training_job(ctx)
    cancelled = B.cancel_job(ctx, job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert _entry_status(ctx.ledger, reservation.id) == "refunded"
    assert ctx.ledger.corpus_remaining().spent_epsilon == 0.0

    def must_not_run(config: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cancelled job was trained")

    B.run_training_job(job.id, ctx, train=must_not_run)  # returns quietly
    queue = make_queue(make_huey("memory://", tmp_path), lambda: ctx, B.BODIES)
    queue.enqueue("training", job.id)  # the huey task too: no exception, no second refund
    after = S.get_job(ctx.engine, job.id)
    assert after == cancelled
    assert _entry_status(ctx.ledger, reservation.id) == "refunded"
    with pytest.raises(S.JobStateError):
        B.cancel_job(ctx, job.id)  # final: unchanged
    assert S.get_job(ctx.engine, job.id) == cancelled


def test_cancel_a_running_training_job_stops_it_charged_for_the_steps_begun(
    ctx: ModelJobContext,
) -> None:
    job, reservation = _training_job(ctx)
    from mechanisms.ledger import Spend

    published: list[str] = []

    def fake_train(config: Any, **kwargs: Any) -> Any:
        should_stop, run = kwargs["should_stop"], kwargs["run"]
        run.corpus_read = True
        for step in range(10):
            if should_stop():
                raise TrainingCancelled("training cancelled")
            run.steps_started += 1
            kwargs["progress"]((step + 1) / 10)
            if step == 2:
                asked = B.cancel_job(ctx, job.id)
                assert asked.status == "cancelling"
                assert B.cancel_job(ctx, job.id).status == "cancelling"  # asking twice: same
        published.append("m-1")
        return SimpleNamespace(id="m-1", epsilon=2.0, delta=1e-5)

    B.run_training_job(job.id, ctx, train=fake_train)  # no exception for a cancel
    done = S.get_job(ctx.engine, job.id)
    assert done is not None and done.status == "cancelled" and done.finished_at is not None
    assert done.error is None and done.progress == 0.3
    assert published == []
    # 3 of the 10 planned steps ran: those are charged (at the planned q and sigma), the
    # full reservation is given back, and the job points at the charge that stays.
    three = PrivacyEvent.subsampled_gaussian(noise_multiplier=1.0, sampling_rate=0.1, steps=3)
    assert done.result is not None and done.result["charge"]["steps"] == 3
    assert done.result["charge"]["event"] == three.to_dict()
    assert done.reservation_id == done.result["charge"]["reservation_id"] != reservation.id
    assert _entry_status(ctx.ledger, reservation.id) == "refunded"
    assert _entry_status(ctx.ledger, done.reservation_id) == "committed"
    assert ctx.ledger.corpus_remaining().spent_epsilon == pytest.approx(
        Spend.of(three).epsilon(1e-5), rel=1e-9
    )


def test_a_cancel_after_training_returned_is_too_late(ctx: ModelJobContext) -> None:
    job, reservation = _training_job(ctx)

    def fake_train(config: Any, **kwargs: Any) -> Any:
        assert not kwargs["should_stop"]()
        assert B.cancel_job(ctx, job.id).status == "cancelling"  # while publishing
        return SimpleNamespace(id="m-1", epsilon=2.0, delta=1e-5)

    B.run_training_job(job.id, ctx, train=fake_train)
    done = S.get_job(ctx.engine, job.id)
    assert done is not None and done.status == "succeeded" and done.result is not None
    assert done.result["model_id"] == "m-1"
    assert _entry_status(ctx.ledger, reservation.id) == "committed"
    with pytest.raises(S.JobStateError):
        B.cancel_job(ctx, job.id)
    assert S.get_job(ctx.engine, job.id) == done


class _CancellingEncoder:
    """Asks for its own job to be cancelled while it encodes (as the API would)."""

    dim = 4

    def __init__(self, ctx: ModelJobContext, job_id: str) -> None:
        self.ctx, self.job_id, self.calls = ctx, job_id, 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        assert B.cancel_job(self.ctx, self.job_id).status == "cancelling"
        return np.ones((len(texts), self.dim), np.float32)


@pytest.mark.torch
def test_cancel_a_running_embedding_job_leaves_no_result(
    ctx: ModelJobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    import models.encoder

    job = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 600})
    inp = B.write_embedding_input(ctx, job.id, ["text"] * 600)  # two chunks of 512
    encoder = _CancellingEncoder(ctx, job.id)
    monkeypatch.setattr(models.encoder, "get_encoder", lambda *a, **k: encoder)
    B.run_embedding_job(job.id, ctx)  # no exception for a cancel
    done = S.get_job(ctx.engine, job.id)
    assert done is not None and done.status == "cancelled" and done.result is None
    assert encoder.calls == 1  # stopped between chunks
    assert not inp.exists() and list(ctx.job_dir(job.id).iterdir()) == []
    assert B.result_path(ctx, done) is None


def test_cancel_a_queued_embedding_job_deletes_its_texts(ctx: ModelJobContext) -> None:
    job = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 1})
    inp = B.write_embedding_input(ctx, job.id, ["private words"])
    assert B.cancel_job(ctx, job.id).status == "cancelled"
    assert not inp.exists()
    B.run_embedding_job(job.id, ctx)  # the task, delivered later: nothing
    assert S.get_job(ctx.engine, job.id).status == "cancelled"  # type: ignore[union-attr]
    assert not ctx.job_dir(job.id).joinpath(B.RESULT_FILE).exists()


def test_cancelling_jobs_are_failed_at_worker_start_and_stay_charged(ctx: ModelJobContext) -> None:
    job, reservation = _training_job(ctx)
    S.mark_running(ctx.engine, job.id)
    assert B.cancel_job(ctx, job.id).status == "cancelling"
    assert fail_orphaned(ctx, every_running=True) == [job.id]
    assert S.get_job(ctx.engine, job.id).status == "failed"  # type: ignore[union-attr]
    assert _entry_status(ctx.ledger, reservation.id) == "reserved"


@pytest.mark.torch
def test_a_cancel_through_the_job_table_stops_a_real_training_within_its_step(
    ctx: ModelJobContext, ingested: Any, tiny_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real trainer on the tiny corpus, every sender in each step (q = 1); the admin's
    cancel (a ``cancelling`` row, as the API writes it) arrives while the first step's second
    sender is prepared: the worker stops at the next sender, publishes nothing, and keeps the
    charge for the one step begun."""
    import models.trainer as T
    from mechanisms.ledger import Spend
    from models.registry import BASE_ID, ModelRegistry

    monkeypatch.setattr(T, "STOP_POLL_S", 0.0)  # poll between every two senders
    config = TrainingConfig(
        **{**tiny_config.to_dict(), "expected_senders_per_batch": 20, "engine": "microbatch"}
    )
    ledger: InMemoryLedger = ctx.ledger
    ledger.set_corpus_cap(Budget(epsilon=50.0, delta=1e-3))
    charge = TrainingCharge.price(ledger, config, principal_id="ad_1").reserve()
    event, reservation = charge.event, charge.reserved
    assert event.sampling_rate == 1.0 and event.steps == 2
    job = B.create_training_job(ctx.engine, charge, config, snapshot_id=None, activate=True)
    prepared: list[int] = []
    real_prepare = T.Trainer._prepare

    def prepare(self: Any, sequences: Any) -> Any:
        prepared.append(1)
        if len(prepared) == 2:
            assert B.cancel_job(ctx, job.id).status == "cancelling"
        return real_prepare(self, sequences)

    monkeypatch.setattr(T.Trainer, "_prepare", prepare)
    B.run_training_job(job.id, ctx)
    done = S.get_job(ctx.engine, job.id)
    assert done is not None and done.status == "cancelled" and done.progress == 0.0
    assert len(prepared) == 2  # not the 20 senders of the step
    assert done.result is not None and done.result["charge"]["steps"] == 1
    one = PrivacyEvent.subsampled_gaussian(
        noise_multiplier=event.noise_multiplier,  # type: ignore[arg-type]
        sampling_rate=1.0,
        steps=1,
    )
    assert _entry_status(ledger, reservation.id) == "refunded"
    assert _entry_status(ledger, done.reservation_id) == "committed"  # type: ignore[arg-type]
    assert ledger.corpus_remaining().spent_epsilon == pytest.approx(
        Spend.of(one).epsilon(1e-3), rel=1e-9
    )
    assert ModelRegistry(ctx.data_dir).active().id == BASE_ID


def test_a_training_job_without_a_reservation_is_never_run(ctx: ModelJobContext) -> None:
    """Every training is charged: a job row without a reservation (or a worker without a
    ledger) fails before anything is trained or read."""
    params = {"config": {"target_epsilon": 2.0}, "snapshot_id": None,
              "event": EVENT.to_dict(), "activate": False}
    job = S.create_job(ctx.engine, kind="training", created_by="ad_1", params=params)

    def must_not_run(config: Any, **kwargs: Any) -> Any:
        raise AssertionError("trained without a charge")

    with pytest.raises(UnchargedTrainingError):
        B.run_training_job(job.id, ctx, train=must_not_run)
    failed = S.get_job(ctx.engine, job.id)
    assert failed is not None and failed.status == "failed" and failed.result is None
    assert "UnchargedTrainingError" in (failed.error or "")
    job2, reservation = _training_job(ctx)
    ctx.ledger = None
    with pytest.raises(UnchargedTrainingError):
        B.run_training_job(job2.id, ctx, train=must_not_run)
    assert S.get_job(ctx.engine, job2.id).status == "failed"  # type: ignore[union-attr]


def test_a_cancelling_training_whose_worker_died_stays_charged(ctx: ModelJobContext) -> None:
    job, reservation = _training_job(ctx)
    S.mark_running(ctx.engine, job.id, holder=L.new_holder(), lease_s=ctx.lease_s)
    assert B.cancel_job(ctx, job.id).status == "cancelling"
    assert fail_orphaned(ctx, at=time.time() + 11) == [job.id]
    assert S.get_job(ctx.engine, job.id).status == "failed"  # type: ignore[union-attr]
    # Whether the corpus was read (or a model published) is not known: never refunded.
    assert _entry_status(ctx.ledger, reservation.id) == "reserved"
    assert ctx.ledger.corpus_remaining().spent_epsilon > 0


def test_a_job_run_by_a_worker_holds_its_lease_only_while_it_runs(
    ctx: ModelJobContext,
) -> None:
    seen: list[Any] = []

    def lease() -> Any:
        with ctx.engine.connect() as conn:
            return conn.execute(
                select(job_leases).where(job_leases.c.job_id == job.id)
            ).first()

    def source() -> tuple[str, Path]:
        seen.append(lease())
        raise RuntimeError("no model")

    ctx.model_source = source
    job = S.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 1})
    B.write_embedding_input(ctx, job.id, ["a"])
    with pytest.raises(RuntimeError):
        B.run_embedding_job(job.id, ctx)
    assert seen[0] is not None and seen[0].expires_at > time.time()
    assert lease() is None
    assert not ctx.input_path(job.id).exists()
