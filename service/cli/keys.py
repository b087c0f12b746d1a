"""``privtext keys`` and ``privtext ensure-admin``: principals of any role and their API keys.

Through ``service/accounts.py``, as the admin API. Registered on the ``privtext`` group by
``service/cli/__init__.py``.
"""

from __future__ import annotations

import os

import click

from service.cli.context import Context, pass_ctx


@click.group()
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


@click.command("ensure-admin")
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


COMMANDS: list[click.Command] = [keys, ensure_admin]
