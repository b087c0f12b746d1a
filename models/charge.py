"""Charging a training run to the ledger, against the corpus-wide cap.

A trained model is a release about every sender in the corpus, and it is no analyst's: it is
charged to the corpus-wide cap alone (``Ledger.reserve_corpus``), recorded under the
administrator who asked for it. The order is the ledger's usual one:

    event = plan_training(config)          # public inputs only: nothing is read
    reservation = charge_training(ledger, event, principal_id=admin)   # refuse here
    run = TrainingRun()
    try:  version = train(config, ..., event=event, run=run)
    except BaseException as exc: settle_training(ledger, reservation, run, exc); raise
    settle_training(ledger, reservation, run, None)                    # commit

:func:`settle_training` is the one place that decides how a training ends on the ledger:

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

:func:`run_charged_training` does all of it for a training run inline.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corpus.store import SnapshotNotFound, SnapshotStore
from mechanisms.errors import BudgetExhaustedError
from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Ledger, Reservation
from models.training import TrainingCancelled, TrainingRun

__all__ = [
    "Settlement",
    "charge_training",
    "commit_training",
    "refund_training",
    "run_charged_training",
    "settle_training",
]


def charge_training(
    ledger: Ledger, event: PrivacyEvent, *, principal_id: str, require_cap: bool = True
) -> Reservation:
    """Reserve ``event`` against the corpus-wide cap.

    Raises BudgetExhaustedError when the cap cannot afford it, or (``require_cap``, the
    default) when no cap is set: training without a cap would be an unbounded release.
    """
    if require_cap and ledger.corpus_cap() is None:
        raise BudgetExhaustedError(
            "no corpus-wide cap is set: training is refused", remaining_epsilon=0.0
        )
    return ledger.reserve_corpus(principal_id, event)


def commit_training(ledger: Ledger, reservation: Reservation) -> None:
    """The reservation becomes a committed release."""
    ledger.commit(reservation.id)


def refund_training(ledger: Ledger, reservation: Reservation) -> None:
    """Give the reservation back: only for a training that never read the corpus."""
    ledger.refund(reservation.id)


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


def settle_training(
    ledger: Ledger,
    reservation: Reservation,
    run: TrainingRun,
    error: BaseException | None,
) -> Settlement:
    """Commit or refund a training's reservation by the rules in the module docstring.

    ``error`` is what ``train`` raised (None: it returned). Ledger errors propagate; the
    reservation then stays reserved, which the cap counts as spent.
    """
    full = reservation.event
    planned_steps = int(full.steps or 1)
    if error is not None and run.corpus_read is False:
        refund_training(ledger, reservation)
        return Settlement("refunded", reservation.id, full, 0)
    if isinstance(error, TrainingCancelled) and run.corpus_read is True:
        steps = max(1, run.steps_started)
        if steps < planned_steps:
            partial = _charge_steps(ledger, reservation, steps)
            if partial is not None:
                return partial
    commit_training(ledger, reservation)
    return Settlement("committed", reservation.id, full, planned_steps)


def _charge_steps(ledger: Ledger, reservation: Reservation, steps: int) -> Settlement | None:
    """Replace the reservation by one for its first ``steps`` steps: reserve and commit the
    smaller event, then refund the full one (never less on the ledger than the work done).
    None, with nothing changed, when the cap cannot hold both at once."""
    full = reservation.event
    assert full.noise_multiplier is not None and full.sampling_rate is not None
    event = PrivacyEvent.subsampled_gaussian(
        noise_multiplier=full.noise_multiplier, sampling_rate=full.sampling_rate, steps=steps
    )
    try:
        smaller = ledger.reserve_corpus(reservation.principal_id, event)
    except BudgetExhaustedError:
        return None
    ledger.commit(smaller.id)
    ledger.refund(reservation.id)
    return Settlement("committed", smaller.id, event, steps)


def run_charged_training(
    ledger: Ledger,
    config: Any,
    *,
    principal_id: str,
    data_dir: str | os.PathLike[str],
    snapshot_id: str | None = None,
    progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    activate: bool = True,
    require_cap: bool = True,
) -> Any:
    """Plan, charge, train, publish, settle (:func:`settle_training`). Returns the
    :class:`~models.registry.ModelVersion`. Raises BudgetExhaustedError before any text is
    read when the cap cannot afford the training; re-raises what training raised, once the
    reservation is settled."""
    from models.training import plan_training, train

    store = SnapshotStore(data_dir)
    info = store.get(snapshot_id) if snapshot_id else store.live()
    if info is None:
        raise SnapshotNotFound("no live snapshot")
    event = plan_training(config)
    reservation = charge_training(ledger, event, principal_id=principal_id, require_cap=require_cap)
    run = TrainingRun()
    try:
        version = train(
            config,
            data_dir=data_dir,
            snapshot_id=info.id,
            progress=progress,
            should_stop=should_stop,
            event=event,
            activate=activate,
            run=run,
        )
    except BaseException as exc:
        settle_training(ledger, reservation, run, exc)
        raise
    settle_training(ledger, reservation, run, None)
    return version
