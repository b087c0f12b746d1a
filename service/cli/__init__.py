"""The ``privtext`` command: ingest corpora, manage keys and snapshots, serve.

Every command reads the same settings as the app (``PRIVTEXT_*`` environment variables);
``--data-dir`` overrides ``PRIVTEXT_DATA_DIR``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click
from sqlalchemy import Engine

from service.accounts import Accounts
from service.config import Settings
from service.db import engine_for, init_db
from service.hardening import private_dir, restrict_umask
from service.ledger.sql import SqlLedger


class Context:
    """What every command reads: the settings, and the state store opened on first use."""

    def __init__(self, data_dir: str | None) -> None:
        overrides: dict[str, Any] = {"data_dir": data_dir} if data_dir else {}
        self.settings = Settings.load(overrides)
        self._engine: Engine | None = None
        self._accounts: Accounts | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            private_dir(self.settings.data_dir)
            self._engine = engine_for(self.settings)
            init_db(self._engine)
        return self._engine

    @property
    def accounts(self) -> Accounts:
        """Analysts, keys, budgets and the cap (``service/accounts.py``, as the admin API)."""
        if self._accounts is None:
            self._accounts = Accounts(self.engine, SqlLedger(self.engine))
        return self._accounts


pass_ctx: Callable[..., Any] = click.make_pass_decorator(Context)


@click.group()
@click.option("--data-dir", envvar="PRIVTEXT_DATA_DIR", default=None, help="State directory.")
@click.pass_context
def main(ctx: click.Context, data_dir: str | None) -> None:
    """privtext: differentially private analytics over a chat corpus."""
    restrict_umask()  # state, snapshots, keys and job files: readable by their owner only
    ctx.obj = Context(data_dir)


@main.command()
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--demo", is_flag=True, help="Ingest the bundled chitchat-dataset corpus.")
@click.option("--if-missing", is_flag=True, help="Do nothing when a snapshot is already live.")
@click.option("--workers", type=int, default=None, help="Processes for feature extraction.")
@pass_ctx
def ingest(
    ctx: Context, path: str | None, demo: bool, if_missing: bool, workers: int | None
) -> None:
    """Ingest PATH (JSONL or CSV) or the demo corpus as a new snapshot, then make it live."""
    from corpus.ingest import IngestError, ingest_demo, ingest_file
    from corpus.store import SnapshotStore

    if demo == (path is not None):
        raise click.UsageError("give either PATH or --demo")
    if if_missing:
        live = SnapshotStore(ctx.settings.data_dir).live()
        if live is not None:
            click.echo(f"snapshot {live.id} is live; nothing to do")
            return
    progress = sys.stderr.isatty()
    try:
        if demo:
            info = ingest_demo(ctx.settings.data_dir, progress=progress, workers=workers)
        else:
            assert path is not None
            info = ingest_file(path, ctx.settings.data_dir, progress=progress, workers=workers)
    except IngestError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"snapshot {info.id} is live")


@main.group()
def snapshots() -> None:
    """List and switch corpus snapshots."""


@snapshots.command("list")
@pass_ctx
def snapshots_list(ctx: Context) -> None:
    from corpus.store import SnapshotStore

    store = SnapshotStore(ctx.settings.data_dir)
    live = store.live()
    for snap in store.list():
        mark = "*" if live is not None and snap.id == live.id else " "
        click.echo(f"{mark} {snap.id}  {snap.created_at}  {snap.source}")


@snapshots.command("activate")
@click.argument("snapshot_id")
@pass_ctx
def snapshots_activate(ctx: Context, snapshot_id: str) -> None:
    from corpus.store import SnapshotStore

    try:
        SnapshotStore(ctx.settings.data_dir).activate(snapshot_id)
    except (KeyError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"unknown snapshot {snapshot_id}") from exc
    click.echo(f"snapshot {snapshot_id} is live")


@main.group()
def keys() -> None:
    """Mint and revoke API keys."""


@keys.command("create")
@click.option(
    "--role", type=click.Choice(["analyst", "admin", "app", "metrics"]), required=True
)
@click.option("--name", default=None, help="A human name for the new principal.")
@click.option("--principal", "principal_id", default=None, help="Add a key to this principal.")
@pass_ctx
def keys_create(ctx: Context, role: str, name: str | None, principal_id: str | None) -> None:
    """Create a principal (or use --principal) and print its new key once."""
    if principal_id is None:
        principal_id = ctx.accounts.create_principal(name=name or role, role=role)
    issued = ctx.accounts.issue_principal_key(principal_id)
    click.echo(f"principal: {principal_id}", err=True)
    click.echo(issued.token)


@keys.command("revoke")
@click.argument("key_id")
@pass_ctx
def keys_revoke(ctx: Context, key_id: str) -> None:
    if not ctx.accounts.revoke_any_key(key_id):
        raise click.ClickException(f"no active key {key_id}")
    click.echo(f"revoked {key_id}")


@main.command("ensure-admin")
@pass_ctx
def ensure_admin(ctx: Context) -> None:
    """Make sure an admin key exists: take PRIVTEXT_ADMIN_KEY, or mint one and print it once."""
    accounts = ctx.accounts
    given = os.environ.get("PRIVTEXT_ADMIN_KEY")
    if accounts.has_admin():
        if given and not accounts.key_is_valid(given):
            click.echo("warning: PRIVTEXT_ADMIN_KEY is not a valid key here", err=True)
        click.echo("an admin key already exists")
        return
    pid = accounts.create_principal(name="admin", role="admin")
    if given:
        try:
            accounts.issue_principal_key(pid, token=given)
        except ValueError as exc:
            raise click.ClickException(
                "PRIVTEXT_ADMIN_KEY must look like ptk_<hex id>_<secret>"
            ) from exc
        click.echo("admin key taken from PRIVTEXT_ADMIN_KEY")
        return
    token = accounts.issue_principal_key(pid).token
    key_file = os.path.join(ctx.settings.data_dir, "admin-key.txt")
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    click.echo("")
    click.echo("  Admin API key (shown once; also saved with mode 0600 to")
    click.echo(f"  {key_file} -- move it somewhere safe and delete that file):")
    click.echo(f"  {token}")
    click.echo("")


@main.command()
@click.option(
    "--bind",
    default=None,
    help="Address to listen on (default: PRIVTEXT_BIND, else 127.0.0.1:8000).",
)
@click.option("--workers", type=int, default=None, help="gunicorn workers (default: config).")
@pass_ctx
def serve(ctx: Context, bind: str | None, workers: int | None) -> None:
    """Run the service under gunicorn (settings: service/gunicorn_conf.py).

    gunicorn runs with this interpreter (``python -m gunicorn``), so the command works
    without the virtual environment on PATH; the data directory (``--data-dir``) and every
    PRIVTEXT_* setting reach the workers through the environment."""
    os.environ["PRIVTEXT_DATA_DIR"] = ctx.settings.data_dir
    args = [sys.executable, "-m", "gunicorn", "--config", "python:service.gunicorn_conf"]
    if bind:
        args += ["--bind", bind]
    if workers:
        args += ["--workers", str(workers)]
    args.append("service.wsgi:app")
    os.execv(sys.executable, args)


# Ledger administration (analysts, budget, cap, audit): service/cli/accounts.py.
from service.cli.accounts import COMMANDS as _ADMIN_COMMANDS  # noqa: E402 - needs pass_ctx above

for _command in _ADMIN_COMMANDS:
    main.add_command(_command)
from service.cli.embeddings import embed_corpus  # noqa: E402 - needs pass_ctx above

main.add_command(embed_corpus)

from service.cli.worker import worker as _worker  # noqa: E402 - needs pass_ctx above

main.add_command(_worker)


if __name__ == "__main__":  # pragma: no cover
    main()
