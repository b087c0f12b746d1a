"""Analysts, their keys and budgets, and the corpus-wide cap: the one application layer that
the admin API (``/v1/admin/*``) and the ``privtext`` command (``analysts``, ``budget``,
``cap``, ``keys``, ``ensure-admin``) both call.

It holds no state of its own: principals and keys are read and written through
``service/auth.py``, budgets, spends and the cap through the ledger's public interface
(``mechanisms.ledger.Ledger``). What the callers add is only their own input checking and
presentation (a JSON body and HTTP statuses, or options and lines of text).

An analyst is a principal with role ``analyst``. Operations on one take an :class:`Analyst`,
which only :meth:`Accounts.analyst` (or :meth:`Accounts.create_analyst`) returns, so an id
that is unknown, or that belongs to an admin, never reaches a budget or a key: looking it up
raises :class:`UnknownAnalyst`. A key that is not an active key of that analyst raises
:class:`UnknownKey`. Budgets are ``mechanisms.ledger.Budget`` values, validated where they
are made (``InvalidParameterError``: epsilon finite and > 0, delta in (0, 1e-3]); a raise that
would leave delta above 1e-3 raises ``InvalidParameterError`` from the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from mechanisms.ledger import Budget, Ledger, LedgerEntry, Remaining
from service import auth
from service.auth import KeyRecord

ANALYST = "analyst"


class UnknownAnalyst(LookupError):
    """No analyst has this id (no principal, or one with another role)."""

    def __init__(self, analyst_id: str) -> None:
        super().__init__(f"no analyst {analyst_id}")
        self.analyst_id = analyst_id


class NameTaken(ValueError):
    """Another analyst already has this name (names are unique among analysts, disabled ones
    included, so that a name in a list, a log or the budget page means one analyst)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"an analyst named {name!r} exists already")
        self.name = name


class UnknownKey(LookupError):
    """This analyst has no active (unrevoked) key with this id."""

    def __init__(self, analyst_id: str, key_id: str) -> None:
        super().__init__(f"no active key {key_id} of analyst {analyst_id}")
        self.analyst_id = analyst_id
        self.key_id = key_id


@dataclass(frozen=True)
class Analyst:
    """An analyst and its budget (None when no budget was ever set)."""

    id: str
    name: str
    disabled: bool
    created_at: datetime
    budget: Budget | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": ANALYST,
            "disabled": self.disabled,
            "created_at": self.created_at.isoformat(),
            "budget": None if self.budget is None else self.budget.to_dict(),
        }


@dataclass(frozen=True)
class IssuedKey:
    """A new key: ``token`` is shown once and never stored; ``revoked_key_id`` is the key a
    rotation replaced."""

    key_id: str
    token: str
    revoked_key_id: str | None = None


