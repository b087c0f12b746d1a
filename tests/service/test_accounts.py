"""``service/accounts.py``, the one application layer of the admin API and the CLI, called
directly; and the typed ``Services`` container, whose ledger ``create_app`` lets a caller
inject."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine

from mechanisms.errors import InvalidParameterError
from mechanisms.ledger import Budget
from service import auth
from service.accounts import Accounts, UnknownAnalyst, UnknownKey
from service.app import create_app
from service.job_queue import get_context
from service.services import Services, services
from service.store.db import init_db, make_engine
from service.store.ledger import SqlLedger
from tests.fixtures.app import bearer


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    init_db(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def accounts(engine: Engine) -> Accounts:
    return Accounts(engine, SqlLedger(engine))


def test_only_analysts_are_analysts(accounts: Accounts) -> None:
    admin = accounts.create_principal(name="root", role="admin")
    for unknown in ("nope", admin):
        with pytest.raises(UnknownAnalyst):
            accounts.analyst(unknown)
    assert accounts.analysts() == []


def test_create_list_and_disable(accounts: Accounts) -> None:
    ana = accounts.create_analyst("ana", Budget(1.0, 1e-6))
    bob = accounts.create_analyst("bob")
    assert ana.budget == Budget(1.0, 1e-6) and bob.budget is None
    assert [a.id for a in accounts.analysts()] == [ana.id, bob.id]
    assert [a.id for a in accounts.analysts(limit=1, offset=1)] == [bob.id]
    assert accounts.analyst(ana.id).to_dict()["budget"] == {"epsilon": 1.0, "delta": 1e-6}
    token = accounts.issue_key(ana).token
    assert accounts.key_is_valid(token)
    assert accounts.disable(ana).disabled is True
    assert not accounts.key_is_valid(token)


def test_rotation_and_revocation_stay_within_the_analyst(
    accounts: Accounts, engine: Engine
) -> None:
    ana, bob = accounts.create_analyst("ana"), accounts.create_analyst("bob")
    first, bobs = accounts.issue_key(ana), accounts.issue_key(bob)
    with pytest.raises(UnknownKey):
        accounts.rotate_key(ana, bobs.key_id)
    assert len(accounts.keys(ana)) == 1  # a refused rotation issues nothing
    assert accounts.key_is_valid(bobs.token)
    second = accounts.rotate_key(ana, first.key_id)
    assert second.revoked_key_id == first.key_id
    assert auth.authenticate(engine, second.token) is not None
    assert auth.authenticate(engine, first.token) is None
    accounts.revoke_key(ana, second.key_id)
    with pytest.raises(UnknownKey):
        accounts.revoke_key(ana, second.key_id)
    assert [k.revoked_at is not None for k in accounts.keys(ana)] == [True, True]


def test_budgets_and_the_cap_go_through_the_ledger(accounts: Accounts) -> None:
    ana = accounts.create_analyst("ana")
    assert accounts.set_budget(ana, Budget(1.0, 1e-6)) == Budget(1.0, 1e-6)
    assert accounts.raise_budget(ana, epsilon=0.5) == Budget(1.5, 1e-6)
    with pytest.raises(InvalidParameterError):
        accounts.raise_budget(ana, delta=1e-3)  # past the delta limit
    assert accounts.remaining(ana, tight=False).budget == Budget(1.5, 1e-6)
    assert accounts.cap().budget is None
    assert accounts.set_cap(Budget(10.0, 1e-5)).budget == Budget(10.0, 1e-5)


class CountingLedger(SqlLedger):
    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.reads = 0

    def remaining(self, principal_id: str, *, tight: bool = True):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().remaining(principal_id, tight=tight)


def test_an_injected_ledger_serves_every_route(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = make_engine(url)
    init_db(engine)
    ledger = CountingLedger(engine)
    app: Flask = create_app(
        {"data_dir": str(tmp_path / "data"), "database_url": url, "testing": True},
        ledger=ledger,
    )
    try:
        svc = services(app)
        assert isinstance(svc, Services) and svc.ledger is ledger
        assert svc.accounts.ledger is ledger
        admin = svc.accounts.issue_principal_key(
            svc.accounts.create_principal(name="root", role="admin")
        ).token
        ana = svc.accounts.create_analyst("ana", Budget(1.0, 1e-6))
        token = svc.accounts.issue_key(ana).token
        client = app.test_client()
        assert client.get("/v1/budget", headers=bearer(token)).status_code == 200
        assert client.get(f"/v1/admin/analysts/{ana.id}", headers=bearer(admin)).status_code == 200
        assert ledger.reads == 2
        with app.app_context():
            assert get_context().ledger is ledger
    finally:
        services(app).engine.dispose()
        engine.dispose()
