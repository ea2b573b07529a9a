"""The technician side of patient links in the web UI: make one on a study's page (slip with the
link and its QR code), list, revoke (at once), roles and CSRF; the portal mounted in the same app."""

from __future__ import annotations

import re

import pytest
from portal_support import serve, stored_study
from test_web_http import Client

from appliance import accounts, audit, db


@pytest.fixture
def web(tmp_path, monkeypatch):
    monkeypatch.setenv("BURNSTATION_TEST_SCRYPT_N", "1024")
    from webui.app import WebApp

    data = tmp_path / "data"
    study = stored_study(data, "a", patient_name="DOE^JANE", study_description="MR <KNEE>")
    conn = db.connect(data)
    accounts.add_user(conn, "tech", "technician", "tech-password-1")
    accounts.add_user(conn, "view", "viewer", "view-password-1")
    with serve(WebApp(data).wsgi) as port:
        yield port, study, conn
    conn.close()


def test_technician_makes_lists_and_revokes_a_link(web):
    port, study, conn = web
    tech = Client(port)
    assert tech.login("tech", "tech-password-1") == 303
    status, _, page = tech.get(f"/studies/{study}")
    assert status == 200 and 'id="make-token"' in page and 'href="/tokens"' in page
    csrf = tech.csrf(f"/studies/{study}")
    assert tech.post(f"/studies/{study}/token", {"days": "7"})[0] == 403  # no CSRF token: refused
    status, headers, slip = tech.post(f"/studies/{study}/token", {"csrf": csrf, "days": "7"})
    assert status == 200 and headers["cache-control"] == "no-store"
    link = re.search(r'<p class="link">(http://[^<]+/token\?([A-Za-z0-9]{64}))</p>', slip)
    assert link and "<svg" in slip and "MR &lt;KNEE&gt;" in slip and "DOE, JANE" in slip
    token = link.group(2)
    # the link works on the same server, without a login
    patient = Client(port)
    status, headers, _ = patient.get("/token?" + token)
    assert status == 303 and headers["location"].endswith("/portal/")
    assert patient.get("/portal/")[0] == 200
    status, _, listing = tech.get("/tokens")
    assert status == 200 and "DOE^JANE" in listing and token not in listing
    token_id = re.search(r'action="/tokens/(\d+)/revoke"', listing).group(1)
    status, headers, _ = tech.post(f"/tokens/{token_id}/revoke", {"csrf": tech.csrf("/tokens")})
    assert status == 303 and "/tokens" in headers["location"]
    status, _, page = patient.get("/portal/")
    assert status == 404 and "not valid" in page  # at once, for a cookie already handed out
    assert 's-revoked' in tech.get("/tokens")[2]
    actions = [r["action"] for r in audit.page(conn)[0]]
    assert "token-create" in actions and "token-revoke" in actions
    bad = tech.post(f"/studies/{study}/token", {"csrf": tech.csrf("/tokens"), "days": "0"})
    assert bad[0] == 303 and "No+link+made" in bad[1]["location"]


def test_viewer_cannot_make_or_see_links(web):
    port, study, _ = web
    viewer = Client(port)
    assert viewer.login("view", "view-password-1") == 303
    assert 'id="make-token"' not in viewer.get(f"/studies/{study}")[2]
    assert viewer.post(f"/studies/{study}/token", {"csrf": viewer.csrf(f"/studies/{study}")})[0] == 403
    assert viewer.get("/tokens")[0] == 403


def test_chromium_prints_a_slip_whose_qr_code_opens_the_study(web, tmp_path):
    import subprocess

    from playwright.sync_api import sync_playwright
    from support import REPO

    port, study, _ = web
    tech = Client(port)
    assert tech.login("tech", "tech-password-1") == 303
    shots = REPO / "docs" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            context = browser.new_context(viewport={"width": 1000, "height": 800})
            context.add_cookies([{"name": k, "value": v, "url": base} for k, v in tech.cookies.items()])
            page = context.new_page()
            page.goto(f"{base}/studies/{study}")
            page.click("#make-token")
            page.wait_for_selector("p.link")
            link = page.inner_text("p.link").strip()
            page.screenshot(path=str(shots / "portal-slip.png"), full_page=True)
            page.goto(f"{base}/tokens")
            page.screenshot(path=str(shots / "portal-tokens.png"), full_page=True)
            assert page.locator("#tokens .s-valid").count() == 1
            patient = browser.new_context().new_page()
            decoded = subprocess.run(["/usr/bin/zbarimg", "--quiet", "--raw", str(shots / "portal-slip.png")],
                                     capture_output=True, text=True, timeout=60).stdout.split()
            assert decoded == [link] and re.fullmatch(r"http://[^/]+:\d+/token\?[A-Za-z0-9]{64}", link)
            patient.goto(base + "/token?" + link.split("?", 1)[1])  # the link's host is the box, not loopback
            assert patient.url == f"{base}/portal/" and "DOE, JANE" in patient.content()
        finally:
            browser.close()
