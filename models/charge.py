"""Charging a training run to the ledger: the one path, from its price to its settlement.

A trained model is a release about every sender in the corpus, and it is no analyst's: it is
charged to the corpus-wide cap alone (``Ledger.reserve_corpus``), recorded under the
administrator who asked for it. :class:`TrainingCharge` is the only code that charges a
training, in the ledger's usual order; the HTTP route does the first half, the job body
(``models.job_bodies``) the second:

    charge = TrainingCharge.price(ledger, config, principal_id=admin)  # public inputs only
    charge.reserve()                      # refused here (BudgetExhaustedError): nothing read
    ... the job is recorded (with the reservation and the event) and queued; in the worker:
    charge = TrainingCharge.of_job(ledger, job)
    version = charge.train(config, data_dir=..., ...)           # settles however it ends

:meth:`TrainingCharge.settle` is the one place that decides how a training ends on the ledger:

* it returned (a version was published): the reservation is committed;
* it raised before its first read of the corpus (``run.corpus_read is False``: config,
  plan, base model; a cancel there too): refunded, since only public inputs were touched;
* it was cancelled after the read: charged for the steps begun (at least one), at the
  planned sampling rate and noise multiplier: a smaller event is reserved and committed
  first, then the full reservation refunded, so the ledger never holds less than the work
  done; when the cap cannot hold both for that moment, the full reservation is committed;
* anything else after the read, or when ``train`` did not say (``corpus_read`` None): the
  full reservation is committed, whatever the error (an out-of-memory error, MemoryError,
  SystemExit, a bug). Whether a training over private data fails can depend on that data,
  so a refunded failure would be a free answer; the full charge is also the conservative
  one, since a failure reveals something the steps' noise does not cover.

A job cancelled before it ran, or one that could not be recorded or queued, is given back
with :meth:`TrainingCharge.refund` (nothing was trained or read).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import models.training as training
from jobs.table import Job
from mechanisms.errors import BudgetExhaustedError
from mechanisms.events import PrivacyEvent
from mechanisms.ledger import CORPUS, Ledger, Reservation
from models.training import TrainingCancelled, TrainingConfig, TrainingRun

__all__ = ["Settlement", "TrainingCharge", "UnchargedTrainingError"]

log = logging.getLogger("privtext.jobs")


class UnchargedTrainingError(RuntimeError):
    """A training job without a ledger or a reservation: it is never run uncharged."""


@dataclass(frozen=True)
class Settlement:
    """How a training's reservation ended: ``status`` "committed" or "refunded", the
    reservation that now holds the charge, its event and the steps it covers (0: refunded)."""

    status: str
    reservation_id: str
    event: PrivacyEvent
    steps: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reservation_id": self.reservation_id,
            "event": self.event.to_dict(),
            "steps": self.steps,
        }


@dataclass
class TrainingCharge:
    """One training's charge: ``event`` (its price), then its ``reservation``, then its
    ``settlement``. ``run`` is what the training reported (nothing read until
    :meth:`train` calls it)."""

    ledger: Ledger
    principal_id: str
    event: PrivacyEvent
    reservation: Reservation | None = None
    settlement: Settlement | None = None
    run: TrainingRun = field(default_factory=lambda: TrainingRun(corpus_read=False))

    @classmethod
    def price(cls, ledger: Ledger, config: TrainingConfig, *, principal_id: str) -> TrainingCharge:
        """The charge of training ``config`` (``models.training.plan_training``: from public
        inputs only), not reserved yet. Raises InvalidParameterError for a config that has no
        valid plan."""
        return cls(ledger, principal_id, training.plan_training(config))

    @classmethod
    def of_job(cls, ledger: Ledger | None, job: Job) -> TrainingCharge:
        """The charge a training job was recorded with (reserved when it was queued). Raises
        UnchargedTrainingError when there is no ledger or the job has no reservation."""
        if ledger is None or job.reservation_id is None:
            raise UnchargedTrainingError(f"training job {job.id} has no reservation")
        event = PrivacyEvent.from_dict(job.params["event"])
        reservation = Reservation(
            job.reservation_id, job.created_by, event, job.created_at, scope=CORPUS
        )
        return cls(ledger, job.created_by, event, reservation)

    @property
    def reserved(self) -> Reservation:
        assert self.reservation is not None, "the training's charge is not reserved"
        return self.reservation

    def reserve(self, *, require_cap: bool = True) -> TrainingCharge:
        """Reserve the event against the corpus-wide cap; returns the charge.

        Raises BudgetExhaustedError when the cap cannot afford it, or (``require_cap``, the
        default) when no cap is set: training without a cap would be an unbounded release.
        """
        if require_cap and self.ledger.corpus_cap() is None:
            raise BudgetExhaustedError(
                "no corpus-wide cap is set: training is refused", remaining_epsilon=0.0
            )
        self.reservation = self.ledger.reserve_corpus(self.principal_id, self.event)
        return self

    def refund(self) -> Settlement:
        """Give the reservation back: only for a training that never ran."""
        self.ledger.refund(self.reserved.id)
        self.settlement = Settlement("refunded", self.reserved.id, self.event, 0)
        return self.settlement

    def train(
        self,
        config: TrainingConfig | Mapping[str, Any],
        *,
        train: Callable[..., Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Train ``config`` (or its dict, as a job stores it) with this charge's event and
        settle (:meth:`settle`) however it ends; returns what ``train`` returned (the
        :class:`~models.registry.ModelVersion`) or re-raises what it raised.

        ``train`` defaults to ``models.training.train`` and gets ``kwargs``, the event and
        :attr:`run`; it refuses if the plan no longer matches the event. A config that does
        not load is refunded (nothing was read); a ``train`` that does not fill in the run is
        taken to have read the corpus. A ledger error while settling a failure is logged and
        leaves the reservation reserved, which the cap counts as spent (never refunded by
        accident); the failure itself is re-raised.
        """
        try:
            if not isinstance(config, TrainingConfig):
                config = TrainingConfig.from_dict(dict(config))
            train_fn = train if train is not None else training.train
            self.run.corpus_read = None  # train() says when it reads; one that does not is charged
            version = train_fn(config, event=self.event, run=self.run, **kwargs)
        except BaseException as exc:
            try:
                self.settle(exc)
            except Exception:
                log.exception("could not settle the training's reservation")
            raise
        self.settle(None)
        return version

    def settle(self, error: BaseException | None) -> Settlement:
        """Commit or refund the reservation by :attr:`run` and the rules in the module
        docstring. ``error`` is what ``train`` raised (None: it returned). Ledger errors
        propagate; the reservation then stays reserved, which the cap counts as spent."""
        run, full = self.run, self.event
        planned_steps = int(full.steps or 1)
        if error is not None and run.corpus_read is False:
            return self.refund()
        if isinstance(error, TrainingCancelled) and run.corpus_read is True:
            steps = max(1, run.steps_started)
            partial = self._charge_steps(steps) if steps < planned_steps else None
            if partial is not None:
                return partial
        self.ledger.commit(self.reserved.id)
        self.settlement = Settlement("committed", self.reserved.id, full, planned_steps)
        return self.settlement

    def _charge_steps(self, steps: int) -> Settlement | None:
        """Replace the reservation by one for its first ``steps`` steps: reserve and commit
        the smaller event, then refund the full one (never less on the ledger than the work
        done). None, with nothing changed, when the cap cannot hold both at once."""
        full = self.event
        assert full.noise_multiplier is not None and full.sampling_rate is not None
        event = PrivacyEvent.subsampled_gaussian(
            noise_multiplier=full.noise_multiplier, sampling_rate=full.sampling_rate, steps=steps
        )
        try:
            smaller = self.ledger.reserve_corpus(self.principal_id, event)
        except BudgetExhaustedError:
            return None
        self.ledger.commit(smaller.id)
        self.ledger.refund(self.reserved.id)
        self.settlement = Settlement("committed", smaller.id, event, steps)
        return self.settlement
