"""The one path every query takes: price, reserve, compute, release, commit, audit.

``run_charged`` is the only way an answer computed from the corpus may leave the service:

1. the query is normalised (canonical JSON) and hashed;
2. replay: the same normalised query by the same analyst on the same snapshot returns the
   stored answer, marked ``"replay": true``, at no cost (no noise is drawn again); identical
   requests that arrive together are serialised by a claim on that key (``query_claims``),
   so only one of them is charged and the others replay its answer;
3. dry run: the price and the predicted interval, with nothing charged or computed;
4. reserve the cost against the analyst's budget and the corpus-wide cap in one transaction
   (BudgetExhaustedError, with the remaining budget, is raised here: no data touched yet);
5. compute (private data is read and noise drawn only now). Everything that can fail for a
   reason known from public inputs was checked before step 4 (``queries/release.price``);
   if compute fails anyway, the failure could depend on the data, so the reservation is
   committed (charged) and one fixed error (``query_failed``, the same status, body and
   headers whatever failed) is returned;
6. audit (the released values) then commit; the answer is returned with its cost and the
   budget left. A crash anywhere after 4 leaves the reservation charged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from flask import current_app

from mechanisms.errors import BudgetExhaustedError
from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Ledger, Spend, UnknownReservationError
from service.errors import APIError
from service.ledger import audit
from service.ledger.sql import SqlLedger

log = logging.getLogger("privtext.charging")


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


#: A claim (see ``audit.claim``) older than this was left by a process that died.
CLAIM_STALE_S = 600.0
#: How long an identical concurrent request waits for the first one's answer before 409.
CLAIM_WAIT_S = 20.0
_CLAIM_POLL_S = 0.02

#: The one answer to every failure after the corpus was read: its status, body and headers
#: are the same whatever failed and whatever the data (only the request id differs).
QUERY_FAILED = (
    500,
    "query_failed",
    "The query failed after the corpus was read. Its cost was charged; the error says nothing "
    "about the data.",
)


def query_failed() -> APIError:
    return APIError(*QUERY_FAILED)


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
    mapping; it is called at most once, and only after the reservation succeeded. It reads
    the private data, so everything that can fail for a reason decided from public inputs
    must have been checked before this call.

    Raises BudgetExhaustedError before anything is computed when the budget does not afford
    ``event``; APIError 409 ``query_in_progress`` (nothing charged) when an identical query
    by the same principal is still being answered after ``CLAIM_WAIT_S``; and, when
    ``compute`` (or anything after it) fails, commits the reservation and raises the one
    ``query_failed`` error (an exception that is not an ``Exception``, such as the SystemExit
    of a worker timeout, is re-raised as it is, after the commit).
    """
    pid = principal if isinstance(principal, str) else principal.id
    ledger = ledger or get_ledger()
    engine = current_app.extensions["privtext"].engine
    normalised = audit.normalise_query(query)
    qhash = audit.query_hash(normalised)
    common = {"snapshot_id": snapshot_id, "query_hash": qhash}
    key = {"principal_id": pid, "snapshot_id": snapshot_id, "qhash": qhash}

    def replay(stored: dict[str, Any]) -> dict[str, Any]:
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

    stored = audit.find_replay(engine, **key)
    if stored is not None:
        return replay(stored)

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

    # The replay promise under concurrency: one request per key reserves and computes; an
    # identical request waits for its audit row and replays it (or takes over after a failure).
    deadline = time.monotonic() + CLAIM_WAIT_S
    while not audit.claim(engine, **key, stale_after_s=CLAIM_STALE_S):
        time.sleep(_CLAIM_POLL_S)
        stored = audit.find_replay(engine, **key)
        if stored is not None:
            return replay(stored)
        if time.monotonic() > deadline:
            raise APIError(
                409,
                "query_in_progress",
                "The same query is being answered for you right now; retry to get its answer "
                "at no cost.",
                headers={"Retry-After": "1"},
            )
    try:
        # The claim was free; a request that held it may have released its answer just now.
        stored = audit.find_replay(engine, **key)
        if stored is not None:
            return replay(stored)
        return _reserve_and_release(
            pid, ledger, engine, normalised, snapshot_id, event, compute, common
        )
    finally:
        audit.unclaim(engine, **key)


def _reserve_and_release(
    pid: str,
    ledger: Ledger,
    engine: Any,
    normalised: str,
    snapshot_id: str,
    event: PrivacyEvent,
    compute: Callable[[], Mapping[str, Any]],
    common: dict[str, Any],
) -> dict[str, Any]:
    # The cost as reported is computed before the reservation: if that fails, nothing is held.
    current = ledger.get_budget(pid)
    cost = _cost(event, current.delta if current is not None else 0.0)
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

    # From here on the private data is (or may be) read: whatever happens, the reservation
    # is charged (PRIVACY.md, "The ledger"): a refunded or data-shaped failure would answer a
    # question about the data for free.
    try:
        released = dict(compute())
        # Audit first, then commit: a crash in between leaves the entry reserved (still
        # charged) and the audit row naming it, never a release without a charge.
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
    except BaseException as exc:
        _charge_failure(ledger, engine, pid, snapshot_id, normalised, cost, reservation.id)
        if isinstance(exc, Exception):
            raise query_failed() from None
        raise
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


def _charge_failure(
    ledger: Ledger,
    engine: Any,
    pid: str,
    snapshot_id: str,
    normalised: str,
    cost: dict[str, Any],
    reservation_id: str,
) -> None:
    """Commit a reservation whose computation failed, and audit the failure (best effort: if
    the store is down, the reservation stays reserved, which is charged all the same)."""
    log.error(
        "query failed after the corpus was read; its reservation is committed",
        exc_info=True,
        extra={"reservation_id": reservation_id},
    )
    try:
        ledger.commit(reservation_id)
    except UnknownReservationError:
        pass  # already committed (the failure came after the commit)
    except Exception:  # noqa: BLE001 - a reserved entry is charged already
        log.exception("could not commit a failed query's reservation (it stays reserved)")
    try:
        audit.record(
            engine,
            principal_id=pid,
            status="failed",
            snapshot_id=snapshot_id,
            normalised_query=normalised,
            cost=cost,
            released=None,
            reservation_id=reservation_id,
        )
    except Exception:  # noqa: BLE001
        log.exception("could not audit a failed query")
