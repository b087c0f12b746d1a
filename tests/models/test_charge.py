"""Charging training to the corpus-wide cap (``models.charge.TrainingCharge``, the one path
the HTTP route and the job body share): ``Ledger.reserve_corpus`` on every backend, the price
from public inputs and the refusal before any text is read, and how a training's reservation
is settled: refunded only when the corpus was never read, charged in full for any failure
after the read, charged for the steps begun when cancelled. The failures and the cancel run
through the real job body (``models.job_bodies.run_training_job``) and the real trainer."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs import states as S
from jobs.table import Job
from mechanisms.errors import BudgetExhaustedError
from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Budget, Ledger, UnknownReservationError
from mechanisms.ledger_memory import InMemoryLedger
from models import job_bodies as B
from models.charge import TrainingCharge
from models.job_bodies import ModelJobContext
from models.registry import BASE_ID, ModelRegistry
from models.training import TrainingCancelled, TrainingConfig, TrainingRun, plan_training

EVENT = PrivacyEvent.subsampled_gaussian(noise_multiplier=1.0, sampling_rate=0.01, steps=100)


def test_reserve_corpus_charges_the_cap_only(any_ledger: Ledger, make_analyst) -> None:  # type: ignore[no-untyped-def]
    admin = make_analyst(any_ledger, "admin")
    any_ledger.set_corpus_cap(Budget(10.0, 1e-5))
    before = any_ledger.corpus_remaining().spent_epsilon
    charge = TrainingCharge(any_ledger, admin, EVENT).reserve()
    spent = any_ledger.corpus_remaining().spent_epsilon
    assert spent > before and spent == pytest.approx(EVENT_RDP_EPS(), rel=1e-6)
    assert any_ledger.get_budget(admin) is None  # no analyst budget was needed or touched
    charge.refund()
    assert any_ledger.corpus_remaining().spent_epsilon == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(UnknownReservationError):
        charge.refund()
    TrainingCharge(any_ledger, admin, EVENT).reserve().settle(None)  # returned: committed
    assert any_ledger.corpus_remaining().spent_epsilon == pytest.approx(spent, rel=1e-9)
    assert [e.status for e in any_ledger.history(admin)] == ["committed", "refunded"]


def EVENT_RDP_EPS() -> float:  # noqa: N802 - a constant computed lazily
    from mechanisms.ledger import Spend

    return Spend.of(EVENT).epsilon(1e-5)


# A small training that stays, and a large one whose RDP curve dp-accounting leaves infinite at
# the lowest orders (its series does not converge there): the events of a real session.
SMALL = PrivacyEvent.subsampled_gaussian(
    noise_multiplier=0.3376484289730087, sampling_rate=8 / 1315, steps=2
)
LARGE = PrivacyEvent.subsampled_gaussian(
    noise_multiplier=1.8439745610393274, sampling_rate=256 / 1315, steps=200
)


def test_refunding_an_event_with_infinite_orders_never_lowers_what_stays(
    any_ledger: Ledger, make_analyst
) -> None:  # type: ignore[no-untyped-def]
    """Found on a fresh ``make run``: a cancelled default training (refunded) left the corpus
    cap reading epsilon 0 after a committed one, because inf - inf became 0 at some orders."""
    from mechanisms.ledger import Spend

    admin = make_analyst(any_ledger, "admin")
    any_ledger.set_corpus_cap(Budget(50.0, 1e-5))
    TrainingCharge(any_ledger, admin, SMALL).reserve().settle(None)
    alone = any_ledger.corpus_remaining().spent_epsilon
    assert alone == pytest.approx(Spend.of(SMALL).epsilon(1e-5), rel=1e-9) and alone > 1
    TrainingCharge(any_ledger, admin, LARGE).reserve().refund()
    after = any_ledger.corpus_remaining().spent_epsilon
    assert after >= alone - 1e-9  # conservative where the orders are unknown, never lower
    assert after <= Spend.of(SMALL).epsilon(1e-5) * 1.5  # and the finite orders were refunded


def test_spend_subtraction_keeps_infinite_orders() -> None:
    from mechanisms.ledger import Spend

    inf = float("inf")
    a = Spend(rdp=(inf, 2.0, 3.0), curve_count=2, count=2)
    b = Spend(rdp=(inf, 1.0, 1.0), curve_count=1, count=1)
    assert (a - b).rdp == (inf, 1.0, 2.0)
    assert (a - a) == Spend()  # everything refunded: exactly nothing spent


def test_refused_when_the_cap_cannot_afford_it(any_ledger: Ledger, make_analyst) -> None:  # type: ignore[no-untyped-def]
    admin = make_analyst(any_ledger, "admin")
    with pytest.raises(BudgetExhaustedError, match="no corpus-wide cap"):
        TrainingCharge(any_ledger, admin, EVENT).reserve()
    any_ledger.set_corpus_cap(Budget(0.1, 1e-5))
    with pytest.raises(BudgetExhaustedError, match="cap is exhausted"):
        TrainingCharge(any_ledger, admin, EVENT).reserve()
    assert any_ledger.history(admin) == []
    assert any_ledger.corpus_remaining().spent_epsilon == 0.0


def test_analyst_refunds_still_work_beside_corpus_reservations(
    any_ledger: Ledger, make_analyst
) -> None:  # type: ignore[no-untyped-def]
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(1.0, 1e-6))
    any_ledger.set_corpus_cap(Budget(100.0, 1e-5))
    TrainingCharge(any_ledger, a, EVENT).reserve()
    r = any_ledger.reserve(a, PrivacyEvent.laplace(0.5))
    any_ledger.refund(r.id)
    assert any_ledger.remaining(a, tight=False).spent_epsilon == pytest.approx(0.0, abs=1e-12)


@pytest.mark.seconds
def test_training_refused_before_any_text_is_read(
    data_dir: Path,
    ingested,
    tiny_config: TrainingConfig,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    """The route's half of the path: priced from the config alone, refused by the cap, with
    nothing read, reserved or trained."""

    def no_reading(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the corpus text was read")

    monkeypatch.setattr("models.data.load_sender_examples", no_reading)
    monkeypatch.setattr("corpus.store.SnapshotStore.cursor", no_reading)
    ledger = InMemoryLedger()
    ledger.set_corpus_cap(Budget(1.0, 1e-3))  # a training at epsilon 8 does not fit
    charge = TrainingCharge.price(ledger, tiny_config, principal_id="ad_1")
    assert charge.event == plan_training(tiny_config) and charge.reservation is None
    with pytest.raises(BudgetExhaustedError):
        charge.reserve()
    assert charge.reservation is None and ledger.history("ad_1") == []
    assert [v.id for v in ModelRegistry(data_dir).list()] == [BASE_ID]


def _spent(ledger: Ledger) -> float:
    return ledger.corpus_remaining().spent_epsilon


def _queued_training(ctx: ModelJobContext, config: TrainingConfig) -> Job:
    """A training job as the route queues it: priced, reserved against a cap of 50, recorded
    (the live snapshot, the model activated once published)."""
    ctx.ledger.set_corpus_cap(Budget(50.0, 1e-3))
    charge = TrainingCharge.price(ctx.ledger, config, principal_id="ad_1").reserve()
    return B.create_training_job(ctx.engine, charge, config, snapshot_id=None, activate=True)


def _step_error(name: str) -> BaseException:
    """The error a training step raises, by name (torch imported only when a test runs, so
    that collecting this module for ``make test-fast`` does not load it)."""
    if name == "OutOfMemoryError":
        import torch

        return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return {
        "MemoryError": MemoryError(),
        "SystemExit": SystemExit(1),  # a gunicorn worker timeout
        "RuntimeError": RuntimeError("sender user3's message broke the tokenizer"),
    }[name]


@pytest.mark.parametrize(
    "error_name", ["OutOfMemoryError", "MemoryError", "SystemExit", "RuntimeError"]
)
@pytest.mark.torch
def test_a_training_that_fails_in_a_step_after_reading_is_charged(
    ctx: ModelJobContext,
    ingested,
    tiny_config: TrainingConfig,
    monkeypatch: pytest.MonkeyPatch,
    error_name: str,
) -> None:  # type: ignore[no-untyped-def]
    """Whether a step over private data fails (out of memory, a timeout) can depend on the
    data: once the corpus is read, the reservation is committed whatever is raised."""
    from models.trainer import Trainer

    error = _step_error(error_name)

    real_step = Trainer.dp_step

    def second_step_fails(self: Trainer, batch: object) -> None:
        if self.steps_done == 1:
            raise error
        real_step(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(Trainer, "dp_step", second_step_fails)
    job = _queued_training(ctx, tiny_config)
    with pytest.raises(type(error)):
        B.run_training_job(job.id, ctx)
    ledger = ctx.ledger
    assert [e.status for e in ledger.history("ad_1")] == ["committed"]  # not refunded
    (entry,) = ledger.history("ad_1")
    assert entry.event.steps == tiny_config.steps  # in full, though one step ran
    assert _spent(ledger) > 0 and ledger.corpus_remaining().reserved == 0
    failed = S.get_job(ctx.engine, job.id)
    assert failed is not None and (failed.status, failed.error) == ("failed", B.FAILED_AFTER_READ)
    assert failed.result == {"charge": {"status": "committed", "reservation_id": entry.id,
                                        "event": entry.event.to_dict(), "steps": 2}}
    assert ModelRegistry(ctx.data_dir).active().id == BASE_ID  # nothing published
    assert [v.id for v in ModelRegistry(ctx.data_dir).list()] == [BASE_ID]


@pytest.mark.torch
def test_a_training_that_fails_before_reading_is_refunded(
    ctx: ModelJobContext,
    ingested,
    tiny_config: TrainingConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # type: ignore[no-untyped-def]
    """Loading the public base model fails: only public inputs were touched, so the
    reservation goes back."""
    read: list[str] = []

    def no_base(*args: object, **kwargs: object) -> None:
        raise OSError("base model weights missing")

    def reader(*args: object, **kwargs: object) -> None:
        read.append("corpus")
        raise AssertionError("the corpus was read")

    monkeypatch.setattr("models.trainer.load_base", no_base)
    monkeypatch.setattr("models.data.load_sender_examples", reader)
    job = _queued_training(ctx, tiny_config)
    with pytest.raises(OSError):
        B.run_training_job(job.id, ctx)
    assert read == []
    assert [e.status for e in ctx.ledger.history("ad_1")] == ["refunded"]
    assert _spent(ctx.ledger) == 0.0
    failed = S.get_job(ctx.engine, job.id)
    assert failed is not None and failed.status == "failed" and "OSError" in (failed.error or "")
    assert ModelRegistry(ctx.data_dir).active().id == BASE_ID


@pytest.mark.torch
def test_a_cancelled_training_is_charged_for_the_steps_begun(
    ctx: ModelJobContext,
    ingested,
    tiny_config: TrainingConfig,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    from mechanisms.ledger import Spend

    job = _queued_training(ctx, tiny_config)
    done: list[float] = []
    real_progress = S.set_progress

    def progress(engine: object, job_id: str, fraction: float) -> None:
        real_progress(engine, job_id, fraction)  # type: ignore[arg-type]
        done.append(fraction)
        B.cancel_job(ctx, job_id)  # asked to stop once the first step finished

    monkeypatch.setattr(S, "set_progress", progress)
    B.run_training_job(job.id, ctx)  # a cancel raises nothing to the queue
    assert done == [0.5]
    ledger = ctx.ledger
    committed = [e for e in ledger.history("ad_1") if e.status == "committed"]
    assert sorted(e.status for e in ledger.history("ad_1")) == ["committed", "refunded"]
    (entry,) = committed
    full = next(e.event for e in ledger.history("ad_1") if e.status == "refunded")
    assert entry.event == PrivacyEvent.subsampled_gaussian(
        noise_multiplier=full.noise_multiplier,  # type: ignore[arg-type]
        sampling_rate=full.sampling_rate,  # type: ignore[arg-type]
        steps=1,
    )
    assert _spent(ledger) == pytest.approx(Spend.of(entry.event).epsilon(1e-3), rel=1e-9)
    assert ledger.corpus_remaining().reserved == 0
    cancelled = S.get_job(ctx.engine, job.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert cancelled.reservation_id == entry.id  # the job points at the charge that stays
    assert ModelRegistry(ctx.data_dir).active().id == BASE_ID


PLANNED = PrivacyEvent.subsampled_gaussian(noise_multiplier=1.0, sampling_rate=0.1, steps=10)


@pytest.mark.parametrize(
    ("run", "error", "status", "steps"),
    [
        (TrainingRun(corpus_read=True, steps_started=10), None, "committed", 10),
        (TrainingRun(corpus_read=False), RuntimeError(), "refunded", 0),
        (TrainingRun(corpus_read=False), TrainingCancelled(), "refunded", 0),
        (TrainingRun(corpus_read=True, steps_started=3), TrainingCancelled(), "committed", 3),
        (TrainingRun(corpus_read=True, steps_started=0), TrainingCancelled(), "committed", 1),
        (TrainingRun(corpus_read=True, steps_started=3), MemoryError(), "committed", 10),
        (TrainingRun(corpus_read=True, steps_started=3), KeyboardInterrupt(), "committed", 10),
        (TrainingRun(corpus_read=None, steps_started=3), TrainingCancelled(), "committed", 10),
        (TrainingRun(corpus_read=None), RuntimeError(), "committed", 10),
    ],
)
def test_settle(
    run: TrainingRun, error: BaseException | None, status: str, steps: int
) -> None:
    from mechanisms.ledger import Spend

    ledger = InMemoryLedger()
    ledger.set_corpus_cap(Budget(50.0, 1e-5))
    charge = TrainingCharge(ledger, "ad_1", PLANNED, run=run).reserve()
    reservation = charge.reserved
    settled = charge.settle(error)
    assert charge.settlement == settled
    assert (settled.status, settled.steps) == (status, steps)
    assert ledger.corpus_remaining().reserved == 0
    if status == "refunded":
        assert settled.reservation_id == reservation.id and _spent(ledger) == 0.0
        return
    assert settled.event.steps == steps
    assert [e.id for e in ledger.history("ad_1") if e.status == "committed"] == [
        settled.reservation_id
    ]
    assert _spent(ledger) == pytest.approx(Spend.of(settled.event).epsilon(1e-5), rel=1e-9)


def test_a_cancel_is_charged_in_full_when_the_cap_cannot_hold_both_for_a_moment() -> None:
    """The steps-begun charge is reserved before the full one is refunded (the ledger never
    holds less than the work done); when the cap has no room for that, the full stays."""
    from mechanisms.ledger import Spend

    ledger = InMemoryLedger()
    full = Spend.of(PLANNED).epsilon(1e-5)
    ledger.set_corpus_cap(Budget(full * 1.01, 1e-5))
    run = TrainingRun(corpus_read=True, steps_started=3)
    charge = TrainingCharge(ledger, "ad_1", PLANNED, run=run).reserve()
    reservation = charge.reserved
    settled = charge.settle(TrainingCancelled())
    assert (settled.status, settled.steps, settled.reservation_id) == (
        "committed",
        10,
        reservation.id,
    )
    assert [e.status for e in ledger.history("ad_1")] == ["committed"]
