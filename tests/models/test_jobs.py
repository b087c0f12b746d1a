"""models.jobs: the job table's lifecycle, embedding and training jobs run as plain functions
and through huey inline (MemoryHuey, immediate), crashes reported as failed with nothing
published, and the training reservation committed, refunded (only before the corpus was read)
or charged for the steps begun (a cancel)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Budget
from mechanisms.ledger_memory import InMemoryLedger
from models import jobs as J
from models.job_recovery import fail_orphaned
from models.registry import base_model_path
from service.db import make_engine


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    J.create_tables(eng)
    J.create_tables(eng)  # idempotent
    return eng


@pytest.fixture
def ctx(engine: Engine, tmp_path: Path) -> J.JobContext:
    return J.JobContext(
        engine=engine,
        data_dir=tmp_path / "data",
        ledger=InMemoryLedger(),
        model_source=lambda: ("base", base_model_path()),
        encoder_options={"device": "cpu"},
        result_ttl_s=60,
    )


EVENT = PrivacyEvent.subsampled_gaussian(noise_multiplier=1.0, sampling_rate=0.1, steps=10)


def test_lifecycle_transitions(engine: Engine) -> None:
    job = J.create_job(engine, kind="embedding", created_by="ap_1", params={"count": 2})
    assert (job.status, job.progress, job.started_at, job.error) == ("queued", 0.0, None, None)
    J.mark_running(engine, job.id)
    J.set_progress(engine, job.id, 0.25)
    running = J.get_job(engine, job.id)
    assert running is not None and running.status == "running" and running.progress == 0.25
    assert running.started_at is not None
    with pytest.raises(J.JobStateError):
        J.mark_running(engine, job.id)  # not queued any more
    J.mark_succeeded(engine, job.id, {"count": 2})
    done = J.get_job(engine, job.id)
    assert done is not None and (done.status, done.progress) == ("succeeded", 1.0)
    assert done.finished_at is not None and done.result == {"count": 2}
    with pytest.raises(J.JobStateError):
        J.mark_failed(engine, job.id, "late")  # a finished job stays finished
    J.set_progress(engine, job.id, 0.1)  # ignored once finished
    assert J.get_job(engine, job.id).progress == 1.0  # type: ignore[union-attr]
    assert [j.id for j in J.list_jobs(engine, created_by="ap_1")] == [job.id]
    assert J.list_jobs(engine, created_by="someone else") == []
    with pytest.raises(ValueError):
        J.create_job(engine, kind="mining", created_by="x", params={})


def test_embedding_job_round_trip(ctx: J.JobContext) -> None:
    texts = ["hello there", "how are you doing today?", ""] * 3
    job = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 9})
    inp = J.write_embedding_input(ctx, job.id, texts)
    assert inp.stat().st_mode & 0o777 == 0o600
    J.run_embedding_job(job.id, ctx)
    done = J.get_job(ctx.engine, job.id)
    assert done is not None and done.status == "succeeded" and done.progress == 1.0
    assert done.result is not None and done.result["model_id"] == "base"
    assert not inp.exists()  # the texts are gone once the job ended
    path = J.result_path(ctx, done)
    assert path is not None
    vectors = np.load(path)
    assert vectors.shape == (9, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[3], atol=1e-6)


def test_a_crashing_embedding_job_is_failed_and_publishes_nothing(ctx: J.JobContext) -> None:
    secret = "my card number is 4111 1111 1111 1111"

    def broken() -> tuple[str, Path]:
        raise RuntimeError(f"cannot embed {secret}")

    ctx.model_source = broken
    job = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 1})
    J.write_embedding_input(ctx, job.id, [secret])
    with pytest.raises(RuntimeError):
        J.run_embedding_job(job.id, ctx)
    failed = J.get_job(ctx.engine, job.id)
    assert failed is not None and failed.status == "failed" and failed.finished_at is not None
    assert failed.error is not None and "RuntimeError" in failed.error
    assert "4111" not in failed.error  # the message never carries the data
    assert J.result_path(ctx, failed) is None
    assert list(ctx.job_dir(job.id).iterdir()) == []  # no input, no partial result


def test_results_expire(ctx: J.JobContext) -> None:
    job = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 1})
    J.write_embedding_input(ctx, job.id, ["one"])
    J.run_embedding_job(job.id, ctx)
    done = J.get_job(ctx.engine, job.id)
    assert done is not None and J.result_path(ctx, done) is not None
    assert J.sweep_expired(ctx) == 0  # still within the ttl
    assert J.sweep_expired(ctx, at=done.finished_at + timedelta(seconds=61)) == 1  # type: ignore[operator]
    expired = J.get_job(ctx.engine, job.id)
    assert expired is not None and expired.result is not None and expired.result["expired"]
    assert J.result_path(ctx, expired) is None and not ctx.job_dir(job.id).exists()


def _training_job(ctx: J.JobContext) -> tuple[J.Job, Any]:
    ledger: InMemoryLedger = ctx.ledger
    ledger.set_corpus_cap(Budget(epsilon=10.0, delta=1e-5))
    reservation = ledger.reserve_corpus("ad_1", EVENT)
    params = {
        "config": {"target_epsilon": 2.0, "steps": 10, "expected_senders_per_batch": 2},
        "snapshot_id": "snap",
        "event": EVENT.to_dict(),
        "activate": False,
    }
    job = J.create_job(ctx.engine, kind="training", created_by="ad_1", params=params,
                       reservation_id=reservation.id)
    return job, reservation


def _entry_status(ledger: InMemoryLedger, rid: str) -> str:
    return next(e.status for e in ledger.history("ad_1") if e.id == rid)


def test_training_job_commits_its_reservation(ctx: J.JobContext) -> None:
    job, reservation = _training_job(ctx)
    calls: dict[str, Any] = {}

    def fake_train(config: Any, **kwargs: Any) -> Any:
        calls.update(kwargs, config=config)
        kwargs["progress"](0.5)
        assert J.get_job(ctx.engine, job.id).progress == 0.5  # type: ignore[union-attr]
        return SimpleNamespace(id="m-20261125T000000Z-00000000", epsilon=2.0, delta=1e-5)

    J.run_training_job(job.id, ctx, train=fake_train)
    done = J.get_job(ctx.engine, job.id)
    assert done is not None and done.status == "succeeded"
    assert done.result == {"model_id": "m-20261125T000000Z-00000000", "epsilon": 2.0,
                           "delta": 1e-5}
    assert calls["event"] == EVENT and calls["snapshot_id"] == "snap"
    assert calls["config"].target_epsilon == 2.0 and calls["activate"] is False
    assert _entry_status(ctx.ledger, reservation.id) == "committed"


def test_a_training_job_that_crashes_after_reading_is_failed_and_charged_in_full(
    ctx: J.JobContext,
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
        J.run_training_job(job.id, ctx, train=crash)
    failed = J.get_job(ctx.engine, job.id)
    assert failed is not None and failed.status == "failed"
    assert failed.error == J.FAILED_AFTER_READ  # the same for every failure after the read
    assert failed.result is not None and failed.result["charge"]["status"] == "committed"
    assert failed.result["charge"]["steps"] == 10 and "model_id" not in failed.result
    assert _entry_status(ctx.ledger, reservation.id) == "committed"
    assert ctx.ledger.corpus_remaining().spent_epsilon == spent  # nothing refunded


@pytest.mark.parametrize(
    "error",
    [MemoryError("x"), RuntimeError("user7"), SystemExit(1)],
    ids=lambda e: type(e).__name__,
)
def test_failures_after_the_read_look_the_same(ctx: J.JobContext, error: BaseException) -> None:
    job, _reservation = _training_job(ctx)

    def crash(config: Any, **kwargs: Any) -> Any:
        kwargs["run"].corpus_read = True
        raise error

    with pytest.raises(type(error)):
        J.run_training_job(job.id, ctx, train=crash)
    failed = J.get_job(ctx.engine, job.id)
    assert failed is not None and (failed.status, failed.error) == ("failed", J.FAILED_AFTER_READ)


def test_a_train_that_does_not_say_whether_it_read_is_charged(ctx: J.JobContext) -> None:
    job, reservation = _training_job(ctx)

    def crash(config: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        J.run_training_job(job.id, ctx, train=crash)
    assert _entry_status(ctx.ledger, reservation.id) == "committed"


def test_a_training_job_that_fails_before_reading_is_refunded(ctx: J.JobContext) -> None:
    job, reservation = _training_job(ctx)

    def crash(config: Any, **kwargs: Any) -> Any:
        kwargs["run"].corpus_read = False  # as train() before its read (config, base model)
        raise OSError("base model weights missing")

    with pytest.raises(OSError):
        J.run_training_job(job.id, ctx, train=crash)
    failed = J.get_job(ctx.engine, job.id)
    assert failed is not None and failed.status == "failed" and "OSError" in failed.error
    assert failed.result is not None and failed.result["charge"]["status"] == "refunded"
    assert _entry_status(ctx.ledger, reservation.id) == "refunded"
    assert ctx.ledger.corpus_remaining().spent_epsilon == 0.0


def test_a_training_job_whose_parameters_cannot_load_is_refunded(ctx: J.JobContext) -> None:
    job, reservation = _training_job(ctx)
    with ctx.engine.begin() as conn:  # a job row written by an older version, say
        conn.execute(
            J.jobs.update().where(J.jobs.c.id == job.id).values(
                params=json.dumps({**job.params, "config": {"noise": 1}})
            )
        )

    def must_not_run(config: Any, **kwargs: Any) -> Any:
        raise AssertionError("trained")

    with pytest.raises(Exception, match="unknown training config"):
        J.run_training_job(job.id, ctx, train=must_not_run)
    assert _entry_status(ctx.ledger, reservation.id) == "refunded"


def test_interrupted_jobs_are_failed_at_worker_start(ctx: J.JobContext) -> None:
    engine = ctx.engine
    a = J.create_job(engine, kind="embedding", created_by="x", params={})
    b = J.create_job(engine, kind="embedding", created_by="x", params={})
    a_input = J.write_embedding_input(ctx, a.id, ["mine"])
    b_input = J.write_embedding_input(ctx, b.id, ["queued"])
    J.mark_running(engine, a.id)
    assert fail_orphaned(ctx, every_running=True) == [a.id]
    assert J.get_job(engine, a.id).status == "failed"  # type: ignore[union-attr]
    assert not a_input.exists() and not ctx.job_dir(a.id).exists()  # the texts went with it
    assert J.get_job(engine, b.id).status == "queued"  # type: ignore[union-attr]
    assert b_input.exists()


def test_queue_backends(tmp_path: Path) -> None:
    from huey import MemoryHuey, RedisHuey, SqliteHuey

    assert isinstance(J.make_huey("", tmp_path), SqliteHuey)
    assert (tmp_path / "jobs.db").exists()
    if __import__("importlib").util.find_spec("redis") is not None:  # the client connects lazily
        assert isinstance(J.make_huey("redis://localhost:6379/0", tmp_path), RedisHuey)
    mem = J.make_huey("memory://", tmp_path)
    assert isinstance(mem, MemoryHuey) and mem.immediate
    with pytest.raises(ValueError):
        J.make_huey("amqp://x", tmp_path)


def test_tasks_run_inline_on_the_memory_queue(ctx: J.JobContext, tmp_path: Path) -> None:
    queue = J.make_queue(J.make_huey("memory://", tmp_path), lambda: ctx)
    job = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 2})
    J.write_embedding_input(ctx, job.id, ["a", "b"])
    queue.enqueue_embedding(job.id)
    assert J.get_job(ctx.engine, job.id).status == "succeeded"  # type: ignore[union-attr]

    # A job whose task raises is failed; huey does not retry it.
    job2 = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 1})
    queue.enqueue_embedding(job2.id)  # no input file: the task raises inside
    failed = J.get_job(ctx.engine, job2.id)
    assert failed is not None and failed.status == "failed"
    assert "FileNotFoundError" in (failed.error or "")
    assert json.loads(json.dumps(failed.params)) == {"count": 1}


def test_a_job_crosses_the_sqlite_queue_by_task_name(ctx: J.JobContext, tmp_path: Path) -> None:
    """What the web process enqueues, another process's huey (the worker) runs: two queue
    objects on the same SQLite file, the task found by its registered name."""
    web = J.make_queue(J.make_huey("", tmp_path), lambda: ctx)
    worker = J.make_queue(J.make_huey("", tmp_path), lambda: ctx)
    job = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 2})
    J.write_embedding_input(ctx, job.id, ["queued text", "another"])
    web.enqueue_embedding(job.id)
    assert J.get_job(ctx.engine, job.id).status == "queued"  # type: ignore[union-attr]
    task = worker.huey.dequeue()
    assert task is not None and task.name == "privtext.embedding" and task.args == (job.id,)
    worker.huey.execute(task)
    assert J.get_job(ctx.engine, job.id).status == "succeeded"  # type: ignore[union-attr]
    assert worker.huey.dequeue() is None


# -- cancelling ----------------------------------------------------------------------------


def test_cancel_a_queued_training_job_refunds_and_the_task_then_does_nothing(
    ctx: J.JobContext, tmp_path: Path
) -> None:
    job, reservation = _training_job(ctx)
    cancelled = J.cancel_job(ctx, job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert _entry_status(ctx.ledger, reservation.id) == "refunded"
    assert ctx.ledger.corpus_remaining().spent_epsilon == 0.0

    def must_not_run(config: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cancelled job was trained")

    J.run_training_job(job.id, ctx, train=must_not_run)  # returns quietly
    queue = J.make_queue(J.make_huey("memory://", tmp_path), lambda: ctx)
    queue.enqueue_training(job.id)  # the huey task too: no exception, no second refund
    after = J.get_job(ctx.engine, job.id)
    assert after == cancelled
    assert _entry_status(ctx.ledger, reservation.id) == "refunded"
    with pytest.raises(J.JobStateError):
        J.cancel_job(ctx, job.id)  # final: unchanged
    assert J.get_job(ctx.engine, job.id) == cancelled


def test_cancel_a_running_training_job_stops_it_charged_for_the_steps_begun(
    ctx: J.JobContext,
) -> None:
    job, reservation = _training_job(ctx)
    from mechanisms.ledger import Spend
    from models.training import TrainingCancelled

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
                asked = J.cancel_job(ctx, job.id)
                assert asked.status == "cancelling"
                assert J.cancel_job(ctx, job.id).status == "cancelling"  # asking twice: same
        published.append("m-1")
        return SimpleNamespace(id="m-1", epsilon=2.0, delta=1e-5)

    J.run_training_job(job.id, ctx, train=fake_train)  # no exception for a cancel
    done = J.get_job(ctx.engine, job.id)
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


def test_a_cancel_after_training_returned_is_too_late(ctx: J.JobContext) -> None:
    job, reservation = _training_job(ctx)

    def fake_train(config: Any, **kwargs: Any) -> Any:
        assert not kwargs["should_stop"]()
        assert J.cancel_job(ctx, job.id).status == "cancelling"  # while publishing
        return SimpleNamespace(id="m-1", epsilon=2.0, delta=1e-5)

    J.run_training_job(job.id, ctx, train=fake_train)
    done = J.get_job(ctx.engine, job.id)
    assert done is not None and done.status == "succeeded" and done.result is not None
    assert done.result["model_id"] == "m-1"
    assert _entry_status(ctx.ledger, reservation.id) == "committed"
    with pytest.raises(J.JobStateError):
        J.cancel_job(ctx, job.id)
    assert J.get_job(ctx.engine, job.id) == done


class _CancellingEncoder:
    """Asks for its own job to be cancelled while it encodes (as the API would)."""

    dim = 4

    def __init__(self, ctx: J.JobContext, job_id: str) -> None:
        self.ctx, self.job_id, self.calls = ctx, job_id, 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        assert J.cancel_job(self.ctx, self.job_id).status == "cancelling"
        return np.ones((len(texts), self.dim), np.float32)


def test_cancel_a_running_embedding_job_leaves_no_result(
    ctx: J.JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    import models.encoder

    job = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 600})
    inp = J.write_embedding_input(ctx, job.id, ["text"] * 600)  # two chunks of 512
    encoder = _CancellingEncoder(ctx, job.id)
    monkeypatch.setattr(models.encoder, "get_encoder", lambda *a, **k: encoder)
    J.run_embedding_job(job.id, ctx)  # no exception for a cancel
    done = J.get_job(ctx.engine, job.id)
    assert done is not None and done.status == "cancelled" and done.result is None
    assert encoder.calls == 1  # stopped between chunks
    assert not inp.exists() and list(ctx.job_dir(job.id).iterdir()) == []
    assert J.result_path(ctx, done) is None


def test_cancel_a_queued_embedding_job_deletes_its_texts(ctx: J.JobContext) -> None:
    job = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={"count": 1})
    inp = J.write_embedding_input(ctx, job.id, ["private words"])
    assert J.cancel_job(ctx, job.id).status == "cancelled"
    assert not inp.exists()
    J.run_embedding_job(job.id, ctx)  # the task, delivered later: nothing
    assert J.get_job(ctx.engine, job.id).status == "cancelled"  # type: ignore[union-attr]
    assert not ctx.job_dir(job.id).joinpath(J.RESULT_FILE).exists()


def test_cancel_of_a_final_or_missing_job_changes_nothing(ctx: J.JobContext) -> None:
    ok = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    J.mark_running(ctx.engine, ok.id)
    J.mark_succeeded(ctx.engine, ok.id, {"count": 0})
    bad = J.create_job(ctx.engine, kind="embedding", created_by="ap_1", params={})
    J.mark_failed(ctx.engine, bad.id, "broken")
    for jid in (ok.id, bad.id):
        before = J.get_job(ctx.engine, jid)
        with pytest.raises(J.JobStateError):
            J.cancel_job(ctx, jid)
        assert J.get_job(ctx.engine, jid) == before
    with pytest.raises(J.JobStateError):
        J.cancel_job(ctx, "emb_missing")


def test_cancelling_jobs_are_failed_at_worker_start_and_stay_charged(ctx: J.JobContext) -> None:
    job, reservation = _training_job(ctx)
    J.mark_running(ctx.engine, job.id)
    assert J.cancel_job(ctx, job.id).status == "cancelling"
    assert fail_orphaned(ctx, every_running=True) == [job.id]
    assert J.get_job(ctx.engine, job.id).status == "failed"  # type: ignore[union-attr]
    assert _entry_status(ctx.ledger, reservation.id) == "reserved"


def test_a_cancel_through_the_job_table_stops_a_real_training_within_its_step(
    ctx: J.JobContext, ingested: Any, tiny_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real trainer on the tiny corpus, every sender in each step (q = 1); the admin's
    cancel (a ``cancelling`` row, as the API writes it) arrives while the first step's second
    sender is prepared: the worker stops at the next sender, publishes nothing, and keeps the
    charge for the one step begun."""
    import models.trainer as T
    from mechanisms.ledger import Spend
    from models.charge import charge_training
    from models.registry import BASE_ID, ModelRegistry
    from models.training import TrainingConfig, plan_training

    monkeypatch.setattr(T, "STOP_POLL_S", 0.0)  # poll between every two senders
    config = TrainingConfig(
        **{**tiny_config.to_dict(), "expected_senders_per_batch": 20, "engine": "microbatch"}
    )
    event = plan_training(config)
    assert event.sampling_rate == 1.0 and event.steps == 2
    ledger: InMemoryLedger = ctx.ledger
    ledger.set_corpus_cap(Budget(epsilon=50.0, delta=1e-3))
    reservation = charge_training(ledger, event, principal_id="ad_1")
    params = {"config": config.to_dict(), "snapshot_id": None, "event": event.to_dict(),
              "activate": True}
    job = J.create_job(ctx.engine, kind="training", created_by="ad_1", params=params,
                       reservation_id=reservation.id)
    prepared: list[int] = []
    real_prepare = T.Trainer._prepare

    def prepare(self: Any, sequences: Any) -> Any:
        prepared.append(1)
        if len(prepared) == 2:
            assert J.cancel_job(ctx, job.id).status == "cancelling"
        return real_prepare(self, sequences)

    monkeypatch.setattr(T.Trainer, "_prepare", prepare)
    J.run_training_job(job.id, ctx)
    done = J.get_job(ctx.engine, job.id)
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
