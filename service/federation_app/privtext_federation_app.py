"""The Flower App's components (``flwr run`` ships this directory): the coordinator's
ServerApp and a silo's ClientApp, the latter wired to the silo's own state store.

A SuperNode started by ``privtext federation join`` carries its silo in its node config:
``data-dir`` (the silo's privtext data directory; its ``PRIVTEXT_*`` settings apply, so the
ledger is the silo's own database) and ``population-size`` (the silo's declared, public
number of senders). The rounds are recorded in the silo's ledger under the principal
``federation`` (an admin without a key, created on first use) and charged to its cap alone.
"""

from __future__ import annotations

from flwr.app import Context

from federation.apps import make_client_app, make_server_app
from federation.silo import PRINCIPAL, Silo
from service import auth
from service.config import Settings
from service.store.db import engine_for, init_db
from service.store.ledger import SqlLedger


def open_silo(context: Context) -> Silo:
    data_dir = str(context.node_config["data-dir"])
    settings = Settings.load({"data_dir": data_dir})
    engine = engine_for(settings)
    init_db(engine)
    if auth.get_principal(engine, PRINCIPAL, role="admin") is None:
        # who the silo's rounds are recorded under (charged to the cap alone); it has no key
        auth.create_principal(engine, name=PRINCIPAL, role="admin", principal_id=PRINCIPAL)
    return Silo(data_dir, SqlLedger(engine), int(context.node_config["population-size"]))


clientapp = make_client_app(open_silo)
serverapp = make_server_app()
