"""The privtext command: ingest, snapshots, keys, ensure-admin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus.store import SnapshotStore
from service.auth import authenticate
from service.cli import main
from service.store.db import make_engine
from tests.factories import make_messages, write_jsonl


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _run(runner: CliRunner, data_dir: Path, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(
        main, ["--data-dir", str(data_dir), *args], env=env or {}, catch_exceptions=False
    )


def test_ingest_then_if_missing_is_a_no_op(
    runner: CliRunner, data_dir: Path, corpus_file: Path
) -> None:
    res = _run(runner, data_dir, "ingest", str(corpus_file))
    assert res.exit_code == 0, res.output
    live = SnapshotStore(data_dir).live()
    assert live is not None and live.id in res.output
    res = _run(runner, data_dir, "ingest", "--demo", "--if-missing")
    assert res.exit_code == 0 and "nothing to do" in res.output
    assert SnapshotStore(data_dir).live() == live


def test_malformed_file_exits_1_with_file_line_reason(
    runner: CliRunner, data_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    rows = make_messages(n_senders=2, per_sender=2)
    lines = [json.dumps(r) for r in rows]
    lines[2] = '{"sender": "x", "conversation": "c", "timestamp": "not a time", "text": "SECRET"}'
    bad.write_text("\n".join(lines) + "\n")
    res = _run(runner, data_dir, "ingest", str(bad))
    assert res.exit_code == 1
    assert "bad.jsonl:3:" in res.output and "SECRET" not in res.output
    assert SnapshotStore(data_dir).live() is None


def test_path_and_demo_are_exclusive(runner: CliRunner, data_dir: Path, corpus_file: Path) -> None:
    res = runner.invoke(main, ["--data-dir", str(data_dir), "ingest"])
    assert res.exit_code == 2
    res = runner.invoke(main, ["--data-dir", str(data_dir), "ingest", str(corpus_file), "--demo"])
    assert res.exit_code == 2


def test_spark_ingest_needs_an_engine_url(
    runner: CliRunner, data_dir: Path, corpus_file: Path
) -> None:
    """Refused from the settings alone, before the file is read (issue 14)."""
    args = ["--data-dir", str(data_dir), "ingest", "--engine", "spark"]
    res = runner.invoke(main, [*args, str(corpus_file)], env={"PRIVTEXT_ENGINE_URL": None})
    assert res.exit_code == 2 and "needs PRIVTEXT_ENGINE_URL" in res.output
    env = {"PRIVTEXT_ENGINE_URL": "sc://127.0.0.1:1"}
    res = runner.invoke(main, [*args, "--demo"], env=env)
    assert res.exit_code == 2 and "not --demo" in res.output
    env["PRIVTEXT_SPARK_CORPUS_URI"] = "s3a://bucket/corpus"
    res = runner.invoke(main, [*args, str(corpus_file)], env=env)
    assert res.exit_code == 2 and "PRIVTEXT_SPARK_CORPUS_URI" in res.output
    assert SnapshotStore(data_dir).live() is None


def test_snapshots_list_and_activate(runner: CliRunner, data_dir: Path, tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", make_messages(seed=1))
    b = write_jsonl(tmp_path / "b.jsonl", make_messages(seed=2))
    _run(runner, data_dir, "ingest", str(a))
    first = SnapshotStore(data_dir).live()
    _run(runner, data_dir, "ingest", str(b))
    assert SnapshotStore(data_dir).live() != first
    listing = _run(runner, data_dir, "snapshots", "list").output
    assert first is not None and first.id in listing
    assert _run(runner, data_dir, "snapshots", "activate", first.id).exit_code == 0
    assert SnapshotStore(data_dir).live() == first
    assert _run(runner, data_dir, "snapshots", "activate", "snap-nope").exit_code == 1


def test_keys_create_prints_a_working_key(runner: CliRunner, data_dir: Path) -> None:
    res = _run(runner, data_dir, "keys", "create", "--role", "analyst", "--name", "alice")
    assert res.exit_code == 0
    token = res.stdout.strip().splitlines()[-1]
    engine = make_engine(f"sqlite:///{data_dir / 'state.db'}")
    principal = authenticate(engine, token)
    assert principal is not None and principal.role == "analyst" and principal.name == "alice"
    revoked = _run(runner, data_dir, "keys", "revoke", principal.key_id)
    assert revoked.exit_code == 0 and authenticate(engine, token) is None


def test_ensure_admin_mints_once_and_saves_0600(runner: CliRunner, data_dir: Path) -> None:
    res = _run(runner, data_dir, "ensure-admin")
    assert res.exit_code == 0
    key_file = data_dir / "admin-key.txt"
    token = key_file.read_text().strip()
    assert token in res.output
    assert key_file.stat().st_mode & 0o777 == 0o600
    again = _run(runner, data_dir, "ensure-admin")
    assert "already exists" in again.output and token not in again.output
    engine = make_engine(f"sqlite:///{data_dir / 'state.db'}")
    assert authenticate(engine, token).role == "admin"  # type: ignore[union-attr]


def test_ensure_admin_takes_the_environment_key(runner: CliRunner, data_dir: Path) -> None:
    token = "ptk_abcdef12_my-own-admin-secret"
    res = _run(runner, data_dir, "ensure-admin", env={"PRIVTEXT_ADMIN_KEY": token})
    assert res.exit_code == 0 and token not in res.output
    engine = make_engine(f"sqlite:///{data_dir / 'state.db'}")
    assert authenticate(engine, token).role == "admin"  # type: ignore[union-attr]
    assert not (data_dir / "admin-key.txt").exists()
