"""``privtext analysts|budget|cap|ledger|audit``: the admin API's tasks from the command line.

Registered on the ``privtext`` group by ``service.cli``; reads the same settings (state store
URL) as the app, so it works against SQLite or PostgreSQL alike.
"""

from __future__ import annotations

from datetime import datetime
from typing import IO

import click

from mechanisms.errors import InvalidParameterError
from mechanisms.ledger import Budget
from service.accounts import Accounts, Analyst, UnknownAnalyst
from service.cli import Context, pass_ctx
from service.json_out import finite
from service.ledger import audit
from service.ledger.sql import SqlLedger


def _budget(epsilon: float, delta: float) -> Budget:
    try:
        return Budget(epsilon, delta)
    except InvalidParameterError as exc:
        raise click.BadParameter(str(exc)) from exc


def _analyst(accounts: Accounts, analyst_id: str) -> Analyst:
    try:
        return accounts.analyst(analyst_id)
    except UnknownAnalyst as exc:
        raise click.ClickException(f"no analyst {analyst_id}") from exc


@click.group()
def analysts() -> None:
    """Create, list and disable analysts."""


@analysts.command("create")
@click.argument("name")
@click.option("--epsilon", type=float, default=None, help="Initial budget epsilon (> 0).")
@click.option(
    "--delta", type=float, default=None, help="Budget delta in (0, 1e-3]; with --epsilon."
)
@click.option("--key/--no-key", default=True, show_default=True, help="Issue a key and print it.")
@pass_ctx
def analysts_create(
    ctx: Context, name: str, epsilon: float | None, delta: float | None, key: bool
) -> None:
    """Create analyst NAME; prints its id (stderr) and its key once (stdout)."""
    if (epsilon is None) != (delta is None):
        raise click.BadParameter("give --epsilon and --delta together (or neither)")
    budget = _budget(epsilon, delta) if epsilon is not None and delta is not None else None
    accounts = ctx.accounts
    analyst = accounts.create_analyst(name, budget)
    click.echo(f"analyst: {analyst.id}", err=True)
    if key:
        click.echo(accounts.issue_key(analyst).token)


@analysts.command("list")
@pass_ctx
def analysts_list(ctx: Context) -> None:
    """One line per analyst: id, name, state, budget and admission-bound epsilon spent."""
    accounts = ctx.accounts
    for a in accounts.analysts():
        rem = accounts.remaining(a, tight=False)
        budget = f"eps={rem.budget.epsilon:g} delta={rem.budget.delta:g}" if rem.budget else "none"
        state = "disabled" if a.disabled else "active"
        click.echo(f"{a.id}  {a.name}  {state}  budget {budget}  spent {rem.spent_epsilon:.6g}")


@analysts.command("disable")
@click.argument("analyst_id")
@pass_ctx
def analysts_disable(ctx: Context, analyst_id: str) -> None:
    """Disable ANALYST_ID: every key of it stops working."""
    accounts = ctx.accounts
    accounts.disable(_analyst(accounts, analyst_id))
    click.echo(f"disabled {analyst_id}")


@click.group("budget")
def budget_group() -> None:
    """Set, raise and show an analyst's (epsilon, delta) budget."""


@budget_group.command("set")
@click.argument("analyst_id")
@click.option("--epsilon", type=float, required=True, help="Epsilon (> 0).")
@click.option("--delta", type=float, required=True, help="Delta in (0, 1e-3].")
@pass_ctx
def budget_set(ctx: Context, analyst_id: str, epsilon: float, delta: float) -> None:
    accounts = ctx.accounts
    analyst = _analyst(accounts, analyst_id)
    b = accounts.set_budget(analyst, _budget(epsilon, delta))
    click.echo(f"{analyst_id}: epsilon={b.epsilon:g} delta={b.delta:g}")


@budget_group.command("raise")
@click.argument("analyst_id")
@click.option("--epsilon", type=float, default=0.0)
@click.option("--delta", type=float, default=0.0)
@pass_ctx
def budget_raise(ctx: Context, analyst_id: str, epsilon: float, delta: float) -> None:
    accounts = ctx.accounts
    analyst = _analyst(accounts, analyst_id)
    try:
        b = accounts.raise_budget(analyst, epsilon=epsilon, delta=delta)
    except InvalidParameterError as exc:
        raise click.BadParameter(str(exc)) from exc
    click.echo(f"{analyst_id}: epsilon={b.epsilon:g} delta={b.delta:g}")


@budget_group.command("show")
@click.argument("analyst_id")
@pass_ctx
def budget_show(ctx: Context, analyst_id: str) -> None:
    """The analyst's figures as JSON (admission bound and tight PLD figure)."""
    import json

    accounts = ctx.accounts
    rem = accounts.remaining(_analyst(accounts, analyst_id), tight=True).to_dict()
    click.echo(json.dumps(finite(rem), indent=2, allow_nan=False))


@click.group()
def cap() -> None:
    """The corpus-wide cap that binds all analysts together."""


@cap.command("set")
@click.option("--epsilon", type=float, required=True, help="Epsilon (> 0).")
@click.option("--delta", type=float, required=True, help="Delta in (0, 1e-3].")
@pass_ctx
def cap_set(ctx: Context, epsilon: float, delta: float) -> None:
    ctx.accounts.set_cap(_budget(epsilon, delta))
    click.echo(f"corpus cap: epsilon={epsilon:g} delta={delta:g}")


@cap.command("show")
@pass_ctx
def cap_show(ctx: Context) -> None:
    import json

    rem = ctx.accounts.cap().to_dict()
    click.echo(json.dumps(finite(rem), indent=2, allow_nan=False))


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
    from datetime import UTC

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
    from service.ledger.retention import prune_refused

    days = older_than_days or ctx.settings.refused_audit_retention_days
    if days <= 0:
        click.echo("retention is 0: refused queries' rows are kept", err=True)
        return
    n = prune_refused(ctx.engine, retention_days=days)
    click.echo(f"{n} refused entries older than {days} days deleted", err=True)


COMMANDS: list[click.Command] = [analysts, budget_group, cap, ledger_group, audit_group]
