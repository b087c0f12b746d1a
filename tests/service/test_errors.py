"""One JSON error envelope for every error, 500 included, and nothing from the data in it."""

from __future__ import annotations

from flask import Flask, request

from service.auth import public

ENVELOPE = {"code", "status", "message", "errors"}


def _check(resp, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert resp.status_code == status
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert ENVELOPE <= set(body)
    assert body["status"] == status and body["code"] == code
    return body


def test_404_and_405_use_the_envelope(client) -> None:  # type: ignore[no-untyped-def]
    _check(client.get("/nope"), 404, "not_found")
    body = _check(client.post("/healthz"), 405, "method_not_allowed")
    assert body["message"]


def test_body_size_limit_is_413(app: Flask) -> None:
    @app.post("/_test/echo")
    @public
    def _echo():  # type: ignore[no-untyped-def]
        return {"n": len(request.get_data())}

    client = app.test_client()
    ok = client.post("/_test/echo", data=b"x" * 1000)
    assert ok.status_code == 200
    big = b"x" * (app.config["MAX_CONTENT_LENGTH"] + 1)
    _check(client.post("/_test/echo", data=big), 413, "payload_too_large")


def test_500_reveals_nothing(app: Flask) -> None:
    secret = "user7 said: my card number is 4111"

    @app.get("/_test/boom")
    @public
    def _boom():  # type: ignore[no-untyped-def]
        raise RuntimeError(secret)

    app.config["PROPAGATE_EXCEPTIONS"] = False
    resp = app.test_client().get("/_test/boom")
    body = _check(resp, 500, "internal_error")
    assert secret not in resp.get_data(as_text=True)
    assert body["message"] == "Internal server error."
    assert body["request_id"] == resp.headers["X-Request-Id"]


def test_request_id_is_echoed_when_well_formed(client) -> None:  # type: ignore[no-untyped-def]
    resp = client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    resp = client.get("/healthz", headers={"X-Request-Id": "bad id;drop"})
    assert resp.headers["X-Request-Id"] != "bad id;drop"
