"""The admin budget page: its numbers agree with the JSON admin API, in the test client and in
Debian's headless Chromium (driven by selenium through /usr/bin/chromedriver)."""

from __future__ import annotations

import json
import math
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from mechanisms.events import PrivacyEvent
from mechanisms.ledger import Budget
from service.api.budget_page import COOKIE
from service.auth import create_principal, issue_key
from service.charging import get_ledger
from service.store.tables import ANALYST_NAME_INDEX

PAGE = "/v1/admin/budget-page"
SESSION = "/v1/admin/session"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Seeded:
    admin_token: str
    analyst_token: str
    analysts: list[str]  # ids, in creation order
    hostile: str  # the id of the analyst whose name is an HTML injection attempt
    near: str  # an analyst with 5% of its budget left, created after the others


@pytest.fixture
def seeded(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Seeded:
    """Three analysts (one without a budget), spending spread over four days, a corpus cap;
    and a fourth, Dave, who has spent 95% of his budget."""
    engine = app.extensions["privtext"].engine
    admin_token = issue_key(engine, create_principal(engine, name="root", role="admin"))
    alice = create_principal(engine, name="Alice", role="analyst")
    bob = create_principal(engine, name="<script>alert(1)</script> & Bob", role="analyst")
    carol = create_principal(engine, name="Carol (no budget)", role="analyst")
    dave = create_principal(engine, name="Dave", role="analyst")
    analyst_token = issue_key(engine, alice)

    start = datetime.now(UTC) - timedelta(days=4)
    clock = iter(start + timedelta(hours=3 * i) for i in range(100))
    monkeypatch.setattr("mechanisms.ledger.now", lambda: next(clock))  # entry times
    with app.app_context():
        ledger = get_ledger()
        ledger.set_corpus_cap(Budget(epsilon=20.0, delta=1e-5))
        ledger.set_budget(alice, Budget(epsilon=3.0, delta=1e-6))
        ledger.set_budget(bob, Budget(epsilon=5.0, delta=1e-6))
        for eps in (0.5, 0.25, 0.75):
            ledger.commit(ledger.reserve(alice, PrivacyEvent.laplace(eps)).id)
        ledger.refund(ledger.reserve(alice, PrivacyEvent.laplace(1.0)).id)  # not counted
        ledger.reserve(alice, PrivacyEvent.laplace(0.1))  # still reserved: counted
        for _ in range(3):
            ledger.commit(ledger.reserve(bob, PrivacyEvent.gaussian(4.0)).id)
        ledger.commit(ledger.reserve(bob, PrivacyEvent.laplace(0.2)).id)
        ledger.set_budget(dave, Budget(epsilon=2.0, delta=1e-6))
        ledger.commit(ledger.reserve(dave, PrivacyEvent.laplace(1.9)).id)
    monkeypatch.undo()
    return Seeded(admin_token, analyst_token, [alice, bob, carol], bob, dave)


class _TestIds(HTMLParser):
    """Collects every element with a data-testid: its attributes and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, dict[str, Any]] = {}
        self._open: list[str | None] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        tid = a.get("data-testid")
        if tid:
            self.found[tid] = {"tag": tag, "attrs": a, "text": ""}
        if tag not in {"line", "polyline", "meta", "br"}:
            self._open.append(tid)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("data-testid"):
            self.found[str(a["data-testid"])] = {"tag": tag, "attrs": a, "text": ""}

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for tid in self._open:
            if tid:
                self.found[tid]["text"] += data


def _parse(html: str) -> _TestIds:
    p = _TestIds()
    p.feed(html)
    return p


def _value(raw: str | None) -> float | None:
    return None if raw in (None, "") else float(raw)


def _expected(get: Any, s: Seeded) -> dict[str, Any]:
    """The figures the page must show, read from the JSON admin API (``get(path) -> dict``)."""
    cap = get("/v1/admin/corpus-cap")
    out: dict[str, Any] = {
        "cap-epsilon": cap["budget"]["epsilon"],
        "cap-delta": cap["budget"]["delta"],
        "cap-spent": cap["spent_epsilon"],
        "cap-remaining": cap["remaining_epsilon"],
    }
    for aid in s.analysts:
        rem = get(f"/v1/admin/analysts/{aid}/ledger")["remaining"]
        budget = rem["budget"] or {}
        out |= {
            f"budget-epsilon-{aid}": budget.get("epsilon"),
            f"budget-delta-{aid}": budget.get("delta"),
            f"spent-{aid}": rem["spent_epsilon"],
            f"spent-tight-{aid}": rem["spent_epsilon_tight"],
            f"remaining-{aid}": rem["remaining_epsilon"],
            f"committed-{aid}": rem["committed"],
            f"reserved-{aid}": rem["reserved"],
        }
    return out


def _check_against_api(read: dict[str, str | None], expected: dict[str, float | None]) -> None:
    for tid, want in expected.items():
        got = _value(read[tid])
        if want is None:
            assert got is None, tid
        else:
            assert got == pytest.approx(want, rel=1e-12, abs=1e-12), tid


# -- test client ---------------------------------------------------------------------------


def test_page_numbers_match_the_admin_api(client: FlaskClient, seeded: Seeded) -> None:
    resp = client.get(PAGE, headers=bearer(seeded.admin_token))
    assert resp.status_code == 200
    assert resp.mimetype == "text/html"
    assert resp.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    page = _parse(resp.get_data(as_text=True))

    def api(path: str) -> dict[str, Any]:
        r = client.get(path, headers=bearer(seeded.admin_token))
        assert r.status_code == 200, (path, r.get_json())
        return r.get_json()  # type: ignore[no-any-return]

    expected = _expected(api, seeded)
    _check_against_api({t: f["attrs"].get("data-value") for t, f in page.found.items()}, expected)

    alice, bob, carol = seeded.analysts
    # The figures the fixture implies, so that agreeing with the API is not agreeing on nonsense.
    assert expected[f"spent-{alice}"] == pytest.approx(0.5 + 0.25 + 0.75 + 0.1)
    assert expected[f"remaining-{alice}"] == pytest.approx(3.0 - 1.6)
    assert expected[f"committed-{alice}"] == 3 and expected[f"reserved-{alice}"] == 1
    assert 0 < expected[f"spent-tight-{bob}"] <= expected[f"spent-{bob}"] < 5.0
    assert expected[f"budget-epsilon-{carol}"] is None and expected[f"spent-{carol}"] == 0.0
    assert page.found[f"spent-{alice}"]["text"] == "1.6"
    assert page.found[f"budget-epsilon-{carol}"]["text"] == "—"
    assert expected["cap-spent"] > expected[f"spent-{alice}"]  # everyone's spend counts


def test_page_draws_one_series_per_analyst(client: FlaskClient, seeded: Seeded) -> None:
    html = client.get(PAGE, headers=bearer(seeded.admin_token)).get_data(as_text=True)
    page = _parse(html)
    assert "<script" not in html.lower().replace("&lt;script", "")  # no JavaScript at all
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # no external assets
    svgs = [a for t, a in page.tags if t == "svg"]
    polylines = [a for t, a in page.tags if t == "polyline"]
    assert len(svgs) == len(polylines) == len(seeded.analysts) + 2  # Dave's, and the cap's
    for aid in seeded.analysts:
        line = page.found[f"series-{aid}"]
        assert line["tag"] == "polyline"
        spent = float(page.found[f"spent-{aid}"]["attrs"]["data-value"])
        # The chart replays the ledger entries; it ends at the figure the ledger reports.
        assert float(line["attrs"]["data-last-value"]) == pytest.approx(spent, rel=1e-9, abs=1e-12)
        xs = [float(p.split(",")[0]) for p in line["attrs"]["points"].split()]
        assert xs == sorted(xs) and xs[-1] > xs[0]  # time runs left to right
        assert f"x-axis-{aid}" in page.found and f"y-axis-{aid}" in page.found
    alice, bob, carol = seeded.analysts
    assert line_count(page, alice) == 4  # four live entries (the refund is not drawn)
    assert line_count(page, carol) == 0
    for aid in (alice, bob):  # a dashed line for the budget
        assert page.found[f"budget-line-{aid}"]["attrs"]["stroke-dasharray"]
    assert f"budget-line-{carol}" not in page.found


def test_the_cap_has_its_chart_of_everyones_spending(client: FlaskClient, seeded: Seeded) -> None:
    page = _parse(client.get(PAGE, headers=bearer(seeded.admin_token)).get_data(as_text=True))
    cap = client.get("/v1/admin/corpus-cap", headers=bearer(seeded.admin_token)).get_json()
    series = page.found["series-cap"]["attrs"]
    # every live entry of every analyst (alice 4, bob 4, dave 1), ending at the cap's figure
    assert int(series["data-points"]) == 9
    assert float(series["data-last-value"]) == pytest.approx(cap["spent_epsilon"], rel=1e-9)
    assert float(page.found["cap-spent"]["attrs"]["data-value"]) == cap["spent_epsilon"]
    assert page.found["budget-line-cap"]["attrs"]["stroke-dasharray"]


def test_every_chart_shares_one_time_axis(client: FlaskClient, seeded: Seeded) -> None:
    page = _parse(client.get(PAGE, headers=bearer(seeded.admin_token)).get_data(as_text=True))
    charts = [a for t, a in page.tags if t == "svg"]
    assert len({(c["data-start"], c["data-end"]) for c in charts}) == 1
    alice, bob, carol = seeded.analysts

    def first_step_x(aid: str) -> float:  # the x of the first entry (the second point)
        points = page.found[f"series-{aid}"]["attrs"]["points"].split()
        return float(points[1].split(",")[0])

    left = float(page.found[f"x-axis-{alice}"]["attrs"]["x1"])
    # alice spent first, so her first step is at the axis' start; bob's and Dave's come later
    assert first_step_x(alice) == left
    assert left < first_step_x(bob) < first_step_x(seeded.near)
    assert first_step_x("cap") == left


def test_analysts_near_exhaustion_are_highlighted(client: FlaskClient, seeded: Seeded) -> None:
    html = client.get(PAGE, headers=bearer(seeded.admin_token)).get_data(as_text=True)
    page = _parse(html)
    assert page.found[f"near-exhaustion-{seeded.near}"]["text"] == "5% left"
    assert "near" in page.found[f"analyst-{seeded.near}"]["attrs"]["class"].split()
    for aid in seeded.analysts:  # 47%, some, and no budget: none of them is near
        assert f"near-exhaustion-{aid}" not in page.found
        assert page.found[f"analyst-{aid}"]["attrs"]["class"] == "analyst"


def test_ids_are_shown_where_names_repeat(
    app: Flask, client: FlaskClient, seeded: Seeded
) -> None:
    engine = app.extensions["privtext"].engine
    with engine.begin() as conn:  # a store from before names were unique
        conn.execute(text(f"DROP INDEX {ANALYST_NAME_INDEX}"))
    other = create_principal(engine, name="Alice", role="analyst")
    page = _parse(client.get(PAGE, headers=bearer(seeded.admin_token)).get_data(as_text=True))
    alice, bob, carol = seeded.analysts
    for aid in (alice, other):
        assert page.found[f"name-{aid}"]["text"] == "Alice"
        assert page.found[f"id-{aid}"]["text"] == f"({aid})"
    for aid in (bob, carol, seeded.near):
        assert f"id-{aid}" not in page.found
        assert page.found[f"name-{aid}"]["attrs"]["title"] == aid  # the id, on hover


def line_count(page: _TestIds, aid: str) -> int:
    return int(page.found[f"series-{aid}"]["attrs"]["data-points"])


def test_page_escapes_names(client: FlaskClient, seeded: Seeded) -> None:
    html = client.get(PAGE, headers=bearer(seeded.admin_token)).get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Bob" in html
    page = _parse(html)
    assert page.found[f"name-{seeded.hostile}"]["text"] == "<script>alert(1)</script> & Bob"


def test_page_requires_an_admin(client: FlaskClient, seeded: Seeded) -> None:
    resp = client.get(PAGE)
    assert resp.status_code == 401 and resp.get_json()["code"] == "unauthorized"
    resp = client.get(PAGE, headers=bearer(seeded.analyst_token))
    assert resp.status_code == 403 and resp.get_json()["code"] == "forbidden"
    resp = client.get(PAGE, headers=bearer("ptk_0123_notakey"))
    assert resp.status_code == 401
    assert client.get(PAGE + "?limit=0", headers=bearer(seeded.admin_token)).status_code == 422


def test_page_pages_through_analysts(client: FlaskClient, seeded: Seeded) -> None:
    html = client.get(PAGE + "?limit=1&offset=1", headers=bearer(seeded.admin_token))
    found = _parse(html.get_data(as_text=True)).found
    alice, bob, carol = seeded.analysts
    assert f"analyst-{bob}" in found
    assert f"analyst-{alice}" not in found and f"analyst-{carol}" not in found


def _signed_in(client: FlaskClient, token: str) -> str:
    """Sign in through POST /v1/admin/session; returns the session cookie's value."""
    resp = client.post(SESSION, data={"key": token})
    assert resp.status_code == 303, resp.get_data()
    cookie = client.get_cookie(COOKIE, path=PAGE)
    assert cookie is not None
    return cookie.value


def test_session_sets_a_strict_httponly_cookie(client: FlaskClient, seeded: Seeded) -> None:
    resp = client.post(SESSION, data={"key": seeded.admin_token})
    assert resp.status_code == 303
    assert resp.headers["Location"].endswith(PAGE)
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for attr in ("HttpOnly", "SameSite=Strict", f"Path={PAGE}", f"Max-Age={30 * 60}"):
        assert attr in cookie, attr
    assert "Secure" not in cookie  # plain http here; https requests get Secure
    page = client.get(PAGE)  # the test client sends the cookie back
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert 'data-testid="sign-out-form"' in page.get_data(as_text=True)
    # The JSON body works too.
    assert client.post(SESSION, json={"key": seeded.admin_token}).status_code == 303
    secure = client.post(SESSION, data={"key": seeded.admin_token}, base_url="https://localhost")
    assert "Secure" in secure.headers["Set-Cookie"]


def test_the_cookie_holds_a_session_token_not_the_key(
    app: Flask, client: FlaskClient, seeded: Seeded
) -> None:
    from sqlalchemy import select

    from service.page_sessions import page_sessions

    value = _signed_in(client, seeded.admin_token)
    secret = seeded.admin_token.split("_", 2)[2]
    assert value != seeded.admin_token and secret not in value and "ptk_" not in value
    assert len(value) >= 40  # 256 random bits
    with app.extensions["privtext"].engine.connect() as conn:
        stored = [tuple(r) for r in conn.execute(select(page_sessions)).all()]
    assert len(stored) == 1
    assert all(value not in str(col) and secret not in str(col) for col in stored[0])
    # A second sign-in is another session with another token.
    client2 = app.test_client()
    assert _signed_in(client2, seeded.admin_token) != value
    # The key itself in the cookie signs nobody in.
    client.set_cookie(COOKIE, seeded.admin_token, path=PAGE)
    assert client.get(PAGE).status_code == 401


def test_an_expired_or_deleted_session_is_refused(
    app: Flask, client: FlaskClient, seeded: Seeded
) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from service.auth import revoke_key
    from service.page_sessions import page_sessions

    engine = app.extensions["privtext"].engine
    _signed_in(client, seeded.admin_token)
    assert client.get(PAGE).status_code == 200
    with engine.begin() as conn:  # 30 minutes later
        past = datetime.now(UTC) - timedelta(seconds=1)
        conn.execute(update(page_sessions).values(expires_at=past))
    assert client.get(PAGE).status_code == 401

    # Signed out: the row is gone, so even a copy of the cookie no longer works.
    value = _signed_in(client, seeded.admin_token)
    assert client.get(PAGE).status_code == 200
    resp = client.post(PAGE + "/sign-out")
    assert resp.status_code == 303 and resp.headers["Location"].endswith(PAGE)
    assert f"{COOKIE}=;" in resp.headers["Set-Cookie"]  # cleared in the browser
    thief = app.test_client()
    thief.set_cookie(COOKIE, value, path=PAGE)
    assert thief.get(PAGE).status_code == 401

    # Revoking the key that opened a session ends it.
    _signed_in(client, seeded.admin_token)
    assert client.get(PAGE).status_code == 200
    assert revoke_key(engine, seeded.admin_token.split("_", 2)[1])
    assert client.get(PAGE).status_code == 401


def test_sessions_are_shared_by_every_worker(app: Flask, seeded: Seeded, data_dir: Path) -> None:
    """A session opened through one app (one gunicorn worker) works through another."""
    from service.app import create_app

    other = create_app({"data_dir": str(data_dir), "testing": True})
    try:
        value = _signed_in(app.test_client(), seeded.admin_token)
        client = other.test_client()
        client.set_cookie(COOKIE, value, path=PAGE)
        assert client.get(PAGE).status_code == 200
    finally:
        other.extensions["privtext"].engine.dispose()


def test_a_browser_without_a_session_gets_the_sign_in_form(
    client: FlaskClient, seeded: Seeded
) -> None:
    html_accept = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    resp = client.get(PAGE, headers=html_accept)
    assert resp.status_code == 401 and resp.mimetype == "text/html"
    assert resp.headers["Cache-Control"] == "no-store"
    form = _parse(resp.get_data(as_text=True))
    assert form.found["sign-in-form"]["attrs"]["action"] == SESSION
    assert form.found["sign-in-form"]["attrs"]["method"] == "post"
    assert form.found["sign-in-key"]["attrs"]["name"] == "key"
    assert form.found["sign-in-key"]["attrs"]["type"] == "password"
    # A wrong key from the form: the form again, with the reason, and no cookie.
    resp = client.post(SESSION, data={"key": "ptk_0123_notakey"}, headers=html_accept)
    assert resp.status_code == 401 and resp.mimetype == "text/html"
    assert "unknown" in _parse(resp.get_data(as_text=True)).found["sign-in-error"]["text"]
    assert "Set-Cookie" not in resp.headers
    # The form's own post signs in and lands on the page.
    resp = client.post(SESSION, data={"key": seeded.admin_token}, headers=html_accept)
    assert resp.status_code == 303
    page = client.get(PAGE, headers=html_accept)
    assert page.status_code == 200 and "corpus-cap" in _parse(page.get_data(as_text=True)).found
    # JSON clients still get the JSON envelope.
    assert client.get(PAGE, headers={"Accept": "application/json"}).status_code == 200
    assert client.get(PAGE + "?limit=0").status_code == 422


def test_cookie_is_accepted_by_the_page_only(client: FlaskClient, seeded: Seeded) -> None:
    value = _signed_in(client, seeded.admin_token)
    client.delete_cookie(COOKIE, path=PAGE)
    client.set_cookie(COOKIE, value, path="/")  # even if a browser sent it anywhere
    assert client.get(PAGE).status_code == 200
    for path in ("/v1/me", "/v1/admin/corpus-cap", "/v1/admin/analysts"):
        resp = client.get(path)
        assert resp.status_code == 401, path
    resp = client.put("/v1/admin/corpus-cap", json={"epsilon": 100.0, "delta": 1e-5})
    assert resp.status_code == 401
    # A stale token or a key in the cookie is no session at all.
    client.set_cookie(COOKIE, seeded.analyst_token, path="/")
    assert client.get(PAGE).status_code == 401
    client.set_cookie(COOKIE, "x" * 43, path="/")
    assert client.get(PAGE).status_code == 401


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 422),
        ({"key": ""}, 422),
        ({"key": 5}, 422),
        ({"key": "k", "extra": 1}, 422),
        ({"key": "ptk_0123_notakey"}, 401),
        ({"key": "nonsense"}, 401),
    ],
)
def test_session_rejects_bad_keys(
    client: FlaskClient, seeded: Seeded, body: dict[str, Any], status: int
) -> None:
    resp = client.post(SESSION, json=body)
    assert resp.status_code == status
    assert set(resp.get_json()) >= {"code", "status", "message", "errors"}
    assert "Set-Cookie" not in resp.headers


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://localhost:8080"},  # another port is another origin
        {"Sec-Fetch-Site": "same-origin", "Origin": "https://evil.example"},
    ],
)
def test_session_refuses_another_origin(
    client: FlaskClient, seeded: Seeded, headers: dict[str, str]
) -> None:
    resp = client.post(SESSION, data={"key": seeded.admin_token}, headers=headers)
    assert resp.status_code == 403 and "Set-Cookie" not in resp.headers
    assert client.post(PAGE + "/sign-out", headers=headers).status_code == 403