class Accounts:
    """Analysts, keys, budgets and the cap over one state store and its ledger."""

    def __init__(self, engine: Engine, ledger: Ledger) -> None:
        self.engine = engine
        self.ledger = ledger

    # -- analysts -------------------------------------------------------------------------

    def _analyst(self, record: auth.PrincipalRecord) -> Analyst:
        return Analyst(
            record.id,
            record.name,
            record.disabled,
            record.created_at,
            self.ledger.get_budget(record.id),
        )

    def analyst(self, analyst_id: str) -> Analyst:
        """The analyst ``analyst_id``; raises UnknownAnalyst."""
        record = auth.get_principal(self.engine, analyst_id, role=ANALYST)
        if record is None:
            raise UnknownAnalyst(analyst_id)
        return self._analyst(record)

    def analysts(self, *, limit: int | None = None, offset: int = 0) -> list[Analyst]:
        """The analysts, oldest first (ties by id); ``limit`` None: all of them."""
        records = auth.list_principals(self.engine, role=ANALYST, limit=limit, offset=offset)
        return [self._analyst(r) for r in records]

    def create_analyst(self, name: str, budget: Budget | None = None) -> Analyst:
        """A new analyst named ``name``, with ``budget`` if given (and no key yet); raises
        NameTaken (nothing created) when an analyst of that name exists. The state store's
        unique index on analysts' names decides between concurrent creations."""
        if auth.principal_named(self.engine, name, role=ANALYST):
            raise NameTaken(name)
        try:
            analyst_id = auth.create_principal(self.engine, name=name, role=ANALYST)
        except auth.DuplicateName:
            raise NameTaken(name) from None
        if budget is not None:
            self.ledger.set_budget(analyst_id, budget)
        return self.analyst(analyst_id)

    def disable(self, analyst: Analyst) -> Analyst:
        """Disable ``analyst``: every key of it stops working. Returns it as stored now."""
        auth.disable_principal(self.engine, analyst.id)
        return self.analyst(analyst.id)

    # -- keys -----------------------------------------------------------------------------

    def keys(self, analyst: Analyst) -> list[KeyRecord]:
        """Every key the analyst was issued, revoked ones included, oldest first."""
        return auth.principal_keys(self.engine, analyst.id)

    def issue_key(self, analyst: Analyst) -> IssuedKey:
        """A new key for ``analyst`` (its other keys keep working)."""
        return self._issue(analyst.id)

    def rotate_key(self, analyst: Analyst, key_id: str) -> IssuedKey:
        """A new key for ``analyst``, then ``key_id`` revoked; raises UnknownKey (nothing
        issued) when ``key_id`` is not an active key of ``analyst``."""
        self._active_key(analyst, key_id)
        issued = self._issue(analyst.id)
        auth.revoke_key(self.engine, key_id)
        return IssuedKey(issued.key_id, issued.token, revoked_key_id=key_id)

    def revoke_key(self, analyst: Analyst, key_id: str) -> None:
        """Revoke ``key_id``; raises UnknownKey when it is not an active key of ``analyst``."""
        self._active_key(analyst, key_id)
        auth.revoke_key(self.engine, key_id)

    def _active_key(self, analyst: Analyst, key_id: str) -> None:
        if not auth.has_active_key(self.engine, analyst.id, key_id):
            raise UnknownKey(analyst.id, key_id)

    def _issue(self, principal_id: str, token: str | None = None) -> IssuedKey:
        token = auth.issue_key(self.engine, principal_id, token=token)
        return IssuedKey(auth.parse_token(token)[0], token)

    # -- principals of any role (operators' keys) -------------------------------------------

    def create_principal(self, *, name: str, role: str) -> str:
        """A new principal of ``role`` (one of ``auth.ROLES``; ValueError otherwise)."""
        return auth.create_principal(self.engine, name=name, role=role)

    def issue_principal_key(self, principal_id: str, *, token: str | None = None) -> IssuedKey:
        """A new key for any principal; ``token`` takes a pre-made ``ptk_<id>_<secret>`` key
        (ValueError when malformed)."""
        return self._issue(principal_id, token)

    def revoke_any_key(self, key_id: str) -> bool:
        """Revoke ``key_id`` whoever holds it; False when no active key has this id."""
        return auth.revoke_key(self.engine, key_id)

    def has_admin(self) -> bool:
        """Whether an admin principal holds an active key."""
        return auth.has_admin(self.engine)

    def key_is_valid(self, token: str) -> bool:
        """Whether ``token`` authenticates (known, not revoked, principal not disabled)."""
        return auth.authenticate(self.engine, token) is not None

    # -- budgets and the cap ----------------------------------------------------------------

    def set_budget(self, analyst: Analyst, budget: Budget) -> Budget:
        """Replace the analyst's budget (what was spent stays spent)."""
        return self.ledger.set_budget(analyst.id, budget)

    def raise_budget(self, analyst: Analyst, *, epsilon: float = 0.0, delta: float = 0.0) -> Budget:
        """Add ``epsilon`` and ``delta`` (both >= 0) to the analyst's budget; raises
        InvalidParameterError for a negative increment or a delta past 1e-3."""
        return self.ledger.raise_budget(analyst.id, epsilon=epsilon, delta=delta)

    def remaining(self, analyst: Analyst, *, tight: bool) -> Remaining:
        """The analyst's budget, spend and what remains (``tight``: with the PLD figure)."""
        return self.ledger.remaining(analyst.id, tight=tight)

    def history(self, analyst: Analyst, *, limit: int, offset: int) -> list[LedgerEntry]:
        """The analyst's ledger entries, newest first."""
        return self.ledger.history(analyst.id, limit=limit, offset=offset)

    def cap(self, *, tight: bool = False) -> Remaining:
        """The corpus-wide cap, what all analysts and training spent against it, and what
        remains."""
        return self.ledger.corpus_remaining(tight=tight)

    def set_cap(self, budget: Budget) -> Remaining:
        """Replace the corpus-wide cap; returns it as :meth:`cap` does."""
        self.ledger.set_corpus_cap(budget)
        return self.cap()

    def cap_view(self) -> dict[str, Any]:
        """The cap's figures as the admin API and ``privtext cap show`` state them: without a
        cap, ``capped`` is false and ``remaining_epsilon`` None (unlimited), never 0."""
        return cap_view(self.cap())


def cap_view(remaining: Remaining) -> dict[str, Any]:
    """``remaining`` (the corpus's figures) with ``capped``, and no remainder when uncapped."""
    figures = remaining.to_dict()
    capped = remaining.budget is not None
    if not capped:
        figures["remaining_epsilon"] = None
    return {"capped": capped, **figures}
