"""The one path every query takes: price, reserve, compute, release, commit, audit.

``run_charged`` is the only way an answer computed from the corpus may leave the service:

1. the query is normalised (canonical JSON) and hashed;
2. replay: the same normalised query by the same analyst on the same snapshot returns the
   stored answer, marked ``"replay": true``, at no cost (no noise is drawn again);
3. dry run: the price and the predicted interval, with nothing charged or computed;
4. reserve the cost against the analyst's budget and the corpus-wide cap in one transaction
   (BudgetExhaustedError, with the remaining budget, is raised here: no data touched yet);
5. compute (private data is read and noise drawn only now); if it raises, nothing has been
   released, so the reservation is refunded and the error re-raised;
6. audit (the released values) then commit; the answer is returned with its cost and the
   budget left. A crash anywhere after 4 leaves the reservation charged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from flask import current_app

from mechanisms.errors import BudgetExhaustedError
from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Ledger, Spend
from service.ledger import audit
from service.ledger.sql import SqlLedger


class HasId(Protocol):
    @property
    def id(self) -> str: ...


def get_ledger() -> Ledger:
    """This process's ledger over the app's state store (created once per worker)."""
    svc = current_app.extensions["privtext"]
    ledger = svc.extra.get("ledger")
    if ledger is None:
        ledger = svc.extra["ledger"] = SqlLedger(svc.engine)
    return ledger  # type: ignore[no-any-return]


def _cost(event: PrivacyEvent, delta: float) -> dict[str, Any]:
    return {
        "event": event.to_dict(),
        "epsilon": Spend.of(event).epsilon(delta),
        "delta": delta,
        "accounting": "rdp+basic (admission bound) at the analyst's delta",
    }


ZERO_COST: dict[str, Any] = {"event": None, "epsilon": 0.0, "delta": 0.0}


def run_charged(
    principal: HasId | str,
    *,
    query: Mapping[str, Any],
    snapshot_id: str,
    event: PrivacyEvent,
    compute: Callable[[], Mapping[str, Any]],
    dry_run: bool = False,
    predicted: Mapping[str, Any] | None = None,
    ledger: Ledger | None = None,
) -> dict[str, Any]:
    """Answer ``query`` through the ledger; see the module docstring for the steps.

    ``compute`` returns the released answer (noisy values, interval, ...) as a JSON-able
    mapping; it is called at most once, and only after the reservation succeeded.
    Raises BudgetExhaustedError before anything is computed when the budget does not afford
    ``event``; re-raises whatever ``compute`` raised after refunding.
    """
    pid = principal if isinstance(principal, str) else principal.id
    ledger = ledger or get_ledger()
    engine = current_app.extensions["privtext"].engine
    normalised = audit.normalise_query(query)
    qhash = audit.query_hash(normalised)
    common = {"snapshot_id": snapshot_id, "query_hash": qhash}

    stored = audit.find_replay(engine, principal_id=pid, snapshot_id=snapshot_id, qhash=qhash)
    if stored is not None:
        if not dry_run:
            audit.record(
                engine,
                principal_id=pid,
                status="replay",
                snapshot_id=snapshot_id,
                normalised_query=normalised,
                cost=ZERO_COST,
                released=stored,
            )
        budget = ledger.remaining(pid, tight=False).to_dict()
        return {
            **stored,
            **common,
            "replay": True,
            "dry_run": dry_run,
            "cost": ZERO_COST,
            "budget": budget,
        }

    if dry_run:
        quote = ledger.quote(pid, event)
        delta = quote.remaining.delta
        return {
            **common,
            "replay": False,
            "dry_run": True,
            "cost": {**_cost(event, delta), "marginal_epsilon": quote.marginal_epsilon},
            "affordable": quote.affordable,
            "predicted": dict(predicted) if predicted is not None else None,
            "budget": quote.remaining.to_dict(),
        }

    try:
        reservation = ledger.reserve(pid, event)
    except BudgetExhaustedError:
        audit.record(
            engine,
            principal_id=pid,
            status="refused",
            snapshot_id=snapshot_id,
            normalised_query=normalised,
            cost=ZERO_COST,
            released=None,
        )
        raise

    try:
        released = dict(compute())
    except BaseException:
        # Nothing left the process: the reservation may be returned. Caution: if a failure
        # could depend on the private data, the refund (and the error the analyst sees)
        # would tell one bit about it; compute functions must fail only for data-independent
        # reasons (the query code validates everything before reading the corpus).
        ledger.refund(reservation.id)
        audit.record(
            engine,
            principal_id=pid,
            status="failed",
            snapshot_id=snapshot_id,
            normalised_query=normalised,
            cost=ZERO_COST,
            released=None,
            reservation_id=reservation.id,
        )
        raise

    current = ledger.get_budget(pid)
    cost = _cost(event, current.delta if current is not None else 0.0)
    # Audit first, then commit: a crash in between leaves the entry reserved (still charged)
    # and the audit row naming it, never a release without a charge.
    audit_id = audit.record(
        engine,
        principal_id=pid,
        status="released",
        snapshot_id=snapshot_id,
        normalised_query=normalised,
        cost=cost,
        released=released,
        reservation_id=reservation.id,
    )
    ledger.commit(reservation.id)
    remaining = ledger.remaining(pid, tight=False)
    return {
        **released,
        **common,
        "replay": False,
        "dry_run": False,
        "cost": cost,
        "budget": remaining.to_dict(),
        "audit_id": audit_id,
    }
