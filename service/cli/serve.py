"""``privtext serve``: the HTTP service under gunicorn.

Registered on the ``privtext`` group by ``service/cli/__init__.py``.
"""

from __future__ import annotations

import os
import sys

import click

from service.cli.context import Context, pass_ctx


@click.command()
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


COMMANDS: list[click.Command] = [serve]
