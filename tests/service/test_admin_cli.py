"""``privtext analysts|budget|cap|audit`` against a fresh state store."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import main
from service.store.db import make_engine
from service.store.ledger import SqlLedger


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("PRIVTEXT_DATABASE_URL", raising=False)
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True):  # type: ignore[no-untyped-def]
        result = runner.invoke(main, ["--data-dir", str(tmp_path), *args])
        assert (result.exit_code == 0) == ok, result.output
        return result

    return invoke


def _id(result) -> str:  # type: ignore[no-untyped-def]
    return str(result.stderr.split("analyst: ")[1].split()[0])


def test_analyst_budget_cap_commands(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert json.loads(run("cap", "show").stdout)["remaining_epsilon"] is None  # no cap: unlimited
    created = run("analysts", "create", "alice", "--epsilon", "1", "--delta", "1e-6")
    aid = _id(created)
    again = run("analysts", "create", "alice", ok=False)
    assert "names are unique" in again.output and "ptk_" not in again.output
    assert created.stdout.startswith("ptk_")
    assert "alice  active  budget eps=1 delta=1e-06" in run("analysts", "list").stdout
    run("budget", "raise", aid, "--epsilon", "0.5")
    shown = json.loads(run("budget", "show", aid).stdout)
    assert shown["budget"] == {"epsilon": 1.5, "delta": 1e-6}
    run("budget", "set", aid, "--epsilon", "2", "--delta", "1e-7")
    run("cap", "set", "--epsilon", "10", "--delta", "1e-5")
    assert json.loads(run("cap", "show").stdout)["budget"] == {"epsilon": 10.0, "delta": 1e-5}
    run("analysts", "disable", aid)
    assert "disabled" in run("analysts", "list").stdout

    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    assert SqlLedger(engine).get_budget(aid).epsilon == 2.0  # type: ignore[union-attr]
    engine.dispose()


def test_cli_rejects_bad_input(run) -> None:  # type: ignore[no-untyped-def]
    run("budget", "set", "nope", "--epsilon", "1", ok=False)
    aid = _id(run("analysts", "create", "bob", "--no-key"))
    for args in (
        ["--epsilon", "0", "--delta", "1e-6"],
        ["--epsilon", "1", "--delta", "1"],
        ["--epsilon", "nan", "--delta", "1e-6"],
        ["--epsilon", "1", "--delta", "0"],  # delta in (0, 1e-3]
        ["--epsilon", "1", "--delta", "2e-3"],
        ["--epsilon", "1"],  # no delta
    ):
        run("budget", "set", aid, *args, ok=False)
    run("analysts", "create", "eve", "--epsilon", "1", ok=False)  # epsilon without delta
    run("budget", "raise", aid, ok=False)
    run("cap", "set", "--epsilon", "-1", "--delta", "1e-6", ok=False)
    run("cap", "set", "--epsilon", "1", "--delta", "0.5", ok=False)


def test_audit_export(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from service.store import audit

    aid = _id(run("analysts", "create", "carol", "--epsilon", "1", "--delta", "1e-6"))
    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    for i in range(3):
        audit.record(
            engine,
            principal_id=aid,
            status="released",
            snapshot_id="s",
            normalised_query=audit.normalise_query({"i": i}),
            cost={"epsilon": 0.1},
            released={"value": i},
        )
    engine.dispose()
    rows = json.loads(run("audit", "export", "--format", "json").stdout)
    assert [r["query"]["i"] for r in rows] == [0, 1, 2]
    out = tmp_path / "audit.csv"
    run("audit", "export", "--format", "csv", "--analyst", aid, "-o", str(out))
    parsed = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(parsed) == 3 and parsed[0]["principal_id"] == aid
    assert json.loads(run("audit", "export", "--since", "2999-01-01").stdout) == []


def test_ledger_recompute_command(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import update

    from mechanisms.events import PrivacyEvent
    from mechanisms.ledger import Spend
    from service.store.ledger_tables import corpus_cap

    aid = _id(run("analysts", "create", "alice", "--epsilon", "5", "--delta", "1e-6"))
    run("cap", "set", "--epsilon", "10", "--delta", "1e-6")
    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    ledger = SqlLedger(engine)
    ledger.commit(ledger.reserve(aid, PrivacyEvent.laplace(0.5)).id)
    out = run("ledger", "recompute").stdout
    assert "corpus cap: stored epsilon 0.5, from 1 live entries 0.5" in out
    assert f"analyst {aid}: stored epsilon 0.5" in out and "UNDER-CHARGED" not in out
    with engine.begin() as conn:  # a cap that lost its history
        conn.execute(update(corpus_cap).values(spend=json.dumps(Spend().to_dict())))
    bad = run("ledger", "recompute", ok=False)
    assert bad.exit_code == 1 and "corpus cap: stored epsilon 0, " in bad.stdout
    assert "UNDER-CHARGED" in bad.stdout
    assert "replaced" in run("ledger", "recompute", "--apply").stdout
    assert ledger.corpus_remaining().spent_epsilon == 0.5
    assert "UNDER-CHARGED" not in run("ledger", "recompute").stdout
