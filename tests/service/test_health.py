"""Operations endpoints: liveness, readiness, metrics, the spec, and the request log line."""

from __future__ import annotations

import json
import logging

import yaml


def test_healthz(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_readyz_ready_with_a_snapshot(client) -> None:  # type: ignore[no-untyped-def]
    resp = client.get("/readyz")
    assert resp.status_code == 200
    assert resp.get_json()["checks"] == {"state_store": True, "corpus": True, "disk": True}


def test_readyz_not_ready_without_a_snapshot(empty_app) -> None:  # type: ignore[no-untyped-def]
    resp = empty_app.test_client().get("/readyz")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["code"] == "not_ready"
    assert body["errors"]["checks"] == {"state_store": True, "corpus": False, "disk": True}


def test_readyz_writes_to_the_state_store(app, client) -> None:  # type: ignore[no-untyped-def]
    """Readiness commits a write (the heartbeat row), not only a SELECT."""
    from sqlalchemy import select

    from service.store.tables import heartbeat

    assert client.get("/readyz").status_code == 200
    with app.extensions["privtext"].engine.connect() as conn:
        first = conn.execute(select(heartbeat.c.at)).scalar_one()
    assert client.get("/readyz").status_code == 200
    with app.extensions["privtext"].engine.connect() as conn:
        assert conn.execute(select(heartbeat.c.at)).scalar_one() >= first


def test_readyz_not_ready_when_the_store_cannot_write(app, client) -> None:  # type: ignore[no-untyped-def]
    """Another writer holds SQLite's write lock past the busy timeout: reads still work, a
    write does not, and /readyz says so (a SELECT 1 would have answered ready)."""
    from service.store.db import make_engine

    svc = app.extensions["privtext"]
    svc.engine = make_engine(svc.settings.resolved_database_url, statement_timeout_ms=100)
    holder = make_engine(svc.settings.resolved_database_url)
    try:
        with holder.connect().execution_options(immediate=True) as conn, conn.begin():
            resp = client.get("/readyz")
        assert resp.status_code == 503
        assert resp.get_json()["errors"]["checks"] == {
            "state_store": False,
            "corpus": True,
            "disk": True,
        }
        assert client.get("/readyz").status_code == 200  # the lock is gone
    finally:
        holder.dispose()
        svc.engine.dispose()


def test_readyz_not_ready_when_the_disk_is_nearly_full(data_dir, ingested) -> None:  # type: ignore[no-untyped-def]
    """Less free space than ``min_free_disk_mb`` on the data directory's filesystem: 503."""
    import os

    from service.app import create_app

    st = os.statvfs(data_dir)
    free_mb = st.f_bavail * st.f_frsize // (1024 * 1024)
    app = create_app(
        {"data_dir": str(data_dir), "testing": True, "min_free_disk_mb": free_mb + 1024}
    )
    try:
        resp = app.test_client().get("/readyz")
        assert resp.status_code == 503
        assert resp.get_json()["errors"]["checks"] == {
            "state_store": True,
            "corpus": True,
            "disk": False,
        }
    finally:
        app.extensions["privtext"].engine.dispose()


def test_readyz_not_ready_when_the_snapshot_file_is_unreadable(app, client) -> None:  # type: ignore[no-untyped-def]
    """The live snapshot's file is truncated: not Parquet any more, not ready (root passes
    ``os.access``, so the check reads the file)."""
    info = app.extensions["privtext"].corpus.live()
    info.messages_path.write_bytes(b"not parquet")
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["errors"]["checks"]["corpus"] is False


def test_metrics_count_requests_by_route(client, admin_token) -> None:  # type: ignore[no-untyped-def]
    client.get("/healthz")
    client.get("/healthz")
    text = client.get("/metrics", headers={"Authorization": f"Bearer {admin_token}"}).get_data(
        as_text=True
    )
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("privtext_http_requests_total{")
        and 'route="/healthz"' in ln
        and 'status="200"' in ln
    )
    assert float(line.rsplit(" ", 1)[1]) == 2.0


def test_openapi_is_served_and_is_31(client) -> None:  # type: ignore[no-untyped-def]
    resp = client.get("/openapi.yaml")
    assert resp.status_code == 200
    assert yaml.safe_load(resp.get_data(as_text=True))["openapi"].startswith("3.1")


def test_one_json_log_line_per_request_without_text(client, admin_token, caplog) -> None:  # type: ignore[no-untyped-def]
    logger = logging.getLogger("privtext.access")
    logger.propagate = True
    try:
        with caplog.at_level(logging.INFO, logger="privtext.access"):
            client.get(
                "/v1/admin/audit?analyst=secret-text",
                headers={"Authorization": f"Bearer {admin_token}"},
            )
    finally:
        logger.propagate = False
    records = [r for r in caplog.records if r.name == "privtext.access"]
    assert len(records) == 1
    rec = records[0]
    assert rec.route == "/v1/admin/audit" and rec.status == 200
    assert rec.principal.startswith("ad_")
    assert rec.request_id and rec.latency_ms >= 0
    from service.observability import JsonFormatter

    line = json.loads(JsonFormatter().format(rec))
    assert "secret-text" not in json.dumps(line)
    assert {"request_id", "principal", "route", "status", "latency_ms"} <= set(line)
