"""What every ``privtext`` command reads: the settings (``PRIVTEXT_*``, ``--data-dir``) and,
opened on first use, the state store and the accounts over it.

The root group (``service/cli/__init__.py``) makes one :class:`Context` per invocation; the
command modules take it with ``@pass_ctx``. They import this module only, never the root
group, which registers them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from sqlalchemy import Engine

from service.accounts import Accounts
from service.config import Settings
from service.hardening import private_dir
from service.store.db import engine_for, init_db
from service.store.ledger import SqlLedger


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
