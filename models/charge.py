"""Charging a training run to the ledger, against the corpus-wide cap.

A trained model is a release about every sender in the corpus, and it is no analyst's: it is
charged to the corpus-wide cap alone (``Ledger.reserve_corpus``), recorded under the
administrator who asked for it. The order is the ledger's usual one:

    event = plan_training(config, n_senders=...)     # before any text is read
    reservation = charge_training(ledger, event, principal_id=admin)   # refuse here
    try:  version = train(config, ..., event=event)
    except BaseException: refund_training(ledger, reservation); raise  # nothing published
    commit_training(ledger, reservation)

:func:`run_charged_training` does exactly that. Refunding after a failure is sound because a
failed or cancelled training publishes nothing (the staging directory is removed): no output
of the noisy computation leaves the process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from mechanisms.errors import BudgetExhaustedError
from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Ledger, Reservation

__all__ = ["charge_training", "commit_training", "refund_training", "run_charged_training"]


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
    """The model was published: the reservation becomes a committed release."""
    ledger.commit(reservation.id)


def refund_training(ledger: Ledger, reservation: Reservation) -> None:
    """The training failed and published nothing: give the reservation back."""
    ledger.refund(reservation.id)


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
    """Plan, charge, train, publish, commit (refund when training fails). Returns the
    :class:`~models.registry.ModelVersion`. Raises BudgetExhaustedError before any text is
    read when the cap cannot afford the training."""
    from models.data import count_senders
    from models.training import plan_training, train
    from service.corpus.store import SnapshotNotFound, SnapshotStore

    store = SnapshotStore(data_dir)
    info = store.get(snapshot_id) if snapshot_id else store.live()
    if info is None:
        raise SnapshotNotFound("no live snapshot")
    event = plan_training(config, n_senders=count_senders(data_dir, info.id))
    reservation = charge_training(ledger, event, principal_id=principal_id, require_cap=require_cap)
    try:
        version = train(
            config,
            data_dir=data_dir,
            snapshot_id=info.id,
            progress=progress,
            should_stop=should_stop,
            event=event,
            activate=activate,
        )
    except BaseException:
        refund_training(ledger, reservation)
        raise
    commit_training(ledger, reservation)
    return version
