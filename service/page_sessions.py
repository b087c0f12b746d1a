"""Sessions of the budget page: a short-lived random token in a cookie, never the admin key.

A browser cannot send a Bearer header from its address bar, so the budget page signs an admin
in once (``POST /v1/admin/session`` with the key) and gives the browser a session token
instead: 256 random bits from ``secrets``, valid for :data:`SESSION_TTL`. The state store
keeps only the token's SHA-256 (a leaked database row does not sign anyone in), the admin it
belongs to, the key that opened it and its expiry, so every gunicorn worker and host sees the
same sessions. A session dies when it expires, when it is signed out (its row deleted), or
when the key that opened it is revoked or its principal disabled.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, insert, select

from service.auth import Principal
from service.store.tables import api_keys, page_sessions, principals

__all__ = ["SESSION_TTL", "open_session", "session_principal", "close_session", "page_sessions"]

#: How long a signed-in budget page stays signed in (no sliding renewal).
SESSION_TTL = timedelta(minutes=30)
_MAX_TOKEN = 128  # a token is 43 characters; longer cookie values are not looked up


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes: they were stored in UTC."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def open_session(engine: Engine, principal: Principal) -> str:
    """Store a new session for ``principal`` and return its token (shown to the browser only).

    Expired sessions are deleted on the way, so the table stays small.
    """
    token = secrets.token_urlsafe(32)
    now = _now()
    with engine.begin() as conn:
        conn.execute(delete(page_sessions).where(page_sessions.c.expires_at < now))
        conn.execute(
            insert(page_sessions).values(
                token_hash=_hash(token),
                principal_id=principal.id,
                key_id=principal.key_id,
                created_at=now,
                expires_at=now + SESSION_TTL,
            )
        )
    return token


def session_principal(engine: Engine, token: str | None) -> Principal | None:
    """The principal of a live session, or None (unknown, expired, revoked key, disabled)."""
    if not token or len(token) > _MAX_TOKEN:
        return None
    with engine.connect() as conn:
        row = conn.execute(
            select(
                page_sessions.c.expires_at,
                page_sessions.c.key_id,
                api_keys.c.revoked_at,
                principals.c.id,
                principals.c.name,
                principals.c.role,
                principals.c.disabled,
            )
            .join(api_keys, api_keys.c.id == page_sessions.c.key_id)
            .join(principals, principals.c.id == page_sessions.c.principal_id)
            .where(page_sessions.c.token_hash == _hash(token))
        ).first()
    if row is None or _aware(row.expires_at) <= _now():
        return None
    if row.revoked_at is not None or row.disabled:
        return None
    return Principal(id=row.id, name=row.name, role=row.role, key_id=row.key_id)


def close_session(engine: Engine, token: str | None) -> None:
    """Delete the session of ``token`` (nothing happens for an unknown one)."""
    if not token or len(token) > _MAX_TOKEN:
        return
    with engine.begin() as conn:
        conn.execute(delete(page_sessions).where(page_sessions.c.token_hash == _hash(token)))
