"""API keys and roles.

A key is ``ptk_<key id>_<secret>``: the key id finds the row, the secret (256 random bits)
is checked against ``sha256(salt || secret)`` in constant time. Keys are stored only as salted
hashes. A slow password hash is not needed because the secret is a random 256-bit value, not a
human-chosen password (the same reasoning as GitHub's and Stripe's tokens), and a fast check
keeps authentication off the latency budget of every request.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from flask import current_app, g, request
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from service.errors import APIError
from service.store.tables import api_keys, principals

#: admin: manages analysts, budgets, jobs; analyst: asks private queries; app: an internal
#: application that embeds its own texts (no corpus access, no budget); metrics: a monitoring
#: scraper, which may read ``/metrics`` and nothing else.
ROLES = ("admin", "analyst", "app", "metrics")
TOKEN_PREFIX = "ptk"


@dataclass(frozen=True)
class Principal:
    id: str
    name: str
    role: str
    key_id: str


def _hash_secret(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


class DuplicateName(ValueError):
    """The state store's unique index refused the name (analysts' names are unique)."""


def create_principal(
    engine: Engine, *, name: str, role: str, principal_id: str | None = None
) -> str:
    """Create a principal (admin or analyst) and return its id; raises DuplicateName when an
    analyst of that name exists (``principals_analyst_name``, a unique partial index)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    pid = principal_id or f"{role[:2]}_{uuid.uuid4().hex[:12]}"
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(principals).values(
                    id=pid, name=name, role=role, disabled=False, created_at=_now()
                )
            )
    except IntegrityError as exc:
        if role == "analyst" and principal_named(engine, name, role=role):
            raise DuplicateName(name) from exc
        raise
    return pid


def principal_named(engine: Engine, name: str, *, role: str) -> bool:
    """Whether a principal of ``role`` is named ``name`` (disabled ones included)."""
    query = select(principals.c.id).where(principals.c.name == name, principals.c.role == role)
    with engine.connect() as conn:
        return conn.execute(query.limit(1)).first() is not None


def issue_key(engine: Engine, principal_id: str, *, token: str | None = None) -> str:
    """Issue a new API key for ``principal_id``; the token is returned once and never stored.

    ``token`` lets an operator supply a pre-generated admin key (``PRIVTEXT_ADMIN_KEY``); it
    must have the ``ptk_<id>_<secret>`` shape.
    """
    if token is not None:
        key_id, secret = parse_token(token)
    else:
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    with engine.begin() as conn:
        conn.execute(
            insert(api_keys).values(
                id=key_id,
                principal_id=principal_id,
                salt=salt,
                secret_hash=_hash_secret(salt, secret),
                created_at=_now(),
                revoked_at=None,
            )
        )
    return f"{TOKEN_PREFIX}_{key_id}_{secret}"


def revoke_key(engine: Engine, key_id: str) -> bool:
    with engine.begin() as conn:
        res = conn.execute(
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=_now())
        )
    return res.rowcount > 0


def parse_token(token: str) -> tuple[str, str]:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        raise ValueError("malformed API key")
    if not all(c in "0123456789abcdef" for c in parts[1]) or len(parts[1]) > 32:
        raise ValueError("malformed API key")
    return parts[1], parts[2]


def authenticate(engine: Engine, token: str) -> Principal | None:
    """The principal holding ``token``, or None when it is unknown, revoked or disabled."""
    try:
        key_id, secret = parse_token(token)
    except ValueError:
        return None
    with engine.connect() as conn:
        row = conn.execute(
            select(
                api_keys.c.salt,
                api_keys.c.secret_hash,
                api_keys.c.revoked_at,
                principals.c.id,
                principals.c.name,
                principals.c.role,
                principals.c.disabled,
            )
            .join(principals, principals.c.id == api_keys.c.principal_id)
            .where(api_keys.c.id == key_id)
        ).first()
    if row is None:
        # Spend the same hashing work so that timing does not tell unknown ids apart.
        _hash_secret("00" * 16, secret)
        return None
    ok = hmac.compare_digest(_hash_secret(row.salt, secret), row.secret_hash)
    if not ok or row.revoked_at is not None or row.disabled:
        return None
    return Principal(id=row.id, name=row.name, role=row.role, key_id=key_id)


def has_admin(engine: Engine) -> bool:
    with engine.connect() as conn:
        row = conn.execute(
            select(api_keys.c.id)
            .join(principals, principals.c.id == api_keys.c.principal_id)
            .where(principals.c.role == "admin", api_keys.c.revoked_at.is_(None))
            .limit(1)
        ).first()
    return row is not None


@dataclass(frozen=True)
class PrincipalRecord:
    """A principal as stored (``created_at`` as the store returns it: naive UTC on SQLite)."""

    id: str
    name: str
    role: str
    disabled: bool
    created_at: datetime


