"""Retention of the audit log, on SQLite and PostgreSQL: refused queries' rows older than the
retention are pruned; rows that name a charge (released, failed) and replays are kept for
ever, and the database still refuses to delete or change them; databases made with the older
guards (every DELETE refused) are upgraded once; ``privtext audit prune`` and the worker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from service.auth import create_principal
from service.store.ledger_tables import audit_log
from service.store.retention import ensure_guards, prune_refused

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _row(
    engine: Engine, pid: str, status: str, age_days: float, now: datetime = NOW
) -> int:
    with engine.begin() as conn:
        res = conn.execute(
            insert(audit_log).values(
                created_at=now - timedelta(days=age_days),
                principal_id=pid,
                status=status,
                snapshot_id="s1",
                query_hash="0" * 64,
                query="{}",
                cost=json.dumps({"epsilon": 0.0 if status == "refused" else 0.1}),
                released=None,
                reservation_id=None if status in ("refused", "replay") else f"r_{age_days}",
            )
        )
    return int(res.inserted_primary_key[0])  # type: ignore[index]


def _ids(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return {r.id for r in conn.execute(select(audit_log.c.id))}


def test_refused_rows_expire_and_charged_rows_stay(state_engine: Engine) -> None:
    pid = create_principal(state_engine, name="a", role="analyst")
    old_refused = [_row(state_engine, pid, "refused", 31 + i) for i in range(3)]
    new_refused = _row(state_engine, pid, "refused", 29)
    kept = [_row(state_engine, pid, s, 400) for s in ("released", "failed", "replay")]
    assert prune_refused(state_engine, retention_days=30, now=NOW, batch=2) == 3  # 2 batches
    assert _ids(state_engine) == {new_refused, *kept}
    assert not set(old_refused) & _ids(state_engine)
    assert prune_refused(state_engine, retention_days=30, now=NOW) == 0
    assert prune_refused(state_engine, retention_days=0, now=NOW + timedelta(days=99)) == 0
    assert prune_refused(state_engine, retention_days=1, now=NOW) == 1


def test_charged_rows_are_still_append_only(state_engine: Engine) -> None:
    pid = create_principal(state_engine, name="a", role="analyst")
    released = _row(state_engine, pid, "released", 1000)
    refused = _row(state_engine, pid, "refused", 1000)
    prune_refused(state_engine, retention_days=30, now=NOW)  # upgrades nothing, deletes one
    for stmt in (
        delete(audit_log).where(audit_log.c.id == released),
        delete(audit_log),  # all at once: refused too, since one charged row is among them
        update(audit_log).where(audit_log.c.id == released).values(status="refused"),
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            with state_engine.begin() as conn:
                conn.execute(stmt)
    assert _ids(state_engine) == {released}
    again = _row(state_engine, pid, "refused", 0)
    with pytest.raises(DBAPIError, match="append-only"):  # a refused row cannot change either
        with state_engine.begin() as conn:
            conn.execute(update(audit_log).where(audit_log.c.id == again).values(query="x"))
    with state_engine.begin() as conn:  # but it may be deleted
        conn.execute(delete(audit_log).where(audit_log.c.id == again))
    assert refused not in _ids(state_engine)
    if state_engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"):
            with state_engine.begin() as conn:
                conn.execute(text("TRUNCATE audit_log"))


def test_databases_with_the_older_guards_are_upgraded_once(state_engine: Engine) -> None:
    """The guards of earlier versions refused every DELETE (SQLite: a trigger per operation;
    PostgreSQL: one statement trigger for UPDATE OR DELETE)."""
    with state_engine.begin() as conn:
        if state_engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER audit_log_no_delete"))
            conn.execute(text(
                "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
            ))  # fmt: skip
        else:
            conn.execute(text("DROP TRIGGER audit_log_no_delete ON audit_log"))
            conn.execute(text("DROP TRIGGER audit_log_append_only ON audit_log"))
            conn.execute(text(
                "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
                "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
            ))  # fmt: skip
    pid = create_principal(state_engine, name="a", role="analyst")
    _row(state_engine, pid, "refused", 90)
    released = _row(state_engine, pid, "released", 90)
    with pytest.raises(DBAPIError, match="append-only"):  # the old guard refuses it
        with state_engine.begin() as conn:
            conn.execute(delete(audit_log).where(audit_log.c.status == "refused"))
    assert prune_refused(state_engine, retention_days=30, now=NOW) == 1  # upgraded, then pruned
    assert ensure_guards(state_engine) is False  # once
    assert _ids(state_engine) == {released}
    for stmt in (delete(audit_log), update(audit_log).values(status="refused")):
        with pytest.raises(DBAPIError, match="append-only"):
            with state_engine.begin() as conn:
                conn.execute(stmt)


def test_the_prune_command(data_dir: Path, ingested: object) -> None:
    from service.cli import main
    from service.store.db import init_db, make_engine

    engine = make_engine(f"sqlite:///{data_dir / 'state.db'}")
    init_db(engine)
    pid = create_principal(engine, name="a", role="analyst")
    now = datetime.now(UTC)
    ages = {_row(engine, pid, "refused", d, now=now): d for d in (3, 10, 40)}
    runner = CliRunner()
    env = {"PRIVTEXT_REFUSED_AUDIT_RETENTION_DAYS": "30"}
    r = runner.invoke(main, ["--data-dir", str(data_dir), "audit", "prune"], env=env)
    assert r.exit_code == 0 and "1 refused entries older than 30 days deleted" in r.output
    r = runner.invoke(main, ["--data-dir", str(data_dir), "audit", "prune",
                             "--older-than-days", "7"], env=env)
    assert r.exit_code == 0 and "1 refused" in r.output
    assert {ages[i] for i in _ids(engine)} == {3}
    r = runner.invoke(main, ["--data-dir", str(data_dir), "audit", "prune"],
                      env={"PRIVTEXT_REFUSED_AUDIT_RETENTION_DAYS": "0"})
    assert r.exit_code == 0 and "kept" in r.output
    engine.dispose()
