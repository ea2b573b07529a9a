"""The technician UI in a real browser (Debian's Chromium driven by Playwright) against a running
station with the simulated Epson: first start, settings applied at once, Echo, a burn watched live.

The test also saves screenshots of the main pages at laptop and phone size to docs/screenshots/,
so the pictures in the repository show what the code really renders.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request

import pytest
from support import BIN, REPO, dcmtk, free_port, storescp, wait_for, write_study

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SHOTS = REPO / "docs" / "screenshots"
SIZES = {"laptop": (1366, 800), "phone": (390, 844)}
HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch):
    monkeypatch.setenv("BURNSTATION_TEST_SCRYPT_N", "1024")


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def shoot(page, name: str, size: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}-{size}.png"), full_page=True)


def test_first_start_settings_echo_and_live_burn(station, browser, tmp_path):
    station.stop()
    station.start("--simulate", "--robots", "epson", "--sim-speed", "0.1")
    base = f"http://127.0.0.1:{station.http_port}"
    code = (station.data / "setup-code").read_text().strip()

    context = browser.new_context(viewport={"width": 1366, "height": 800})
    page = context.new_page()
    problems: list[str] = []

    def dialog(d) -> None:
        if d.type == "confirm" and d.message.startswith("Cancel job"):
            d.accept()  # the page's own "are you sure"
        else:
            problems.append(f"dialog {d.type} {d.message}")
            d.dismiss()
    page.on("dialog", dialog)
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("pageerror", lambda e: problems.append(f"script error {e}"))

    def goto(path: str) -> None:
        page.goto(base + path)

    wait_for(lambda: _answers(base), 60, "the web server")
    # first start: / leads to /setup; a wrong code is refused, the right one makes the admin
    goto("/")
    assert page.url.endswith("/setup")
    shoot(page, "setup", "laptop")
    page.fill("#code", "ZZZZ-ZZZZ-ZZZZ")
    page.fill("#username", "admin")
    page.fill("#password", "correct horse")
    page.fill("#password2", "correct horse")
    page.click("button[type=submit]")
    assert "wrong setup code" in page.inner_text(".error")
    page.fill("#code", code)
    page.fill("#password", "correct horse")
    page.fill("#password2", "correct horse")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/jobs"))
    assert page.inner_text(".who").startswith("admin")
    goto("/setup")
    assert "Setup is done" in page.inner_text("main")

    # log out and in again
    page.click("header .logout button")
    page.wait_for_url(re.compile(r"/login"))
    shoot(page, "login", "laptop")
    page.fill("#username", "admin")
    page.fill("#password", "correct horse")
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r"/jobs"))

    # institution and department: set on the HTTP page, then in the header of every page
    goto("/settings/http")
    page.fill("#f-http\\.institution", "St. Olaf Hospital")
    page.fill("#f-http\\.department", "Radiology")
    page.click("#save")
    page.wait_for_url(re.compile(r"msg="))
    assert page.inner_text("#institution") == "St. Olaf Hospital" and page.inner_text("#department") == "Radiology"

    # AE title: the derived titles follow the typing; 14 characters refused with the CLI's message
    goto("/settings/dicom")
    page.fill("#f-dicom\\.aet", "ABCDEFGHIJKLMN")
    assert page.inner_text("#aet-derived").split() == ["ABCDEFGHIJKLMN", "ABCDEFGHIJKLMN_E", "ABCDEFGHIJKLMN_P",
                                                       "ABCDEFGHIJKLMN_TE", "ABCDEFGHIJKLMN_TP"]
    page.click("#save")
    assert "at most 13 characters" in page.inner_text("#error")
    page.fill("#f-dicom\\.aet", "WEBSTATION")
    page.click("#save")
    page.wait_for_url(re.compile(r"msg="))
    assert "Saved (1 changed)" in page.inner_text(".flash")
    shoot(page, "settings-dicom", "laptop")
    wait_for(lambda: dcmtk("echoscu", "-aec", "WEBSTATION", "127.0.0.1", str(station.port)).returncode == 0,
             15, "C-ECHO on the new AE title")

    # known nodes: Echo a dcmtk storescp (success), then a closed port (failure with the reason)
    with storescp(tmp_path / "scp", "WEBDEST") as scp_port:
        goto("/nodes")
        page.fill("#node-form input[name=aet]", "WEBDEST")
        page.fill("#node-form input[name=host]", "127.0.0.1")
        page.fill("#node-form input[name=port]", str(scp_port))
        page.click("#node-form button[type=submit]")
        page.wait_for_url(re.compile(r"msg="))
        page.click("tr[data-node=WEBDEST] form[action$='/echo'] button")
        page.wait_for_url(re.compile(r"echo="))
        assert "success" in page.inner_text("#echo-result")
        shoot(page, "nodes", "laptop")
    closed = free_port()
    page.click("a[href='/nodes?edit=WEBDEST']")
    page.fill("#node-form input[name=port]", str(closed))
    page.click("#node-form button[type=submit]")
    page.wait_for_url(re.compile(r"msg="))
    page.click("tr[data-node=WEBDEST] form[action$='/echo'] button")
    page.wait_for_url(re.compile(r"echo="), timeout=60000)
    result = page.inner_text("#echo-result")
    assert "failure" in result and len(result.split("failure", 1)[1].strip(" –")) > 3, result

    # a stored study (hostile patient name) burned from its page on the simulated Epson
    files = write_study(tmp_path / "study", n_series=2, per_series=2, patient_name=HOSTILE)
    sent = dcmtk("storescu", "-aec", "WEBSTATION", "127.0.0.1", str(station.port), *map(str, files))
    assert sent.returncode == 0, sent.stderr
    goto("/studies")
    page.wait_for_selector("#studies a.patient")
    assert page.inner_text("#studies a.patient") == HOSTILE
    shoot(page, "studies", "laptop")
    page.click("#studies a.patient")
    page.wait_for_url(re.compile(r"/studies/[0-9.]+$"))
    assert page.inner_text("h1.patient") == HOSTILE
    page.wait_for_load_state("networkidle")
    assert page.locator("figure.preview img").count() == 2  # one preview per series, rendered by the server
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    shoot(page, "study", "laptop")
    page.select_option("#burn-role", "epson")
    page.click("#burn")
    page.wait_for_url(re.compile(r"/jobs\?msg="))
    job_id = re.search(r"Job (J[0-9-]+) queued", page.inner_text(".flash")).group(1)
    page.evaluate("window.__sameDocument = true")
    row = f"tr[data-job='{job_id}']"
    states, progress, shot = [], [], False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = page.inner_text(f"{row} .state")
        value = float(page.get_attribute(f"{row} progress", "value") or 0)
        if not states or states[-1] != state:
            states.append(state)
        progress.append(value)
        if state in ("done", "failed", "cancelled"):
            break
        if state == "burning" and value > 0 and not shot:
            shoot(page, "jobs", "laptop")
            shot = True
        page.wait_for_timeout(300)
    if not shot:
        shoot(page, "jobs", "laptop")
    assert states[-1] == "done", (states, page.inner_text(f"{row} .message"))
    assert len(states) > 1, states  # the row changed while we watched
    assert page.evaluate("window.__sameDocument") is True  # no reload
    assert progress == sorted(progress), progress
    assert page.inner_text(f"{row} .patient").startswith(HOSTILE)
    # the job's own page: its disc with the label preview, and what is on it
    page.click(f"{row} td.id a")
    page.wait_for_url(re.compile(r"/jobs/J[0-9-]+$"))
    page.wait_for_load_state("networkidle")
    assert page.locator("img.label").count() == 1
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("table.list tbody tr").count() == 2  # two series
    shoot(page, "job", "laptop")

    study_url = page.url  # (the jobs page; the study page is reached again below)

    # an injected simulator fault: the robot's words on the job row, then Retry burns it
    sim(station, "fault", "write_error", "1", "on")
    goto("/studies")
    page.click("#studies a.patient")
    page.select_option("#burn-role", "epson")
    page.click("#burn")
    page.wait_for_url(re.compile(r"/jobs\?msg="))
    failed_id = re.search(r"Job (J[0-9-]+) queued", page.inner_text(".flash")).group(1)
    row = f"tr[data-job='{failed_id}']"
    wait_text(page, f"{row} .state", "failed", 120)
    robot_text = page.inner_text(f"{row} .message")
    assert robot_text and robot_text != "failed", robot_text
    shoot(page, "jobs-failed", "laptop")
    page.click(f"{row} form[action$='/retry'] button")
    page.wait_for_url(re.compile(r"msg="))
    wait_text(page, f"{row} .state", "done", 120)

    # Cancel on a job that waits (no Primera robot here): it ends "cancelled"
    goto("/studies")
    page.click("#studies a.patient")
    page.select_option("#burn-role", "primera")
    page.click("#burn")
    page.wait_for_url(re.compile(r"/jobs\?msg="))
    waiting_id = re.search(r"Job (J[0-9-]+) queued", page.inner_text(".flash")).group(1)
    page.click(f"tr[data-job='{waiting_id}'] form[action$='/cancel'] button")
    page.wait_for_url(re.compile(r"msg="))
    wait_text(page, f"tr[data-job='{waiting_id}'] .state", "cancelled", 30)
    del study_url

    # robots page: the simulator's numbers, and a change followed within 10 s without a reload
    goto("/robots")
    page.wait_for_selector("section.robot[data-robot=epson] meter[data-ink]")
    robot = json.loads(sim(station, "status"))
    card = "section.robot[data-robot=epson]"
    for colour, level in _ink(robot).items():
        assert int(float(page.get_attribute(f"{card} meter[data-ink='{colour}']", "value"))) == level, colour
    shoot(page, "robots", "laptop")
    sim(station, "refill", "17")
    page.evaluate("window.__sameDocument = true")
    wait_text(page, f"{card} dd[data-stacker]", "17 discs", 10, exact=False)
    assert page.evaluate("window.__sameDocument") is True
    for path, name in (("/diagnostics", "diagnostics"), ("/logs/audit", "audit"), ("/settings/http", "settings-http"),
                       ("/users", "users")):
        goto(path)
        assert page.inner_text("#institution") == "St. Olaf Hospital", path
        shoot(page, name, "laptop")
    audit_text = page.context.new_page()
    audit_text.goto(base + "/logs/audit")
    text = audit_text.inner_text("#audit")
    for needle in ("setting", "dicom.aet", '"BURNSTATION" -> "WEBSTATION"', "burn", "echo", "node-add", "login"):
        assert needle in text, needle
    audit_text.close()

    # phone size: the same session, the main pages
    phone = browser.new_context(viewport={"width": 390, "height": 844}, storage_state=context.storage_state())
    small = phone.new_page()
    for path, name in (("/jobs", "jobs"), ("/studies", "studies"), ("/robots", "robots"),
                       ("/settings/dicom", "settings-dicom")):
        small.goto(base + path)
        small.wait_for_load_state("networkidle")
        shoot(small, name, "phone")
    phone.close()
    assert not problems, problems
    context.close()


def wait_text(page, selector: str, text: str, timeout: float, exact: bool = True) -> None:
    """Poll the page (from Python: the page's CSP forbids the eval behind wait_for_function)."""
    def shown():
        got = page.inner_text(selector) if page.query_selector(selector) else None
        return got is not None and (got == text if exact else got.startswith(text))
    wait_for(shown, timeout, f"{text!r} in {selector}", every=0.25)


def sim(station, *command: str) -> str:
    """`burnstation-sim ctl` on the station's simulated Epson (as an operator would)."""
    proc = subprocess.run([str(BIN / "burnstation-sim"), "ctl", "--root", str(station.data / "sim"), "epson",
                           *command], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _ink(status: dict) -> dict[str, int]:
    """The simulator's ink levels under the names the Epson driver reports (drivers/epson/status.py)."""
    from drivers.epson.status import INK_COLOURS

    return {INK_COLOURS["ink_" + k.lower()]: int(v) for k, v in status["ink"].items()}


def _answers(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/static/style.css", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False