def test_session_accepts_its_own_origin(client: FlaskClient, seeded: Seeded) -> None:
    same = {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}
    resp = client.post(SESSION, data={"key": seeded.admin_token}, headers=same)
    assert resp.status_code == 303
    assert client.post(PAGE + "/sign-out", headers=same).status_code == 303


def test_session_refuses_an_analyst_key(client: FlaskClient, seeded: Seeded) -> None:
    resp = client.post(SESSION, data={"key": seeded.analyst_token})
    assert resp.status_code == 403 and "Set-Cookie" not in resp.headers
    assert client.post(SESSION, data="[1]", content_type="application/json").status_code == 400


# -- headless Chromium -----------------------------------------------------------------------


def _browser_binaries() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed "
            "(scripts/test-browser.sh installs them; scripts/test.sh sources it)"
        )
    return chromium, driver


@pytest.fixture
def live_server(app: Flask, seeded: Seeded) -> Iterator[str]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.mark.browser
def test_budget_page_in_headless_chromium(live_server: str, seeded: Seeded, tmp_path: Path) -> None:
    chromium, chromedriver = _browser_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1200,900",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(
        service=Service(chromedriver, log_output=str(tmp_path / "chromedriver.log")),
        options=options,
    )
    try:
        driver.set_page_load_timeout(30)
        # Sign in as a person would: the page shows its sign-in form, the key is typed into
        # it, and the form's POST to /v1/admin/session answers 303 to the page with the
        # session cookie set.
        driver.get(f"{live_server}{PAGE}")
        form = WebDriverWait(driver, 30).until(
            EC.presence_of_element_located((By.CSS_SELECTOR, '[data-testid="sign-in-form"]'))
        )
        assert driver.title == "privtext: sign in"
        form.find_element(By.CSS_SELECTOR, '[data-testid="sign-in-key"]').send_keys(
            seeded.admin_token
        )
        form.find_element(By.CSS_SELECTOR, '[data-testid="sign-in-submit"]').click()
        WebDriverWait(driver, 30).until(
            EC.presence_of_element_located((By.CSS_SELECTOR, '[data-testid="corpus-cap"]'))
        )
        assert driver.current_url == f"{live_server}{PAGE}"
        assert driver.title == "privtext: privacy budgets"
        cookie = driver.get_cookie(COOKIE)
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["value"] != seeded.admin_token and cookie["path"] == PAGE
        assert driver.execute_script("return document.cookie") == ""  # invisible to scripts

        # The whole page in one screenshot: a viewport as tall as the document.
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1200, "height": max(900, height), "deviceScaleFactor": 1, "mobile": False},
        )
        shot = tmp_path / "budget-page.png"
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        _check_highlight(shot, driver, seeded.near)

        read: dict[str, str | None] = {}
        for el in driver.find_elements(By.CSS_SELECTOR, "[data-testid]"):
            read[str(el.get_attribute("data-testid"))] = el.get_attribute("data-value")
            if el.tag_name == "span" and el.get_attribute("data-value") is not None:
                assert el.is_displayed() and el.text.strip(), el.get_attribute("data-testid")

        def api(path: str) -> dict[str, Any]:
            req = urllib.request.Request(live_server + path, headers=bearer(seeded.admin_token))
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
                return json.loads(resp.read())  # type: ignore[no-any-return]

        _check_against_api(read, _expected(api, seeded))

        for aid in seeded.analysts:
            chart = driver.find_element(By.CSS_SELECTOR, f'[data-testid="chart-{aid}"]')
            assert chart.is_displayed()
            assert chart.size["width"] > 300 and chart.size["height"] > 100
            series = chart.find_elements(By.TAG_NAME, "polyline")
            assert len(series) == 1
            last = float(series[0].get_attribute("data-last-value") or "nan")
            assert math.isclose(last, float(read[f"spent-{aid}"] or "nan"), rel_tol=1e-9)
        name = driver.find_element(By.CSS_SELECTOR, f'[data-testid="name-{seeded.hostile}"]')
        assert name.text == "<script>alert(1)</script> & Bob"

        # Sign out: back to the form, the cookie gone, and the page closed to this browser.
        driver.find_element(By.CSS_SELECTOR, '[data-testid="sign-out"]').click()
        WebDriverWait(driver, 30).until(
            EC.presence_of_element_located((By.CSS_SELECTOR, '[data-testid="sign-in-form"]'))
        )
        assert driver.get_cookie(COOKIE) is None
        driver.get(f"{live_server}{PAGE}")
        assert driver.find_elements(By.CSS_SELECTOR, '[data-testid="sign-in-form"]')
        assert not driver.find_elements(By.CSS_SELECTOR, '[data-testid="corpus-cap"]')
    finally:
        driver.quit()


#: The highlight of an analyst near exhaustion (the template's .badge and border colour).
HIGHLIGHT = (0xD9, 0x77, 0x06)


def _check_highlight(shot: Path, driver: Any, near: str) -> None:
    """The screenshot shows the highlight colour, and only inside Dave's section: the badge
    (about 60 x 20 pixels of solid colour) and the section's 2-pixel border."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    image = Image.open(shot).convert("RGB")
    width, height = image.size
    pixels = image.load()
    assert pixels is not None
    hits = [(x, y) for y in range(height) for x in range(width) if pixels[x, y] == HIGHLIGHT]
    assert len(hits) > 1_000, len(hits)
    section = driver.find_element(By.CSS_SELECTOR, f'[data-testid="analyst-{near}"]').rect
    x0, y0 = section["x"], section["y"]
    x1, y1 = x0 + section["width"], y0 + section["height"]
    outside = [(x, y) for x, y in hits if not (x0 - 1 <= x <= x1 + 1 and y0 - 1 <= y <= y1 + 1)]
    assert outside == []
