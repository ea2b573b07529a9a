"""Every technician page in a real browser (Debian's Chromium), at laptop and at phone size.

The other browser tests walk through what a technician does; this one looks at each page the way a
technician first sees it: it renders with no script error and no Content-Security-Policy refusal,
nothing but the page's own tables scrolls sideways on a phone (a page wider than the screen hides
its buttons), and every form field has a visible label or title. The screenshots go to
docs/screenshots/ so the repository shows what the code renders.
"""

from __future__ import annotations

import pytest
from pydicom import dcmread
from support import REPO, Station, burnstation, dcmtk, write_study
from test_web_browser import ARGS, CHROMIUM, SIZES
from test_web_http import Client, make_admin, web_ready

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.station

SHOTS = REPO / "docs" / "screenshots"
PASSWORD = "correct horse"
# (screenshot name, path); "{study}" is the stored study's UID
PAGES = [
    ("jobs", "/jobs"), ("studies", "/studies"), ("study", "/studies/{study}"), ("tokens", "/tokens"),
    ("robots", "/robots"), ("nodes", "/nodes"), ("query", "/query"), ("transfers", "/transfers"),
    ("forwarding", "/forwarding"), ("storage", "/storage"), ("network", "/network"), ("backup", "/backup"),
    ("users", "/users"), ("diagnostics", "/diagnostics"), ("audit", "/logs/audit"),
    ("associations", "/logs/associations"), ("hl7log", "/logs/hl7"),
    ("settings-dicom", "/settings/dicom"), ("settings-burning", "/settings/burning"),
    ("settings-worklist", "/settings/worklist"), ("settings-http", "/settings/http"),
    ("settings-station", "/settings/station"),
]
# pages the walk-through test (test_web_browser.py) shoots in a live state; not overwritten here
SHOT_ELSEWHERE = {("jobs", "laptop"), ("jobs", "phone"), ("robots", "laptop"), ("robots", "phone"),
                  ("studies", "laptop"), ("studies", "phone"), ("study", "laptop"), ("nodes", "laptop"),
                  ("settings-dicom", "laptop"), ("settings-dicom", "phone"), ("settings-http", "laptop"),
                  ("users", "laptop"), ("diagnostics", "laptop"), ("audit", "laptop"),
                  ("query", "laptop"), ("transfers", "laptop")}

# What the page shows sideways beyond the window, leaving out what scrolls inside its own box
# (a wide table in an overflow-x container is fine: the page itself stays put).
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.right <= width + 1) continue;
    let inside = false;
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX;
      if (o === 'auto' || o === 'scroll' || o === 'hidden') { inside = true; break; }
    }
    if (!inside) out.push(el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
                          (el.className && typeof el.className === 'string' ? '.' + el.className.split(' ')[0] : '') +
                          ' right=' + Math.round(r.right));
  }
  return {page: document.documentElement.scrollWidth, width: width, out: out.slice(0, 8)};
}"""
# form fields a person cannot name: no <label for>, no wrapping label, no aria-label or title
UNLABELLED = """() => {
  const out = [];
  for (const el of document.querySelectorAll('input, select, textarea')) {
    if (['hidden', 'submit', 'button'].includes(el.type)) continue;
    const named = (el.id && document.querySelector(`label[for="${el.id}"]`)) || el.closest('label') ||
                  el.getAttribute('aria-label') || el.getAttribute('title') || el.getAttribute('placeholder');
    if (!named) out.push(el.name || el.id || el.outerHTML.slice(0, 60));
  }
  return out;
}"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A station with an admin logged in, one stored study and one known node."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BURNSTATION_TEST_SCRYPT_N", "1024")
    base = tmp_path_factory.mktemp("gallery")
    st = Station(base / "data")
    st.start()
    try:
        web_ready(st)
        admin = Client(st.http_port)
        make_admin(st, admin, "admin", PASSWORD)
        files = write_study(base / "study", 2, 3, patient_id="GAL1", patient_name="GALLERY^ANNA MARIA",
                            rows=32, cols=32)
        r = dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *map(str, files))
        assert r.returncode == 0, r.stderr
        burnstation(st.data, "nodes", "add", "PACS", "127.0.0.1", "11112", "--description", "enterprise PACS")
        study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        yield {"st": st, "admin": admin, "study": study}
    finally:
        st.stop()
        mp.undo()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.mark.parametrize("size", sorted(SIZES))
def test_every_page_renders_fits_and_names_its_fields(site, browser, size):
    st = site["st"]
    base = f"http://127.0.0.1:{st.http_port}"
    width, height = SIZES[size]
    context = browser.new_context(viewport={"width": width, "height": height})
    context.add_cookies([{"name": name, "value": value, "url": base} for name, value in site["admin"].cookies.items()])
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"script error {e}"))
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        for name, path in PAGES:
            response = page.goto(base + path.format(study=site["study"]))
            assert response is not None and response.status == 200, (path, response and response.status)
            assert "/login" not in page.url, f"{path}: sent to the login page"
            assert page.inner_text("main").strip(), f"{path}: empty page"
            if size == "phone":
                fit = page.evaluate(OVERFLOW)
                if fit["out"] or fit["page"] > fit["width"] + 1:
                    problems.append(f"{path} is wider than a phone: {fit}")
            unnamed = page.evaluate(UNLABELLED)
            if unnamed:
                problems.append(f"{path}: form fields without a label: {unnamed}")
            if (name, size) not in SHOT_ELSEWHERE:
                page.screenshot(path=str(SHOTS / f"{name}-{size}.png"), full_page=True)
        assert not problems, problems
    finally:
        context.close()


def test_diagnostics_page_says_what_burnstation_status_says(site):
    """The web's Diagnostics page and `burnstation status` end in the same lines (disk, retention, data
    folder permissions, state.db backups, certificate), and the transfer and forwarding lines."""
    status = burnstation(site["st"].data, "status").stdout
    code, _, page = site["admin"].get("/diagnostics")
    assert code == 200
    from bottle import html_escape

    for prefix in ("Disk:", "Retention:", "Data folder permissions:", "state.db backup:", "TLS certificate:",
                   "Transfers:", "Forwarding rules:"):
        line = next(ln.strip() for ln in status.splitlines() if ln.strip().startswith(prefix))
        if prefix == "state.db backup:":
            line = line.split(", newest")[0]  # the time of the newest backup may move between the two reads
        if prefix == "Disk:":
            line = line.split(" MB free")[1].split(" — ")[0]  # free space moves between the two reads
        assert html_escape(line) in page, (prefix, line)
    assert "C-STORE refused below 0 MB" not in page and "no minimum free space set for C-STORE" in page
