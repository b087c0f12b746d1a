"""The ``privtext`` command: ingest corpora, manage keys, analysts, budgets and snapshots,
run the job worker, serve.

Every command reads the same settings as the app (``PRIVTEXT_*`` environment variables);
``--data-dir`` overrides ``PRIVTEXT_DATA_DIR``. This module is the root group and registers
the command groups, one module each; they import ``service/cli/context.py``, never this one:

* ``corpus``: ``ingest``, ``snapshots``;
* ``keys``: ``keys``, ``ensure-admin``;
* ``accounts``: ``analysts``, ``budget``, ``cap`` (``service/accounts.py``, as the admin API);
* ``audit``: ``ledger``, ``audit``;
* ``embeddings``: ``embed-corpus``;
* ``worker``: ``worker``;
* ``serve``: ``serve``;
* ``federation``: ``federation serve``, ``federation join`` (Flower, imported when a run starts).
"""

from __future__ import annotations

import click

from service.cli import accounts, audit, corpus, embeddings, federation, keys, serve, worker
from service.cli.context import Context
from service.hardening import restrict_umask


@click.group()
@click.option("--data-dir", envvar="PRIVTEXT_DATA_DIR", default=None, help="State directory.")
@click.pass_context
def main(ctx: click.Context, data_dir: str | None) -> None:
    """privtext: differentially private analytics over a chat corpus."""
    restrict_umask()  # state, snapshots, keys and job files: readable by their owner only
    ctx.obj = Context(data_dir)


for _group in (corpus, keys, accounts, audit, embeddings, worker, serve, federation):
    for _command in _group.COMMANDS:
        main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
