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
   reason known from public inputs was checked before step 4 (``queries/pricing.price``);
   if compute fails anyway, the failure could depend on the data, so the reservation is
   committed (charged) and one fixed error (``query_failed``, the same status, body and
   headers whatever failed) is returned;
6. the answer is returned with its cost and the budget left (from the reservation's own
   transaction); then one more transaction writes the audit row (the released values),
   commits the reservation and releases the claim, after the response has been sent when
   serving HTTP. A crash anywhere after 4 leaves the reservation charged.

Steps 2 and 4 are one write transaction (``SqlLedger.reserve`` with a ``gate``): the replay
lookup, the claim, both budget checks and the reservation commit together, with one fsync.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from flask import Response, current_app, g, has_request_context

from mechanisms.errors import BudgetExhaustedError
from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Gated, Ledger, Remaining, Reservation, Spend
from service.errors import APIError
from service.store import audit, writes
from service.store.ledger import SqlLedger
from service.store.ratelimit import Counter

log = logging.getLogger("privtext.charging")


class HasId(Protocol):
    @property
    def id(self) -> str: ...


def get_ledger() -> Ledger:
    """This process's ledger over the app's state store (created once per worker)."""
    svc = current_app.extensions["privtext"]
    ledger = svc.ledger
    return ledger  # type: ignore[no-any-return]


def _cost(event: PrivacyEvent, delta: float) -> dict[str, Any]:
    return {
        "event": event.to_dict(),
        "epsilon": Spend.of(event).epsilon(delta),
        "delta": delta,
        "accounting": "rdp+basic (admission bound) at the analyst's delta",
    }


ZERO_COST: dict[str, Any] = {"event": None, "epsilon": 0.0, "delta": 0.0}


#: A claim (see ``audit.try_claim``) older than this was left by a process that died.
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


@dataclass(frozen=True)
class _Query:
    """Who asks what of which snapshot: the key of replays and claims, and of audit rows."""

    principal_id: str
    snapshot_id: str
    normalised: str
    qhash: str

    @property
    def key(self) -> dict[str, str]:
        return {
            "principal_id": self.principal_id,
            "snapshot_id": self.snapshot_id,
            "qhash": self.qhash,
        }

    def record(
        self,
        bind: Any,
        status: str,
        *,
        cost: Mapping[str, Any] = ZERO_COST,
        released: Mapping[str, Any] | None = None,
        reservation_id: str | None = None,
    ) -> None:
        audit.record(
            bind,
            principal_id=self.principal_id,
            status=status,
            snapshot_id=self.snapshot_id,
            normalised_query=self.normalised,
            cost=cost,
            released=released,
            reservation_id=reservation_id,
        )


