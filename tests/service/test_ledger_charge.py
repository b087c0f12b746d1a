"""The one way to spend a reservation (``Ledger.charging`` / ``Ledger.charge``), the entry's
scope, and the schema upgrade that introduced it, on every store (memory, SQLite, PostgreSQL).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from mechanisms.errors import BudgetExhaustedError
from mechanisms.events import PrivacyEvent
from mechanisms.ledger import CORPUS, Budget, Gated, Ledger, Spend

LAP = PrivacyEvent.laplace(0.25)


def _statuses(ledger: Ledger, pid: str) -> list[str]:
    return [e.status for e in ledger.history(pid)]


def test_a_clean_block_is_committed(any_ledger: Ledger, make_analyst: Any) -> None:
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(1.0, 1e-6))
    seen: list[str] = []
    with any_ledger.charge(a, LAP, also=lambda txn, outcome: seen.append(outcome)) as charge:
        assert _statuses(any_ledger, a) == ["reserved"]
    assert _statuses(any_ledger, a) == ["committed"] and seen == ["released"]
    assert charge.settled and any_ledger.remaining(a).spent_epsilon == pytest.approx(0.25)


def test_a_failing_block_is_charged_all_the_same(any_ledger: Ledger, make_analyst: Any) -> None:
    """Once the block may have read private data, its failure is itself an answer: the
    reservation is committed (never refunded) and the error re-raised after the commit."""
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(1.0, 1e-6))
    seen: list[str] = []
    with pytest.raises(ZeroDivisionError):
        with any_ledger.charge(a, LAP, also=lambda txn, outcome: seen.append(outcome)):
            _ = 1 / 0
    assert _statuses(any_ledger, a) == ["committed"] and seen == ["failed"]
    with pytest.raises(KeyboardInterrupt):  # not an Exception: still committed, re-raised
        with any_ledger.charge(a, LAP):
            raise KeyboardInterrupt
    assert _statuses(any_ledger, a) == ["committed", "committed"]
    assert any_ledger.remaining(a).spent_epsilon == pytest.approx(0.5)


def test_a_refused_charge_runs_no_block(any_ledger: Ledger, make_analyst: Any) -> None:
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(0.2, 1e-6))
    ran = []
    with pytest.raises(BudgetExhaustedError):
        with any_ledger.charge(a, LAP):
            ran.append(True)
    assert ran == [] and _statuses(any_ledger, a) == []


def test_a_deferred_commit_waits_for_its_caller(any_ledger: Ledger, make_analyst: Any) -> None:
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(1.0, 1e-6))
    with any_ledger.charge(a, LAP) as charge:
        later = charge.defer()
    assert _statuses(any_ledger, a) == ["reserved"]  # reserved is charged all the same
    later()
    later()  # once only
    assert _statuses(any_ledger, a) == ["committed"]


def test_a_store_failure_at_the_commit_leaves_it_charged(
    any_ledger: Ledger, make_analyst: Any
) -> None:
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(1.0, 1e-6))
    cleaned: list[bool] = []

    def broken(txn: Any, outcome: str) -> None:
        raise RuntimeError("the store went away")

    with any_ledger.charge(a, LAP, also=broken, unsettled=lambda: cleaned.append(True)):
        pass
    assert cleaned == [True]
    assert _statuses(any_ledger, a) == ["reserved"]  # rolled back with its records: charged
    assert any_ledger.remaining(a).spent_epsilon == pytest.approx(0.25)


def test_a_gate_rolls_the_reservation_back(any_ledger: Ledger, make_analyst: Any) -> None:
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(1.0, 1e-6))
    with pytest.raises(Gated) as gated:
        any_ledger.reserve(a, LAP, gate=lambda txn: "stored answer")
    assert gated.value.outcome == "stored answer"
    assert _statuses(any_ledger, a) == [] and any_ledger.remaining(a).spent_epsilon == 0.0
    assert any_ledger.corpus_remaining().spent_epsilon == 0.0


def test_scope_decides_what_a_refund_gives_back(any_ledger: Ledger, make_analyst: Any) -> None:
    """A corpus-scope reservation is charged to the cap alone, and its refund gives back to
    the cap alone (told by the entry's scope, not its id)."""
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(1.0, 1e-6))
    own = any_ledger.reserve(a, LAP)
    training = any_ledger.reserve(a, PrivacyEvent.laplace(2.0), scope=CORPUS)
    assert (own.scope, training.scope) == ("analyst", "corpus")
    assert [e.scope for e in any_ledger.history(a)] == ["corpus", "analyst"]
    assert any_ledger.remaining(a).spent_epsilon == pytest.approx(0.25)
    assert any_ledger.corpus_remaining().spent_epsilon == pytest.approx(2.25)
    any_ledger.refund(training.id)
    assert any_ledger.remaining(a).spent_epsilon == pytest.approx(0.25)
    assert any_ledger.corpus_remaining().spent_epsilon == pytest.approx(0.25)
    with pytest.raises(ValueError):
        any_ledger.reserve(a, LAP, scope="everyone")


def test_a_store_from_before_scopes_is_upgraded(tmp_path: Path) -> None:
    """Stores created before the scope column: corpus-only entries were the ``rsvc_`` ids.
    Starting the service adds the column and fills it; refunds then keep the analyst whole."""
    from service.auth import create_principal
    from service.store.db import init_db, make_engine
    from service.store.ledger import SqlLedger

    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = make_engine(url)
    init_db(engine)
    pid = create_principal(engine, name="ana", role="analyst")
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE ledger_entries DROP COLUMN scope"))
        event = json.dumps(PrivacyEvent.laplace(2.0).to_dict(), sort_keys=True)
        for rid in ("rsvc_old", "rsv_old"):
            conn.execute(
                text(
                    "INSERT INTO ledger_entries (id, principal_id, event, status, created_at) "
                    "VALUES (:id, :pid, :e, 'reserved', '2026-01-01 00:00:00')"
                ),
                {"id": rid, "pid": pid, "e": event},
            )
    init_db(engine)  # what every worker does at start-up
    init_db(engine)  # idempotent
    ledger = SqlLedger(engine)
    assert {e.id: e.scope for e in ledger.history(pid)} == {
        "rsvc_old": "corpus",
        "rsv_old": "analyst",
    }
    ledger.set_budget(pid, Budget(5.0, 1e-6))
    with engine.begin() as conn:  # a spend that refunding the cap's entry must not touch
        spend = json.dumps((Spend.of(PrivacyEvent.laplace(2.0))).to_dict())
        conn.execute(text("UPDATE budgets SET spend = :s"), {"s": spend})
    ledger.refund("rsvc_old")
    assert ledger.remaining(pid).spent_epsilon == pytest.approx(2.0)  # untouched
    engine.dispose()
