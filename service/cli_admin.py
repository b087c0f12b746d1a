"""``privtext analysts|budget|cap|ledger|audit``: the admin API's tasks from the command line.

Registered on the ``privtext`` group by ``service.cli``; reads the same settings (state store
URL) as the app, so it works against SQLite or PostgreSQL alike.
"""

from __future__ import annotations

from datetime import datetime
from typing import IO

import click
from sqlalchemy import select, update

from mechanisms.errors import InvalidParameterError
from mechanisms.ledger import Budget
from service.cli import Context, pass_ctx
from service.json_out import finite
from service.ledger import audit
from service.ledger.sql import SqlLedger
from service.tables import principals


def _budget(epsilon: float, delta: float) -> Budget:
    try:
        return Budget(epsilon, delta)
    except InvalidParameterError as exc:
        raise click.BadParameter(str(exc)) from exc


def _analyst(ctx: Context, analyst_id: str) -> None:
    with ctx.engine.connect() as conn:
        row = conn.execute(
            select(principals.c.id).where(
                principals.c.id == analyst_id, principals.c.role == "analyst"
            )
        ).first()
    if row is None:
        raise click.ClickException(f"no analyst {analyst_id}")


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
    from service.auth import create_principal, issue_key

    if (epsilon is None) != (delta is None):
        raise click.BadParameter("give --epsilon and --delta together (or neither)")
    budget = _budget(epsilon, delta) if epsilon is not None and delta is not None else None
    pid = create_principal(ctx.engine, name=name, role="analyst")
    if budget is not None:
        SqlLedger(ctx.engine).set_budget(pid, budget)
    click.echo(f"analyst: {pid}", err=True)
    if key:
        click.echo(issue_key(ctx.engine, pid))


@analysts.command("list")
@pass_ctx
def analysts_list(ctx: Context) -> None:
    """One line per analyst: id, name, state, budget and admission-bound epsilon spent."""
    ledger = SqlLedger(ctx.engine)
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(principals)
            .where(principals.c.role == "analyst")
            .order_by(principals.c.created_at, principals.c.id)
        ).all()
    for r in rows:
        rem = ledger.remaining(r.id, tight=False)
        budget = f"eps={rem.budget.epsilon:g} delta={rem.budget.delta:g}" if rem.budget else "none"
        state = "disabled" if r.disabled else "active"
        click.echo(f"{r.id}  {r.name}  {state}  budget {budget}  spent {rem.spent_epsilon:.6g}")


@analysts.command("disable")
@click.argument("analyst_id")
@pass_ctx
def analysts_disable(ctx: Context, analyst_id: str) -> None:
    """Disable ANALYST_ID: every key of it stops working."""
    _analyst(ctx, analyst_id)
    with ctx.engine.begin() as conn:
        conn.execute(update(principals).where(principals.c.id == analyst_id).values(disabled=True))
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
    _analyst(ctx, analyst_id)
    b = SqlLedger(ctx.engine).set_budget(analyst_id, _budget(epsilon, delta))
    click.echo(f"{analyst_id}: epsilon={b.epsilon:g} delta={b.delta:g}")


@budget_group.command("raise")
@click.argument("analyst_id")
@click.option("--epsilon", type=float, default=0.0)
@click.option("--delta", type=float, default=0.0)
@pass_ctx
def budget_raise(ctx: Context, analyst_id: str, epsilon: float, delta: float) -> None:
    _analyst(ctx, analyst_id)
    try:
        b = SqlLedger(ctx.engine).raise_budget(analyst_id, epsilon=epsilon, delta=delta)
    except InvalidParameterError as exc:
        raise click.BadParameter(str(exc)) from exc
    click.echo(f"{analyst_id}: epsilon={b.epsilon:g} delta={b.delta:g}")


@budget_group.command("show")
@click.argument("analyst_id")
@pass_ctx
def budget_show(ctx: Context, analyst_id: str) -> None:
    """The analyst's figures as JSON (admission bound and tight PLD figure)."""
    import json

    _analyst(ctx, analyst_id)
    rem = SqlLedger(ctx.engine).remaining(analyst_id).to_dict()
    click.echo(json.dumps(finite(rem), indent=2, allow_nan=False))


@click.group()
def cap() -> None:
    """The corpus-wide cap that binds all analysts together."""


@cap.command("set")
@click.option("--epsilon", type=float, required=True, help="Epsilon (> 0).")
@click.option("--delta", type=float, required=True, help="Delta in (0, 1e-3].")
@pass_ctx
def cap_set(ctx: Context, epsilon: float, delta: float) -> None:
    SqlLedger(ctx.engine).set_corpus_cap(_budget(epsilon, delta))
    click.echo(f"corpus cap: epsilon={epsilon:g} delta={delta:g}")


@cap.command("show")
@pass_ctx
def cap_show(ctx: Context) -> None:
    import json

    rem = SqlLedger(ctx.engine).corpus_remaining().to_dict()
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
