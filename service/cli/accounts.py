"""``privtext analysts|budget|cap``: analysts, their budgets and the corpus-wide cap from the
command line, through ``service/accounts.py`` like the admin API (``/v1/admin/*``).

Registered on the ``privtext`` group by ``service/cli/__init__.py``; reads the same settings
(state store URL) as the app, so it works against SQLite or PostgreSQL alike.
"""

from __future__ import annotations

import json

import click

from mechanisms.errors import InvalidParameterError
from mechanisms.ledger import Budget
from service.accounts import Accounts, Analyst, NameTaken, UnknownAnalyst
from service.cli.context import Context, pass_ctx
from service.json_out import finite


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
    try:
        analyst = accounts.create_analyst(name, budget)
    except NameTaken as exc:
        raise click.ClickException(f"{exc}; names are unique") from exc
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
    rem = ctx.accounts.cap_view()
    click.echo(json.dumps(finite(rem), indent=2, allow_nan=False))


COMMANDS: list[click.Command] = [analysts, budget_group, cap]
