"""The audit log: one append-only row per query answered (released, replayed or failed).

Each row holds who asked, when, the normalised query (canonical JSON) and its hash, the corpus
snapshot, the cost, and what was released. Rows are only ever inserted (triggers in
``service.store.ledger_tables`` refuse UPDATE and DELETE). The log also answers replays: the last
released answer to the same normalised query by the same principal on the same snapshot.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from service.store.ledger_tables import audit_log, query_claims

STATUSES = ("released", "replay", "failed", "refused")
CSV_FIELDS = (
    "id",
    "created_at",
    "principal_id",
    "status",
    "snapshot_id",
    "query_hash",
    "query",
    "cost",
    "released",
    "reservation_id",
)


def normalise_query(query: Mapping[str, Any]) -> str:
    """Canonical JSON of a query: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(
        query, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def query_hash(normalised: str) -> str:
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


def _execute(bind: Engine | Connection, stmt: Any, params: Mapping[str, Any] | None = None) -> Any:
    """Run ``stmt`` in the caller's transaction when given a connection, else in one of its
    own."""
    if isinstance(bind, Connection):
        return bind.execute(stmt, params)
    with bind.begin() as conn:
        return conn.execute(stmt, params)


# The statements of the charged path, built once (constructing them anew costs more than
# running them on SQLite).
_INSERT = insert(audit_log)
_FIND_REPLAY = (
    select(audit_log.c.released)
    .where(
        audit_log.c.principal_id == bindparam("principal_id"),
        audit_log.c.snapshot_id == bindparam("snapshot_id"),
        audit_log.c.query_hash == bindparam("qhash"),
        audit_log.c.status == "released",
    )
    .order_by(audit_log.c.id.desc())
    .limit(1)
)
_CLAIM_KEY = (
    query_claims.c.principal_id == bindparam("principal_id"),
    query_claims.c.snapshot_id == bindparam("snapshot_id"),
    query_claims.c.query_hash == bindparam("qhash"),
)
_CLAIM = {
    name: dialect_insert(query_claims)
    .on_conflict_do_nothing()
    # RETURNING tells whether the row went in (psycopg reports no rowcount for ON CONFLICT)
    .returning(query_claims.c.query_hash)
    for name, dialect_insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}
_UNCLAIM = delete(query_claims).where(*_CLAIM_KEY)
_UNCLAIM_STALE = delete(query_claims).where(
    *_CLAIM_KEY, query_claims.c.created_at < bindparam("before")
)


def record(
    bind: Engine | Connection,
    *,
    principal_id: str,
    status: str,
    snapshot_id: str,
    normalised_query: str,
    cost: Mapping[str, Any],
    released: Mapping[str, Any] | None,
    reservation_id: str | None = None,
) -> int:
    """Append one row and return its id (in the caller's transaction when given a
    connection, else in a transaction of its own)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}")
    res = _execute(
        bind,
        _INSERT,
        {
            "created_at": datetime.now(UTC),
            "principal_id": principal_id,
            "status": status,
            "snapshot_id": snapshot_id,
            "query_hash": query_hash(normalised_query),
            "query": normalised_query,
            "cost": json.dumps(cost, sort_keys=True),
            "released": json.dumps(released, sort_keys=True) if released is not None else None,
            "reservation_id": reservation_id,
        },
    )
    return int(res.inserted_primary_key[0])


def find_replay(
    bind: Engine | Connection, *, principal_id: str, snapshot_id: str, qhash: str
) -> dict[str, Any] | None:
    """The last answer released for this (principal, snapshot, query hash), or None."""
    key = {"principal_id": principal_id, "snapshot_id": snapshot_id, "qhash": qhash}
    row = _execute(bind, _FIND_REPLAY, key).first()
    if row is None or row.released is None:
        return None
    return json.loads(row.released)  # type: ignore[no-any-return]


def _row(r: Any) -> dict[str, Any]:
    created = r.created_at if r.created_at.tzinfo else r.created_at.replace(tzinfo=UTC)
    return {
        "id": r.id,
        "created_at": created.isoformat(),
        "principal_id": r.principal_id,
        "status": r.status,
        "snapshot_id": r.snapshot_id,
        "query_hash": r.query_hash,
        "query": json.loads(r.query),
        "cost": json.loads(r.cost),
        "released": json.loads(r.released) if r.released is not None else None,
        "reservation_id": r.reservation_id,
    }


def entries(
    engine: Engine,
    *,
    principal_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    after_id: int = 0,
) -> list[dict[str, Any]]:
    """Audit rows in id order (oldest first), filtered; page with ``after_id`` (keyset)."""
    q = select(audit_log).where(audit_log.c.id > after_id).order_by(audit_log.c.id).limit(limit)
    if principal_id is not None:
        q = q.where(audit_log.c.principal_id == principal_id)
    if since is not None:
        q = q.where(audit_log.c.created_at >= since)
    if until is not None:
        q = q.where(audit_log.c.created_at < until)
    with engine.connect() as conn:
        return [_row(r) for r in conn.execute(q)]


def to_json(rows: Iterable[Mapping[str, Any]]) -> str:
    return json.dumps(list(rows), sort_keys=True)


def to_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV with one row per entry; the JSON-valued columns are written as JSON text."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {
                k: json.dumps(r[k], sort_keys=True) if k in ("query", "cost", "released") else r[k]
                for k in CSV_FIELDS
            }
        )
    return buf.getvalue()


def try_claim(
    conn: Connection, *, principal_id: str, snapshot_id: str, qhash: str, stale_after_s: float
) -> bool:
    """In the caller's write transaction: become the one request answering this (principal,
    snapshot, query hash), or learn that another holds it.

    True when the claim was taken (the caller releases it with ``unclaim``, whatever happens);
    False while another request holds it. A claim older than ``stale_after_s`` seconds was
    left by a process that died (its reservation stays charged) and is taken over.
    """
    key = {"principal_id": principal_id, "snapshot_id": snapshot_id, "qhash": qhash}
    now = datetime.now(UTC)
    claim = _CLAIM[conn.dialect.name]
    row = {"principal_id": principal_id, "snapshot_id": snapshot_id, "query_hash": qhash}
    if conn.execute(claim, {**row, "created_at": now}).first() is not None:
        return True
    before = now - timedelta(seconds=stale_after_s)
    stale = conn.execute(_UNCLAIM_STALE, {**key, "before": before})
    return bool(
        stale.rowcount == 1 and conn.execute(claim, {**row, "created_at": now}).first() is not None
    )


def unclaim(bind: Engine | Connection, *, principal_id: str, snapshot_id: str, qhash: str) -> None:
    """Release a claim taken by ``try_claim``."""
    _execute(
        bind, _UNCLAIM, {"principal_id": principal_id, "snapshot_id": snapshot_id, "qhash": qhash}
    )
