"""``privtext ledger`` and ``privtext audit``: check the stored spends against the ledger's
entries, export and prune the audit log.

Registered on the ``privtext`` group by ``service/cli/__init__.py``; reads the same settings
(state store URL) as the app, so it works against SQLite or PostgreSQL alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import IO

import click

from service.cli.context import Context, pass_ctx
from service.store import audit
from service.store.ledger import SqlLedger
from service.store.retention import prune_refused


@click.group("ledger")
def ledger_group() -> None:
    """Check (and repair) the stored spends against the ledger's entries."""


@ledger_group.command("recompute")
@click.option("--apply", is_flag=True, help="Write the recomputed spends (default: only show).")
@pass_ctx
def ledger_recompute(ctx: Context, apply: bool) -> None:
    """Sum every budget's and the cap's live entries again and compare with what is stored.

    Exit status 1 when a stored spend is below its entries' (under-charged) and --apply was
    not given."""
    rows = SqlLedger(ctx.engine).recompute_spends(apply=apply)
    low = False
    for r in rows:
        who = "corpus cap" if r["scope"] == "corpus" else f"analyst {r['principal_id']}"
        stored, fresh = r["stored_epsilon"], r["recomputed_epsilon"]
        flag = ""
        if stored < fresh - 1e-9:
            flag, low = "  UNDER-CHARGED", True
        click.echo(
            f"{who}: stored epsilon {stored:.6g}, from {r['entries']} live entries "
            f"{fresh:.6g} (delta {r['delta']:g}){flag}"
        )
    if apply:
        click.echo("stored spends replaced by the recomputed ones")
    elif low:
        raise SystemExit(1)


@click.group("audit")
def audit_group() -> None:
    """The audit log of every query (append-only, but refused queries' rows expire)."""


@audit_group.command("export")
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json")
@click.option("--analyst", default=None, help="Only this analyst's queries.")
@click.option("--since", type=click.DateTime(), default=None, help="UTC, inclusive.")
@click.option("--until", type=click.DateTime(), default=None, help="UTC, exclusive.")
@click.option("--output", "-o", type=click.File("w"), default="-", show_default=True)
@pass_ctx
def audit_export(
    ctx: Context,
    fmt: str,
    analyst: str | None,
    since: datetime | None,
    until: datetime | None,
    output: IO[str],
) -> None:
    """Write the whole (filtered) audit log, oldest first."""
    rows: list[dict] = []  # type: ignore[type-arg]
    after = 0
    while True:
        page = audit.entries(
            ctx.engine,
            principal_id=analyst,
            since=since.replace(tzinfo=UTC) if since else None,
            until=until.replace(tzinfo=UTC) if until else None,
            limit=5000,
            after_id=after,
        )
        rows.extend(page)
        if len(page) < 5000:
            break
        after = page[-1]["id"]
    output.write(audit.to_json(rows) + "\n" if fmt == "json" else audit.to_csv(rows))
    click.echo(f"{len(rows)} entries", err=True)


@audit_group.command("prune")
@click.option(
    "--older-than-days",
    type=click.IntRange(min=1),
    default=None,
    help="Retention in days (default: PRIVTEXT_REFUSED_AUDIT_RETENTION_DAYS, 0 keeps all).",
)
@pass_ctx
def audit_prune(ctx: Context, older_than_days: int | None) -> None:
    """Delete refused queries' rows older than the retention (charged rows are kept for ever).

    ``privtext worker`` does this every hour; this command is for hosts without a worker
    (cron) and for the operator."""
    days = older_than_days or ctx.settings.refused_audit_retention_days
    if days <= 0:
        click.echo("retention is 0: refused queries' rows are kept", err=True)
        return
    n = prune_refused(ctx.engine, retention_days=days)
    click.echo(f"{n} refused entries older than {days} days deleted", err=True)


COMMANDS: list[click.Command] = [ledger_group, audit_group]
