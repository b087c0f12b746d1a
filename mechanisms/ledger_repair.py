"""Checking and repairing the ledger's running sums against its entries (``privtext ledger
recompute``)."""

from __future__ import annotations

from typing import Any

from mechanisms.budget import REPORT_DELTA, Budget
from mechanisms.events import PrivacyEvent
from mechanisms.ledger_store import ANALYST, CORPUS, LedgerStore
from mechanisms.spend import Spend

__all__ = ["recompute"]


def recompute(store: LedgerStore, *, apply: bool = False) -> list[dict[str, Any]]:
    """Recompute every stored spend from the live (reserved or committed) entries.

    The stored spends are running sums, updated on every reserve and refund; this sums
    the entries again, for an operator to check them, or to repair them (``apply``) after
    a bug (a refund of an event with infinite RDP orders once zeroed those orders). An
    analyst's spend is the sum of their analyst-scope entries; the cap's is the sum of
    all. Runs under the write locks, budgets before the cap, like every other
    transaction. Returns, per budget row and for the cap, the epsilon stored and
    recomputed (at the budget's delta, or REPORT_DELTA without one).
    """
    with store.write() as txn:
        rows: list[tuple[str | None, Budget | None, Spend]] = list(txn.budget_rows())
        cap, stored_corpus = txn.cap()
        priced: dict[PrivacyEvent, Spend] = {}
        own: dict[str, Spend] = {}
        corpus = Spend()
        for e in txn.live_entries():
            spend = priced.get(e.event) or priced.setdefault(e.event, Spend.of(e.event))
            corpus = corpus + spend
            if e.scope == ANALYST:
                own[e.principal_id] = own.get(e.principal_id, Spend()) + spend
        report = []
        for principal_id, budget, stored in [*rows, (None, cap, stored_corpus)]:
            fresh = corpus if principal_id is None else own.get(principal_id, Spend())
            delta = budget.delta if budget else REPORT_DELTA
            report.append(
                {
                    "scope": CORPUS if principal_id is None else ANALYST,
                    "principal_id": principal_id,
                    "delta": delta,
                    "stored_epsilon": stored.epsilon(delta),
                    "recomputed_epsilon": fresh.epsilon(delta),
                    "entries": fresh.count,
                }
            )
            if apply and principal_id is None:
                txn.put_cap_spend(fresh)
            elif apply and principal_id is not None:
                txn.put_spend(principal_id, fresh)
    return report
