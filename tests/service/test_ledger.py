"""The ledger interface on every backend: in memory, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math

import pytest

from mechanisms.accountant import Accountant
from mechanisms.errors import BudgetExhaustedError, InvalidParameterError
from mechanisms.events import PrivacyEvent
from mechanisms.ledger import MAX_DELTA, Budget, Ledger, Spend, UnknownReservationError

LAP = PrivacyEvent.laplace(0.25)


def test_reserve_commit_and_remaining(any_ledger: Ledger, make_analyst) -> None:  # type: ignore[no-untyped-def]
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(1.0, 1e-6))
    r = any_ledger.reserve(a, LAP)
    rem = any_ledger.remaining(a)
    assert rem.reserved == 1 and rem.committed == 0
    assert rem.spent_epsilon == pytest.approx(0.25, abs=1e-9)
    assert rem.remaining_epsilon == pytest.approx(0.75, abs=1e-9)
    any_ledger.commit(r.id)
    rem = any_ledger.remaining(a)
    assert (rem.reserved, rem.committed) == (0, 1)
    assert [e.status for e in any_ledger.history(a)] == ["committed"]
    assert any_ledger.history(a)[0].event == LAP


def test_exactly_the_affordable_number_is_admitted(any_ledger: Ledger, make_analyst) -> None:  # type: ignore[no-untyped-def]
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(1.0, 1e-6))  # a few Laplace releases: basic composition
    for _ in range(4):
        any_ledger.reserve(a, LAP)
    with pytest.raises(BudgetExhaustedError) as exc:
        any_ledger.reserve(a, LAP)
    assert exc.value.remaining_epsilon == pytest.approx(0.0, abs=1e-9)
    assert exc.value.remaining_delta == 1e-6
    assert len(any_ledger.history(a)) == 4  # the refused one left no trace


def test_no_budget_means_no_release(any_ledger: Ledger, make_analyst) -> None:  # type: ignore[no-untyped-def]
    a = make_analyst(any_ledger)
    with pytest.raises(BudgetExhaustedError):
        any_ledger.reserve(a, LAP)


def test_gaussian_needs_delta(any_ledger: Ledger, make_analyst) -> None:  # type: ignore[no-untyped-def]
    """A pure-epsilon budget (delta 0), stored before the delta limit, still refuses them."""
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget.stored(100.0, 0.0))
    with pytest.raises(BudgetExhaustedError):
        any_ledger.reserve(a, PrivacyEvent.gaussian(5.0))
    any_ledger.reserve(a, LAP)
    assert any_ledger.remaining(a).spent_epsilon == 0.25


def test_refund_returns_the_cost_once(any_ledger: Ledger, make_analyst) -> None:  # type: ignore[no-untyped-def]
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(0.5, 1e-6))
    r1 = any_ledger.reserve(a, LAP)
    any_ledger.reserve(a, LAP)
    with pytest.raises(BudgetExhaustedError):
        any_ledger.reserve(a, LAP)
    any_ledger.refund(r1.id)
    assert any_ledger.remaining(a).remaining_epsilon == pytest.approx(0.25, abs=1e-6)
    any_ledger.reserve(a, LAP)  # affordable again
    with pytest.raises(UnknownReservationError):
        any_ledger.refund(r1.id)
    with pytest.raises(UnknownReservationError):
        any_ledger.commit(r1.id)
    statuses = sorted(e.status for e in any_ledger.history(a))
    assert statuses == ["refunded", "reserved", "reserved"]


def test_committed_cannot_be_refunded(any_ledger: Ledger, make_analyst) -> None:  # type: ignore[no-untyped-def]
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(1.0, 1e-6))
    r = any_ledger.reserve(a, LAP)
    any_ledger.commit(r.id)
    with pytest.raises(UnknownReservationError):
        any_ledger.refund(r.id)
    with pytest.raises(UnknownReservationError):
        any_ledger.commit("rsv_nope")
    assert any_ledger.remaining(a).committed == 1


def test_corpus_cap_binds_colluding_analysts(any_ledger: Ledger, make_analyst) -> None:  # type: ignore[no-untyped-def]
    a, b = make_analyst(any_ledger, "a"), make_analyst(any_ledger, "b")
    for p in (a, b):
        any_ledger.set_budget(p, Budget(1.0, 1e-6))
    any_ledger.set_corpus_cap(Budget(1.0, 1e-6))
    any_ledger.reserve(a, LAP)
    any_ledger.reserve(a, LAP)
    any_ledger.reserve(b, LAP)
    any_ledger.reserve(b, LAP)
    with pytest.raises(BudgetExhaustedError, match="corpus-wide") as exc:
        any_ledger.reserve(b, LAP)
    assert exc.value.remaining_epsilon == pytest.approx(0.0, abs=1e-9)
    assert any_ledger.corpus_remaining().spent_epsilon == pytest.approx(1.0, abs=1e-9)
    assert any_ledger.corpus_cap() == Budget(1.0, 1e-6)
    any_ledger.set_corpus_cap(None)
    any_ledger.reserve(b, LAP)  # the analyst's own budget still has room


def test_set_and_raise_budget(any_ledger: Ledger, make_analyst) -> None:  # type: ignore[no-untyped-def]
    a = make_analyst(any_ledger)
    assert any_ledger.get_budget(a) is None
    with pytest.raises(InvalidParameterError):
        any_ledger.raise_budget(a, epsilon=0.5)  # a first budget needs a delta
    assert any_ledger.raise_budget(a, epsilon=0.5, delta=1e-6) == Budget(0.5, 1e-6)
    assert any_ledger.raise_budget(a, epsilon=0.5) == Budget(1.0, 1e-6)
    with pytest.raises(InvalidParameterError):
        any_ledger.raise_budget(a, delta=1e-3)  # past MAX_DELTA
    assert any_ledger.get_budget(a) == Budget(1.0, 1e-6)
    assert any_ledger.set_budget(a, Budget(2.0, 1e-7)) == Budget(2.0, 1e-7)
    assert any_ledger.get_budget(a) == Budget(2.0, 1e-7)
    with pytest.raises(InvalidParameterError):
        any_ledger.raise_budget(a)
    with pytest.raises(InvalidParameterError):
        any_ledger.raise_budget(a, epsilon=-1.0)


def test_many_gaussians_cost_what_tight_accounting_says(any_ledger: Ledger, make_analyst) -> None:  # type: ignore[no-untyped-def]
    """Budget 10 at delta 1e-6, sigma 10: basic composition would admit few; RDP admits ~300."""
    a = make_analyst(any_ledger)
    budget = Budget(10.0, 1e-6)
    any_ledger.set_budget(a, budget)
    event = PrivacyEvent.gaussian(10.0)
    single = Spend.of(event).epsilon(budget.delta)
    admitted = 0
    while admitted < 1000:
        try:
            any_ledger.commit(any_ledger.reserve(a, event).id)
        except BudgetExhaustedError:
            break
        admitted += 1
    assert single > 0.4  # one release alone costs ~0.5 at this delta
    assert admitted > 5 * math.floor(budget.epsilon / single)
    rem = any_ledger.remaining(a)
    assert rem.spent_epsilon <= budget.epsilon + 1e-9
    # the admission bound is sound: PLD (tighter) never reports more
    tight = Accountant([event] * admitted).epsilon(budget.delta, method="pld")
    assert rem.spent_epsilon_tight == pytest.approx(tight, rel=1e-6)
    assert tight <= rem.spent_epsilon + 1e-6


def test_approx_dp_events_take_their_delta(any_ledger: Ledger, make_analyst) -> None:  # type: ignore[no-untyped-def]
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(5.0, 1e-6))
    any_ledger.reserve(a, PrivacyEvent.approx_dp(1.0, 5e-7))
    with pytest.raises(BudgetExhaustedError):
        any_ledger.reserve(a, PrivacyEvent.approx_dp(1.0, 6e-7))  # deltas would exceed 1e-6
    any_ledger.reserve(a, PrivacyEvent.laplace(1.0))
    assert any_ledger.remaining(a).spent_epsilon == pytest.approx(2.0, abs=1e-9)


def test_history_is_newest_first_and_paginated(any_ledger: Ledger, make_analyst) -> None:  # type: ignore[no-untyped-def]
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(10.0, 1e-6))
    ids = [any_ledger.reserve(a, PrivacyEvent.laplace(0.1 * (i + 1))).id for i in range(5)]
    assert {e.id for e in any_ledger.history(a)} == set(ids)
    page = any_ledger.history(a, limit=2, offset=1)
    assert len(page) == 2
    newest = any_ledger.history(a, limit=1)[0]
    assert newest.created_at >= any_ledger.history(a)[-1].created_at


def test_quote_prices_without_charging(any_ledger: Ledger, make_analyst) -> None:  # type: ignore[no-untyped-def]
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(0.3, 1e-6))
    q = any_ledger.quote(a, LAP)
    assert q.affordable and q.epsilon == pytest.approx(0.25)
    assert q.marginal_epsilon == pytest.approx(0.25)
    assert any_ledger.history(a) == []
    any_ledger.reserve(a, LAP)
    assert not any_ledger.quote(a, LAP).affordable


def test_budget_rejects_bad_values() -> None:
    for eps, delta in [
        (0.0, 1e-6),
        (-1.0, 1e-6),
        (math.inf, 1e-6),
        (math.nan, 1e-6),
        (1.0, 1.0),
        (1.0, 0.0),  # delta in (0, MAX_DELTA]
        (1.0, -1e-6),
        (1.0, 0.5),
        (1.0, 1.0001e-3),
        (1.0, math.nan),
    ]:
        with pytest.raises(InvalidParameterError):
            Budget(eps, delta)
    assert Budget(1.0, MAX_DELTA).delta == 1e-3


def test_stored_budgets_from_before_the_delta_limit_read_safely(
    any_ledger: Ledger, make_analyst
) -> None:  # type: ignore[no-untyped-def]
    """A delta of 0.5 made past spending read as epsilon 0: read back, it is capped at 1e-3."""
    from sqlalchemy import update

    from service.store.ledger import SqlLedger
    from service.store.ledger_tables import budgets

    assert Budget.stored(1.0, 0.5) == Budget(1.0, MAX_DELTA)
    assert Budget.stored(1.0, 0.0).delta == 0.0
    with pytest.raises(InvalidParameterError):
        Budget.stored(1.0, 1.0)
    if not isinstance(any_ledger, SqlLedger):
        return
    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(2.0, 1e-6))
    event = PrivacyEvent.gaussian(3.0)
    any_ledger.reserve(a, event)
    with any_ledger.engine.begin() as conn:  # as an old store held it
        conn.execute(update(budgets).where(budgets.c.principal_id == a).values(delta=0.5))
    rem = any_ledger.remaining(a)
    assert rem.budget == Budget(2.0, MAX_DELTA)
    assert rem.spent_epsilon == Spend.of(event).epsilon(MAX_DELTA) > 0.1
    assert Spend.of(event).epsilon(0.5) == 0.0  # what the stored delta would have said


def test_spend_round_trip_and_refund_arithmetic() -> None:
    s = (
        Spend.of(LAP)
        + Spend.of(PrivacyEvent.gaussian(3.0))
        + Spend.of(PrivacyEvent.approx_dp(0.1, 1e-7))
    )
    assert Spend.from_dict(s.to_dict()) == s
    assert (s - Spend.of(PrivacyEvent.gaussian(3.0))).curve_count == 0
    assert Spend().epsilon(1e-6) == 0.0
    assert (s - s) == Spend()


def test_corpus_spend_without_a_cap_is_reported_at_report_delta(
    any_ledger: Ledger, make_analyst
) -> None:  # type: ignore[no-untyped-def]
    from mechanisms.ledger import REPORT_DELTA

    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(1.0, 1e-5))
    any_ledger.reserve(a, PrivacyEvent.gaussian(10.0))
    rem = any_ledger.corpus_remaining()
    assert rem.budget is None and rem.delta == REPORT_DELTA
    expected = Spend.of(PrivacyEvent.gaussian(10.0)).epsilon(REPORT_DELTA)
    assert rem.spent_epsilon == pytest.approx(expected) and rem.to_dict()["delta"] == REPORT_DELTA
    assert any_ledger.remaining(a).to_dict()["delta"] == 1e-5


def test_recompute_spends_finds_and_repairs_an_under_charged_store(
    any_ledger: Ledger, make_analyst
) -> None:  # type: ignore[no-untyped-def]
    """``privtext ledger recompute``: the stored running sums against the live entries (the
    policy's, so every store has it)."""
    from sqlalchemy import update

    from service.store.ledger import SqlLedger
    from service.store.ledger_tables import corpus_cap

    a = make_analyst(any_ledger)
    any_ledger.set_budget(a, Budget(5.0, 1e-5))
    any_ledger.set_corpus_cap(Budget(50.0, 1e-5))
    any_ledger.commit(any_ledger.reserve(a, PrivacyEvent.gaussian(3.0)).id)
    any_ledger.refund(any_ledger.reserve(a, LAP).id)
    training = PrivacyEvent.subsampled_gaussian(
        noise_multiplier=1.0, sampling_rate=0.05, steps=100
    )
    any_ledger.commit(any_ledger.reserve_corpus(a, training).id)  # the cap only
    cap_before = any_ledger.corpus_remaining().spent_epsilon
    own_before = any_ledger.remaining(a).spent_epsilon
    rows = {r["scope"]: r for r in any_ledger.recompute_spends()}
    assert rows["corpus"]["entries"] == 2 and rows["analyst"]["entries"] == 1
    for r in rows.values():  # an honest store: the running sums equal the entries
        assert r["stored_epsilon"] == pytest.approx(r["recomputed_epsilon"], rel=1e-9)
    assert rows["analyst"]["stored_epsilon"] == pytest.approx(own_before, rel=1e-9)
    assert rows["analyst"]["recomputed_epsilon"] == pytest.approx(
        Spend.of(PrivacyEvent.gaussian(3.0)).epsilon(1e-5), rel=1e-9
    )
    # the bug this tool exists for: a cap whose stored spend lost its history
    if isinstance(any_ledger, SqlLedger):
        with any_ledger.engine.begin() as conn:
            conn.execute(update(corpus_cap).values(spend=json.dumps(Spend().to_dict())))
    else:
        any_ledger.store.corpus = Spend()  # type: ignore[attr-defined]
    assert any_ledger.corpus_remaining().spent_epsilon == 0.0
    shown = {r["scope"]: r for r in any_ledger.recompute_spends()}
    assert shown["corpus"]["stored_epsilon"] == 0.0
    assert shown["corpus"]["recomputed_epsilon"] == pytest.approx(cap_before, rel=1e-9)
    assert any_ledger.corpus_remaining().spent_epsilon == 0.0  # only shown, not written
    any_ledger.recompute_spends(apply=True)
    assert any_ledger.corpus_remaining().spent_epsilon == pytest.approx(cap_before, rel=1e-9)
    assert any_ledger.remaining(a).spent_epsilon == pytest.approx(own_before, rel=1e-9)
