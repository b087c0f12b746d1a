"""Many processes reserving at once against one budget: exactly the affordable number pass.

16 forked processes, each with its own engine (as gunicorn workers have), hammer one analyst's
budget on SQLite (WAL, BEGIN IMMEDIATE) and PostgreSQL (SELECT ... FOR UPDATE). The budget affords
exactly N events; N is what sequential admission in memory allows.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from mechanisms.errors import BudgetExhaustedError
from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Budget, Spend
from mechanisms.ledger_memory import InMemoryLedger
from service.auth import create_principal
from service.store.ledger import SqlLedger
from service.store.ledger_tables import budgets, ledger_entries

PROCS = 16
PER_PROC = 12


def _worker(url: str, pid: str, event: dict[str, Any], start: Any, out: Any) -> None:
    from service.store.db import make_engine

    engine = make_engine(url)
    ledger = SqlLedger(engine)
    ev = PrivacyEvent.from_dict(event)
    ok = refused = 0
    start.wait(30)
    for i in range(PER_PROC):
        try:
            r = ledger.reserve(pid, ev)
        except BudgetExhaustedError:
            refused += 1
            continue
        ok += 1
        if i % 3 == 0:
            ledger.commit(r.id)  # leave the others reserved: they stay charged
    engine.dispose()
    out.put((ok, refused))


def _sequential_capacity(event: PrivacyEvent, budget: Budget) -> int:
    mem = InMemoryLedger()
    mem.set_budget("a", budget)
    n = 0
    while True:
        try:
            mem.reserve("a", event)
        except BudgetExhaustedError:
            return n
        n += 1


@pytest.mark.seconds  # threads race on the store for the whole budget
@pytest.mark.parametrize(
    ("event", "budget"),
    [
        (PrivacyEvent.laplace(0.01), Budget(0.5, 1e-6)),  # RDP beats basic composition: N = 136
        (PrivacyEvent.gaussian(20.0), Budget(2.0, 1e-6)),  # RDP admission
    ],
    ids=["laplace", "gaussian"],
)
def test_concurrent_reserves_admit_exactly_n(
    state_url: str, state_engine: Engine, event: PrivacyEvent, budget: Budget
) -> None:
    n = _sequential_capacity(event, budget)
    assert 20 < n < PROCS * PER_PROC  # the test must be able to fail both ways
    pid = create_principal(state_engine, name="busy", role="analyst")
    SqlLedger(state_engine).set_budget(pid, budget)

    # fork is quick (the parent has imported everything); the parent's pool is emptied first so
    # that no child inherits a live database connection
    state_engine.dispose()
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(state_url, pid, event.to_dict(), start, out))
        for _ in range(PROCS)
    ]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0

    assert sum(ok for ok, _ in results) == n
    assert sum(refused for _, refused in results) == PROCS * PER_PROC - n
    with state_engine.connect() as conn:
        rows = conn.execute(
            select(ledger_entries.c.event).where(ledger_entries.c.principal_id == pid)
        ).all()
        stored = conn.execute(select(budgets.c.spend).where(budgets.c.principal_id == pid)).one()
        assert conn.execute(select(func.count()).select_from(ledger_entries)).scalar() == n
    assert len(rows) == n
    # the running vector equals the sum over the entries, to float rounding
    total = Spend()
    for r in rows:
        total = total + Spend.of(PrivacyEvent.from_dict(json.loads(r.event)))
    kept = Spend.from_dict(json.loads(stored.spend))
    assert kept.count == n
    assert kept.epsilon(budget.delta) == pytest.approx(total.epsilon(budget.delta), rel=1e-9)
    assert kept.epsilon(budget.delta) <= budget.epsilon + 1e-9
