"""Hardening (issue 10, sections 5 and 6) through the real entry points.

* The ``privtext`` command and gunicorn create the data directory, the state database and
  its WAL, and everything else under it readable by their owner only, whatever umask they
  were started with.
* gunicorn's own errors (bad request line or header, 414, 431) and a chunked body over the
  limit come back in the JSON error envelope, sent as raw bytes over a socket.
* Every response carries ``Cache-Control: no-store`` and ``X-Content-Type-Options: nosniff``,
  the ones with a new key above all, and ``/metrics`` needs a ``metrics`` or admin key.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.app import create_app
from service.auth import create_principal, issue_key
from tests.factories import make_messages, write_jsonl
from tests.fixtures.app import bearer

ENVELOPE = {"code", "status", "message", "errors"}
BIN = Path(sys.executable).parent


#: Runs a command with umask 022, the usual default: the service must not rely on the caller's
#: umask. A shell sets it, not ``preexec_fn``: that forces a plain fork of this process, whose
#: gRPC threads (pyspark's and Flower's clients, loaded by earlier tests) can abort the child
#: ("epoll_wait error: Bad file descriptor", SIGABRT; seen in a fresh-clone CI run).
UMASK_022 = ["/bin/sh", "-c", 'umask 022 && exec "$@"', "sh"]


@dataclass
class Served:
    port: int
    data: Path
    analyst: str
    admin: str
    metrics: str
    env: dict[str, str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` and read the whole response (the server closes the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        return _read_response(sock)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return status, headers, body


def _request(port: int, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
    payload = b"" if body is None else json.dumps(body).encode()
    raw = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    status, _, out = _exchange(port, raw)
    return status, json.loads(out) if out.startswith(b"{") else out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A data directory made by ``privtext`` (ingest, keys) and gunicorn serving it, both
    started with umask 022."""
    root = tmp_path_factory.mktemp("hardening")
    data = root / "data"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PRIVTEXT_", "PROMETHEUS_"))
    }
    env.update(
        PRIVTEXT_DATA_DIR=str(data),
        PRIVTEXT_LOG_LEVEL="WARNING",
        PRIVTEXT_QUEUE_URL="memory://",
        PROMETHEUS_MULTIPROC_DIR=str(root / "prom"),
    )

    def cli(*args: str) -> str:
        done = subprocess.run(
            [*UMASK_022, str(BIN / "privtext"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    cli("ingest", str(write_jsonl(root / "c.jsonl", make_messages())), "--workers", "1")
    analyst = cli("analysts", "create", "ana", "--epsilon", "10", "--delta", "1e-6")
    admin = cli("keys", "create", "--role", "admin")
    metrics = cli("keys", "create", "--role", "metrics")

    with _gunicorn(env, root / "gunicorn.log") as port:
        yield Served(port, data, analyst, admin, metrics, env)


@contextlib.contextmanager
def _gunicorn(env: dict[str, str], log: Path, *args: str) -> Iterator[int]:
    """gunicorn with the service's config, one worker, started with umask 022; its port."""
    port = _free_port()
    with open(log, "wb") as err:  # gunicorn has its own descriptor
        proc = subprocess.Popen(
            [*UMASK_022, str(BIN / "gunicorn"), "--config", "python:service.gunicorn_conf", *args]
            + ["--bind", f"127.0.0.1:{port}", "--workers", "1", "service.wsgi:app"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                if _exchange(port, raw)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("gunicorn did not start:\n" + log.read_text())
            time.sleep(0.2)
        yield port
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- files readable by their owner only -------------------------------------------------------


@pytest.mark.gunicorn
def test_data_files_are_readable_by_their_owner_only(served: Served) -> None:
    query = {"kind": "count", "filters": {"keywords": {"terms": ["pizza"]}}}
    status, out = _request(served.port, "POST", "/v1/queries", served.analyst, query)
    assert status == 200, out
    paths = [served.data, *served.data.rglob("*")]
    names = {p.name for p in paths}
    assert {"state.db", "state.db-wal"} <= names  # the audit log and its WAL are covered
    loose = {str(p.relative_to(served.data)): oct(p.stat().st_mode & 0o777) for p in paths
             if p.stat().st_mode & 0o077}
    assert loose == {}
    assert stat.S_IMODE(served.data.stat().st_mode) == 0o700


def test_create_app_makes_an_existing_data_dir_private(data_dir: Path) -> None:
    data_dir.chmod(0o755)
    app = create_app({"data_dir": str(data_dir), "testing": True})
    app.extensions["privtext"].engine.dispose()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


# -- gunicorn's own errors in the JSON envelope -----------------------------------------------

GUNICORN_ERRORS = {
    "bad request line": (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    "bad header": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
        400,
        "bad_request",
    ),
    "request line over 8190 bytes": (
        b"GET /healthz?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        414,
        "uri_too_long",
    ),
    "too many headers": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: 1\r\n" % i for i in range(100))
        + b"\r\n",
        431,
        "request_header_fields_too_large",
    ),
    "header over 8190 bytes": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        431,
        "request_header_fields_too_large",
    ),
}


@pytest.mark.parametrize("case", list(GUNICORN_ERRORS))
@pytest.mark.gunicorn
def test_gunicorn_errors_use_the_json_envelope(served: Served, case: str) -> None:
    raw, status, code = GUNICORN_ERRORS[case]
    got, headers, body = _exchange(served.port, raw)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"
    out = json.loads(body)
    assert set(out) == ENVELOPE
    assert out["status"] == status and out["code"] == code and out["message"]
    assert b"GARBAGE" not in body and b"aaaa" not in body  # nothing of the request echoed


@pytest.mark.gunicorn
def test_threaded_workers_answer_in_json_too(served: Served, tmp_path: Path) -> None:
    """With PRIVTEXT_THREADS > 1 gunicorn runs gthread workers, with the same error pages."""
    env = {**served.env, "PRIVTEXT_THREADS": "2"}
    with _gunicorn(env, tmp_path / "gunicorn.log", "--log-level", "info") as port:
        for case in ("bad header", "too many headers"):
            raw, status, code = GUNICORN_ERRORS[case]
            got, headers, body = _exchange(port, raw)
            assert got == status and headers["content-type"] == "application/json"
            assert json.loads(body)["code"] == code
    assert "JsonErrorThreadWorker" in (tmp_path / "gunicorn.log").read_text()


@pytest.mark.gunicorn
def test_chunked_body_over_the_limit_is_413_under_gunicorn(served: Served) -> None:
    """50 MB sent chunked: 413 as soon as the limit is passed, not 400."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        response: list[tuple[int, dict[str, str], bytes]] = []
        reader = threading.Thread(target=lambda: response.append(_read_response(sock)))
        sock.sendall(
            b"POST /v1/queries HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n"
            + f"Authorization: Bearer {served.analyst}\r\n\r\n".encode()
        )
        reader.start()
        chunk = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
        try:
            for _ in range(50):
                sock.sendall(chunk)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed after reading past the limit
        reader.join(30)
    assert response, "no response"
    status, headers, body = response[0]
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["code"] == "payload_too_large"


# -- response headers and /metrics ------------------------------------------------------------


@pytest.fixture
def admin_client(app: Flask, admin_token: str) -> tuple[FlaskClient, dict[str, str]]:
    return app.test_client(), bearer(admin_token)


def _private(resp: Any) -> None:
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_every_json_response_is_no_store_and_nosniff(
    admin_client: tuple[FlaskClient, dict[str, str]],
) -> None:
    client, h = admin_client
    created = client.post("/v1/admin/analysts", json={"name": "ana"}, headers=h)
    assert created.status_code == 201
    _private(created)
    analyst = created.get_json()["id"]
    issued = client.post(f"/v1/admin/analysts/{analyst}/keys", headers=h)
    assert issued.status_code == 201 and issued.get_json()["token"].startswith("ptk_")
    _private(issued)
    key_id = issued.get_json()["key_id"]
    rotated = client.post(f"/v1/admin/analysts/{analyst}/keys/{key_id}/rotate", headers=h)
    assert rotated.status_code == 201
    _private(rotated)
    for resp in (
        client.get("/v1/me", headers=h),
        client.get("/healthz"),
        client.get("/v1/me"),  # 401
        client.get("/nope"),  # 404
        client.get(f"/v1/admin/analysts/{analyst}/ledger", headers=h),
    ):
        assert resp.mimetype == "application/json"
        _private(resp)


@pytest.mark.gunicorn
def test_gunicorn_answers_are_no_store_too(served: Served) -> None:
    status, headers, _ = _exchange(
        served.port,
        f"GET /v1/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {served.admin}\r\n\r\n".encode(),
    )
    assert status == 200
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"


def test_metrics_need_a_metrics_or_admin_key(
    app: Flask, admin_token: str, analyst_token: str
) -> None:
    engine = app.extensions["privtext"].engine
    scraper = issue_key(engine, create_principal(engine, name="prometheus", role="metrics"))
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(analyst_token)).status_code == 403
    for key in (scraper, admin_token):
        resp = client.get("/metrics", headers=bearer(key))
        assert resp.status_code == 200
        assert "privtext_http_requests_total" in resp.get_data(as_text=True)
    # A metrics key opens nothing else.
    for path in ("/v1/me", "/v1/budget", "/v1/admin/analysts", "/v1/snapshots/live"):
        assert client.get(path, headers=bearer(scraper)).status_code == 403


@pytest.mark.gunicorn
def test_metrics_under_gunicorn_need_a_key(served: Served) -> None:
    raw = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert _exchange(served.port, raw)[0] == 401
    status, _, body = _exchange(
        served.port,
        f"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {served.metrics}\r\n\r\n".encode(),
    )
    assert status == 200 and b"privtext_http_requests_total" in body