def run_charged(
    principal: HasId | str,
    *,
    query: Mapping[str, Any],
    snapshot_id: str,
    event: PrivacyEvent,
    compute: Callable[[], Mapping[str, Any]],
    dry_run: bool = False,
    predicted: Mapping[str, Any] | None = None,
    ledger: SqlLedger | None = None,
    rate: Counter | None = None,
) -> dict[str, Any]:
    """Answer ``query`` through the ledger; see the module docstring for the steps.

    ``rate`` counts this request against the analyst's rate limit (429 ``rate_limited``,
    nothing charged, read or audited, beyond it): inside the reservation's transaction, or
    with the audit row of a refusal or a replay, or on its own for a dry run.

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
    ledger = ledger or get_ledger()  # type: ignore[assignment]
    assert isinstance(ledger, SqlLedger)
    normalised = audit.normalise_query(query)
    q = _Query(pid, snapshot_id, normalised, audit.query_hash(normalised))
    path = _Path(ledger, current_app.extensions["privtext"].engine, q, rate, dry_run)
    if dry_run:
        return path.quote(event, predicted)
    reserved = _reserve(ledger, path.engine, q, event, rate)
    if not isinstance(reserved, Reservation):
        return path.replay(reserved)
    return path.spend(reserved, event, compute)


@dataclass(frozen=True)
class _Path:
    """One request on the charged path: its ledger, state store, query and rate count."""

    ledger: SqlLedger
    engine: Any
    q: _Query
    rate: Counter | None
    dry_run: bool

    @property
    def common(self) -> dict[str, Any]:
        return {"snapshot_id": self.q.snapshot_id, "query_hash": self.q.qhash}

    def replay(self, stored: dict[str, Any]) -> dict[str, Any]:
        """The stored answer, at no cost (audited and rate-counted unless a dry run)."""
        if not self.dry_run:
            with writes.write(self.engine, durable=False) as conn:
                if self.rate is not None:
                    self.rate.take(conn)
                self.q.record(conn, "replay", released=stored)
        budget = answer_budget(self.ledger.remaining(self.q.principal_id, tight=False))
        return {
            **stored,
            **self.common,
            "replay": True,
            "dry_run": self.dry_run,
            "cost": ZERO_COST,
            "budget": budget,
        }

    def quote(self, event: PrivacyEvent, predicted: Mapping[str, Any] | None) -> dict[str, Any]:
        """The price and the predicted interval (or the stored answer): nothing charged."""
        if self.rate is not None:
            self.rate.hit(self.engine)
        stored = audit.find_replay(self.engine, **self.q.key)
        if stored is not None:
            return self.replay(stored)
        quote = self.ledger.quote(self.q.principal_id, event)
        delta = quote.remaining.delta
        return {
            **self.common,
            "replay": False,
            "dry_run": True,
            "cost": {**_cost(event, delta), "marginal_epsilon": quote.marginal_epsilon},
            "affordable": quote.affordable,
            "predicted": dict(predicted) if predicted is not None else None,
            "budget": answer_budget(quote.remaining),
        }

    def spend(
        self,
        reserved: Reservation,
        event: PrivacyEvent,
        compute: Callable[[], Mapping[str, Any]],
    ) -> dict[str, Any]:
        """Compute and answer. From here on the private data is (or may be) read: whatever
        happens, the reservation is charged (PRIVACY.md, "The ledger"; ``Ledger.charging``):
        a refunded or data-shaped failure would answer a question about the data for free."""
        q, remaining = self.q, reserved.remaining
        assert remaining is not None
        cost = _cost(event, remaining.delta)
        released: dict[str, Any] | None = None

        def records(txn: Any, outcome: str) -> None:
            """The audit row and the claim's release, in the commit's transaction."""
            kept = released if outcome == "released" else None
            q.record(txn.conn, outcome, cost=cost, released=kept, reservation_id=reserved.id)
            audit.unclaim(txn.conn, **q.key)

        def unsettled() -> None:  # a stale claim is taken over after CLAIM_STALE_S anyway
            audit.unclaim(self.engine, **q.key)

        try:
            with self.ledger.charging(
                reserved, also=records, durable=False, unsettled=unsettled
            ) as charge:
                released = dict(compute())
                json.dumps(released, sort_keys=True)  # as the audit row will: fails here
                # The commit, the audit row and the claim's release: one more transaction,
                # after the answer has been sent when serving HTTP (``defer``); the
                # reservation is durable already, and one never marked committed stays charged.
                settle = charge.defer()
        except Exception:
            log.error(
                "query failed after the corpus was read; its reservation is committed",
                exc_info=True,
                extra={"reservation_id": reserved.id},
            )
            raise query_failed() from None
        defer(settle)
        return {
            **released,
            **self.common,
            "replay": False,
            "dry_run": False,
            "cost": cost,
            "budget": answer_budget(remaining),
            # the audit row of this answer carries it as its reservation_id
            "audit_id": reserved.id,
        }


def _reserve(
    ledger: SqlLedger, engine: Any, q: _Query, event: PrivacyEvent, rate: Counter | None
) -> Reservation | dict[str, Any]:
    """One write transaction: the rate-limit count, the claim, the replay lookup, both budget
    checks and the reservation. Returns the reservation, or a stored answer to replay
    (waiting, up to ``CLAIM_WAIT_S``, while an identical request holds the claim).

    The claim is taken before the lookup: on PostgreSQL (READ COMMITTED) each statement sees
    what was committed before it, and the holder releases the claim in the same transaction
    that writes its audit row, so a lookup made after taking the claim cannot miss that row.
    Raises BudgetExhaustedError (after auditing the refusal and counting it against the rate
    limit), APIError 409, or APIError 429 (nothing written).
    """

    def gate(txn: Any) -> object | None:
        conn = txn.conn
        if rate is not None:
            rate.take(conn)
        if not audit.try_claim(conn, **q.key, stale_after_s=CLAIM_STALE_S):
            return _BUSY
        return audit.find_replay(conn, **q.key)

    deadline = time.monotonic() + CLAIM_WAIT_S
    while True:
        try:
            return ledger.reserve(q.principal_id, event, gate=gate)
        except Gated as gated:
            if gated.outcome is not _BUSY:
                return gated.outcome  # type: ignore[return-value]
            if time.monotonic() > deadline:
                raise APIError(
                    409,
                    "query_in_progress",
                    "The same query is being answered for you right now; retry to get its "
                    "answer at no cost.",
                    headers={"Retry-After": "1"},
                ) from None
            time.sleep(_CLAIM_POLL_S)
        except BudgetExhaustedError:
            with writes.write(engine, durable=False) as conn:
                if rate is not None:
                    rate.take(conn)
                q.record(conn, "refused")
            raise


_BUSY = object()


#: The figures of ``Remaining`` an answer leaves out: the counts of ledger entries (counting
#: them would read the whole history on every query) and the tight PLD figure (computed from
#: every live entry): ``GET /v1/budget`` gives them. Leaving them out, rather than sending 0
#: and null, keeps an answer from contradicting ``GET /v1/budget``.
ANSWER_BUDGET_OMITS = (
    "reserved",
    "committed",
    "spent_epsilon_tight",
    "spent_epsilon_tight_accounting",
)


def answer_budget(remaining: Remaining) -> dict[str, Any]:
    """The ``budget`` block of every answer (charged, replayed or a dry run): the budget, the
    admission bound spent (this query's charge included) and what remains, as
    ``GET /v1/budget`` reports them, without the figures only that route computes."""
    figures = remaining.to_dict()
    for name in ANSWER_BUDGET_OMITS:
        figures.pop(name, None)
    return figures


def defer(work: Callable[[], None]) -> None:
    """Run ``work`` after the response has been sent, when serving a request with
    ``settle_after_response`` on (the default outside tests); otherwise now."""
    if has_request_context() and current_app.config.get("PRIVTEXT_SETTLE_AFTER_RESPONSE"):
        g.setdefault("privtext_after_response", []).append(work)
    else:
        work()


def run_deferred(response: Response) -> Response:
    """``after_request`` hook: hand the deferred work to the server, which runs it once the
    response has been written (WSGI ``close``)."""
    for work in g.pop("privtext_after_response", []):
        response.call_on_close(work)
    return response