@dataclass(frozen=True)
class KeyRecord:
    """One API key of a principal, without its secret (only its salted hash is stored)."""

    id: str
    created_at: datetime
    revoked_at: datetime | None


def _record(row: Any) -> PrincipalRecord:
    return PrincipalRecord(row.id, row.name, row.role, bool(row.disabled), row.created_at)


def get_principal(engine: Engine, principal_id: str, *, role: str) -> PrincipalRecord | None:
    """The principal ``principal_id`` if it has ``role``, else None."""
    with engine.connect() as conn:
        row = conn.execute(
            select(principals).where(principals.c.id == principal_id, principals.c.role == role)
        ).first()
    return None if row is None else _record(row)


def list_principals(
    engine: Engine, *, role: str, limit: int | None = None, offset: int = 0
) -> list[PrincipalRecord]:
    """The principals of ``role``, oldest first (ties by id); ``limit`` None: all of them."""
    query = (
        select(principals)
        .where(principals.c.role == role)
        .order_by(principals.c.created_at, principals.c.id)
    )
    if limit is not None:
        query = query.limit(limit).offset(offset)
    with engine.connect() as conn:
        return [_record(row) for row in conn.execute(query)]


def disable_principal(engine: Engine, principal_id: str) -> None:
    """Disable ``principal_id``: every key of it stops authenticating (a cached lookup lives
    on for at most ``key_cache_seconds``)."""
    with engine.begin() as conn:
        conn.execute(
            update(principals).where(principals.c.id == principal_id).values(disabled=True)
        )


def principal_keys(engine: Engine, principal_id: str) -> list[KeyRecord]:
    """Every key ``principal_id`` was issued, revoked ones included, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(api_keys.c.id, api_keys.c.created_at, api_keys.c.revoked_at)
            .where(api_keys.c.principal_id == principal_id)
            .order_by(api_keys.c.created_at)
        ).all()
    return [KeyRecord(r.id, r.created_at, r.revoked_at) for r in rows]


def has_active_key(engine: Engine, principal_id: str, key_id: str) -> bool:
    """Whether ``key_id`` is a key of ``principal_id`` that is not revoked."""
    with engine.connect() as conn:
        row = conn.execute(
            select(api_keys.c.id).where(
                api_keys.c.id == key_id,
                api_keys.c.principal_id == principal_id,
                api_keys.c.revoked_at.is_(None),
            )
        ).first()
    return row is not None


F = TypeVar("F", bound=Callable[..., Any])


def require(*roles: str) -> Callable[[F], F]:
    """Declare the roles that may call a view: 401 without a valid key, 403 for another role."""
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = current_principal()
            if principal.role not in roles:
                raise APIError(403, "forbidden", "This key's role may not call this endpoint.")
            return view(*args, **kwargs)

        wrapper.required_roles = roles  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


def public(view: F) -> F:
    """Declare a view that needs no key (health, readiness, the spec)."""
    view.required_roles = ()  # type: ignore[attr-defined]
    return view


class KeyCache:
    """Successful key lookups of one worker, reused for ``ttl`` seconds (a short time: a
    revocation reaches every worker within it). Keyed by a digest of the whole token, so a
    wrong secret never matches; failed lookups are never kept."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[bytes, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> Principal | None:
        with self._lock:
            hit = self._entries.get(digest)
            if hit is None:
                return None
            if hit[1] <= time.monotonic():
                del self._entries[digest]
                return None
            return hit[0]

    def put(self, digest: bytes, principal: Principal) -> None:
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest] = (principal, time.monotonic() + self.ttl)


class _KeyStore(Protocol):
    """What authentication needs of the app's services (``service.services.Services``)."""

    engine: Engine
    key_cache: KeyCache | None


def _cached_authenticate(svc: _KeyStore, token: str) -> Principal | None:
    cache = svc.key_cache
    if cache is None:
        return authenticate(svc.engine, token)
    digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
    principal = cache.get(digest)
    if principal is None:
        principal = authenticate(svc.engine, token)
        if principal is not None:
            cache.put(digest, principal)
    return principal


def current_principal() -> Principal:
    principal = g.get("principal")
    if principal is not None:
        return principal
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(
            401,
            "unauthorized",
            "A valid API key is required: Authorization: Bearer <key>.",
            headers={"WWW-Authenticate": 'Bearer realm="privtext"'},
        )
    svc: _KeyStore = current_app.extensions["privtext"]
    principal = _cached_authenticate(svc, token.strip())
    if principal is None:
        raise APIError(
            401,
            "unauthorized",
            "The API key is unknown, revoked or disabled.",
            headers={"WWW-Authenticate": 'Bearer realm="privtext", error="invalid_token"'},
        )
    g.principal = principal
    return principal
