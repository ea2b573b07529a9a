"""The patient portal over HTTP (cheroot on a free port): token link → cookie → study page, the
answers to bad tokens, throttling, byte ranges, tampering, and Chromium opening a link."""

from __future__ import annotations

import io
import re
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from portal_support import get, serve, stored_study
from pydicom import dcmread
from pydicom.fileset import FileSet
from support import REPO, configure, wait_for

from appliance import db
from appliance.portal import tokens, zips

SCREENSHOTS = REPO / "docs" / "screenshots"


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def portal(tmp_path):
    """A data folder with studies A (two series) and B, a token for each, the portal served."""
    from webui.portal import portal_app

    data = tmp_path / "data"
    a = stored_study(data, "a", patient_name="MÜLLER^ANNA", charset="ISO_IR 100", patient_id="PA", study_description="CT <b>THORAX</b>",
                     n_series=2, per_series=3)
    b = stored_study(data, "b", patient_name="OTHER^BOB", patient_id="PB", n_series=1, per_series=2)
    configure(data, "http.institution=St. Example Hospital", "http.department=Radiology")
    conn = db.connect(data)
    tok_a, row_a = tokens.create(conn, a, 30)
    tok_b, row_b = tokens.create(conn, b, 30)
    clock = Clock()
    with serve(portal_app(data, clock=clock)) as port:
        yield {"data": data, "conn": conn, "port": port, "clock": clock, "a": a, "b": b, "tok_a": tok_a,
               "tok_b": tok_b, "row_a": row_a, "row_b": row_b}
    conn.close()


def open_link(p, token):
    """Follow the token link as a browser would: the cookie it sets."""
    status, headers, _ = get(p["port"], "/token?" + token)
    assert status == 303 and headers["location"].endswith("/portal/"), (status, headers)
    return headers["set-cookie"].split(";")[0]


def test_link_becomes_an_httponly_cookie_and_a_neutral_url(portal):
    p = portal
    status, headers, body = get(p["port"], "/token?" + p["tok_a"])
    assert status == 303 and headers["location"].endswith("/portal/")
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"portal_token={p['tok_a']};")
    assert re.search(r"(?i)httponly", cookie) and re.search(r"(?i)path=/portal(;|$)", cookie)
    assert re.search(r"(?i)samesite=lax", cookie) and "secure" not in cookie.lower()  # plain HTTP here
    assert headers["referrer-policy"] == "no-referrer" and headers["cache-control"] == "no-store"
    status, headers, body = get(p["port"], "/portal/", {"Cookie": cookie.split(";")[0]})
    page = body.decode()
    assert status == 200 and headers["cache-control"] == "no-store" and "script-src" not in headers[
        "content-security-policy"] and "default-src 'none'" in headers["content-security-policy"]
    for text in ("St. Example Hospital", "Radiology", "MÜLLER, ANNA", "2024-01-15", "CT &lt;b&gt;THORAX&lt;/b&gt;",
                 "Series 1", "Series 2", "/portal/download/dicom-jpeg-lossless"):
        assert text in page, text
    assert "<b>THORAX" not in page and p["tok_a"] not in page and "<script" not in page
    assert page.index("dicom-jpeg-lossless") < page.index('/portal/download/dicom"')  # the default first
    uses = tokens.uses(p["conn"], p["row_a"].id)
    assert [u["what"] for u in uses] == ["open link"] and uses[0]["address"] == "127.0.0.1"


def test_bad_tokens_get_one_page_expired_its_own(portal):
    p = portal
    _, row_c = tokens.create(p["conn"], p["a"], 30)
    tok_c = _
    tokens.revoke(p["conn"], row_c.id)
    answers = set()
    for bad in ("A" * 64, p["tok_a"][:-1], p["tok_a"] + "x", "", "%00" * 3, p["tok_a"][:-1] + "%21", tok_c,
                tokens.hash_token(p["tok_a"])):
        status, headers, body = get(p["port"], "/token?" + bad)
        assert "set-cookie" not in headers
        answers.add((status, body))
    assert len(answers) == 1 and next(iter(answers))[0] == 404
    assert b"not valid" in next(iter(answers))[1]
    p["clock"].t += 601  # past the throttle's window (tested on its own below)
    # the same page through the cookie
    status, _, body = get(p["port"], "/portal/", {"Cookie": f"portal_token={tok_c}"})
    assert (status, body) in answers
    status, _, body = get(p["port"], "/portal/")
    assert (status, body) in answers
    # revocation takes effect at once, for a cookie already given out
    cookie = open_link(p, p["tok_b"])
    assert get(p["port"], "/portal/", {"Cookie": cookie})[0] == 200
    tokens.revoke(p["conn"], p["row_b"].id)
    assert (lambda r: (r[0], r[2]))(get(p["port"], "/portal/", {"Cookie": cookie})) in answers
    # expiry, from the injected clock
    p["clock"].t = p["row_a"].expires_at + 1
    status, _, body = get(p["port"], "/token?" + p["tok_a"])
    date = time.strftime("%Y-%m-%d", time.localtime(p["row_a"].expires_at))
    assert status == 410 and f"expired on {date}".encode() in body


def test_repeated_bad_tokens_are_throttled(portal):
    p = portal
    for _ in range(10):
        assert get(p["port"], "/token?" + "B" * 64)[0] == 404
    status, headers, body = get(p["port"], "/token?" + p["tok_a"])
    assert status == 429 and int(headers["retry-after"]) > 0 and b"Too many" in body
    p["clock"].t += 601
    assert get(p["port"], "/token?" + p["tok_a"])[0] == 303


def test_downloads_stay_in_the_token_study_whatever_the_url(portal, tmp_path):
    p = portal
    cookie = {"Cookie": open_link(p, p["tok_a"])}
    sops_a = {r[0] for r in p["conn"].execute("SELECT sop_uid FROM instances WHERE study_uid=?", (p["a"],))}
    for path in ("/portal/download/dicom", f"/portal/download/dicom?study={p['b']}",
                 f"/portal/download/dicom?token={p['tok_b']}", "/portal/download/dicom;study=" + p["b"]):
        status, headers, body = get(p["port"], path, cookie)
        if status != 200:
            assert status == 404
            continue
        zf = zipfile.ZipFile(io.BytesIO(body))
        got = {str(dcmread(io.BytesIO(zf.read(n)), stop_before_pixels=True).SOPInstanceUID)
               for n in zf.namelist() if n != "DICOMDIR"}
        assert got == sops_a, path
    for path in ("/portal/download/../../token?" + p["tok_b"], "/portal/download/tar", "/portal/series/2/preview/0.jpg",
                 "/portal/series/-1/preview/0.jpg", "/portal/series/0/preview/9.jpg", "/portal/download/%2e%2e",
                 f"/portal/{p['b']}/download/dicom", "/portal/static/../portal.py"):
        status, _, body = get(p["port"], path, cookie)
        assert status in (400, 404) and b"DICM" not in body and b"PK\x03\x04" not in body, path
    status, headers, body = get(p["port"], "/portal/series/1/preview/0.jpg", cookie)
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    # a cookie path-scoped to /portal never reaches another study; a cookie of B gives B only
    status, _, body = get(p["port"], "/portal/download/dicom", {"Cookie": open_link(p, p["tok_b"])})
    assert p["a"].encode() not in body and p["b"].encode() in body


def test_as_stored_zip_has_content_length_and_resumes(portal):
    p = portal
    cookie = {"Cookie": open_link(p, p["tok_a"])}
    status, headers, whole = get(p["port"], "/portal/download/dicom", cookie)
    assert status == 200 and int(headers["content-length"]) == len(whole) and headers["accept-ranges"] == "bytes"
    assert headers["content-type"] == "application/zip" and "attachment" in headers["content-disposition"]
    assert zipfile.ZipFile(io.BytesIO(whole)).testzip() is None
    cut = len(whole) // 2
    status, h2, head = get(p["port"], "/portal/download/dicom", {**cookie, "Range": f"bytes=0-{cut - 1}"})
    assert status == 206 and head == whole[:cut] and h2["content-range"] == f"bytes 0-{cut - 1}/{len(whole)}"
    status, h3, tail = get(p["port"], "/portal/download/dicom",
                           {**cookie, "Range": f"bytes={cut}-", "If-Range": headers["etag"]})
    assert status == 206 and head + tail == whole and int(h3["content-length"]) == len(tail)
    assert get(p["port"], "/portal/download/dicom", {**cookie, "Range": f"bytes={len(whole)}-"})[0] == 416
    status, _, again = get(p["port"], "/portal/download/dicom", {**cookie, "Range": "bytes=0-9", "If-Range": '"x"'})
    assert status == 200 and again == whole  # changed since: the whole zip
    status, h4, empty = get(p["port"], "/portal/download/dicom", cookie, method="HEAD")
    assert status == 200 and int(h4["content-length"]) == len(whole) and empty == b""
    status, h5, _ = get(p["port"], "/portal/download/jpeg", cookie)
    assert status == 200 and "content-length" not in h5 and "accept-ranges" not in h5
    assert list((p["data"] / "spool").glob("portal-*")) == []
    whats = [u["what"] for u in tokens.uses(p["conn"], p["row_a"].id)]
    assert "download dicom" in whats and f"download dicom bytes {cut}-{len(whole) - 1}" in whats


def _dciodvfy_errors(path: Path) -> set[str]:
    proc = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    assert (proc.stdout + proc.stderr).strip()
    return {line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")}


def test_chromium_opens_a_link_sees_previews_and_downloads(portal, tmp_path):
    from playwright.sync_api import sync_playwright

    p = portal
    base = f"http://127.0.0.1:{p['port']}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 900})
            page = context.new_page()
            page.goto(f"{base}/token?{p['tok_a']}")
            assert page.url == f"{base}/portal/"  # the token left the address bar
            # polled from here: wait_for_function evaluates strings, which the page's CSP forbids
            wait_for(lambda: page.evaluate("() => Array.from(document.images).every(i => i.complete)"),
                     timeout=60, what="previews loaded")
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
            assert len(widths) == 6 and all(w > 0 for w in widths), widths
            assert page.evaluate("document.cookie") == ""  # HttpOnly: no script sees the token
            page.screenshot(path=str(SCREENSHOTS / "portal-study.png"), full_page=True)
            saved = {}
            for fmt, label in (("dicom-jpeg-lossless", "DICOM, JPEG lossless"), ("dicom", "DICOM as stored"),
                               ("jpeg", "JPEG pictures")):
                with page.expect_download() as info:
                    page.click(f"text={label}")
                saved[fmt] = tmp_path / f"{fmt}.zip"
                info.value.save_as(saved[fmt])
                assert info.value.failure() is None
            bad = context.new_page()
            bad.goto(f"{base}/token?{'Z' * 64}")
            assert "not valid" in bad.content()
            bad.screenshot(path=str(SCREENSHOTS / "portal-not-valid.png"))
        finally:
            browser.close()
    # the JPEG-lossless zip: a valid file set, every image the stored pixels
    out = tmp_path / "jl"
    with zipfile.ZipFile(saved["dicom-jpeg-lossless"]) as zf:
        assert zf.testzip() is None
        zf.extractall(out)
    assert subprocess.run(["/usr/bin/dcmdump", str(out / "DICOMDIR")], capture_output=True,
                          timeout=60).returncode == 0
    assert _dciodvfy_errors(out / "DICOMDIR") == set()
    stored = {str(r["sop_uid"]): Path(r["path"]) for r in p["conn"].execute(
        "SELECT sop_uid, path FROM instances WHERE study_uid=?", (p["a"],))}
    fs = FileSet(dcmread(out / "DICOMDIR"))
    assert {str(i.SOPInstanceUID) for i in fs} == set(stored)
    for record in fs:
        got = dcmread(record.path)
        assert str(got.file_meta.TransferSyntaxUID) == zips.JPEG_LOSSLESS_SV1
        assert np.array_equal(got.pixel_array, dcmread(stored[str(record.SOPInstanceUID)]).pixel_array)
    # the as-stored zip: what Content-Length announced
    status, headers, _ = get(p["port"], "/portal/download/dicom", {"Cookie": open_link(p, p["tok_a"])}, method="HEAD")
    assert saved["dicom"].stat().st_size == int(headers["content-length"])
    with zipfile.ZipFile(saved["jpeg"]) as zf:
        assert zf.testzip() is None and len(zf.namelist()) == 6


def test_printed_slip_shows_the_link_and_a_qr_code_that_decodes(tmp_path):
    from playwright.sync_api import sync_playwright

    from appliance.portal.slip import slip_html

    link = "https://pacs.example.org:8443/token?" + "Ab1" * 21 + "Z"
    html = slip_html(link, patient_name="O'BRIEN <JR>", study_date="2024-01-15", study_description="CT & MR",
                     expires_at=time.time() + 86400, institution="St. Example")
    assert "O&#x27;BRIEN &lt;JR&gt;" in html and "<script" not in html
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            page.set_content(html)
            assert link in page.inner_text("body")
            page.screenshot(path=str(tmp_path / "slip.png"), full_page=True)
        finally:
            browser.close()
    proc = subprocess.run(["/usr/bin/zbarimg", "--quiet", "--raw", str(tmp_path / "slip.png")], capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.split() == [link]


def test_token_never_reaches_an_access_log_line():
    from webui.portal import loggable_path

    token = "Q" * 64
    assert loggable_path({"PATH_INFO": "/token", "QUERY_STRING": token}) == "/token"
    assert loggable_path({"PATH_INFO": "/token/", "QUERY_STRING": token}) == "/token/"
    assert loggable_path({"PATH_INFO": "/portal/download/dicom", "QUERY_STRING": "a=1"}) == "/portal/download/dicom?a=1"


def test_mounts_into_another_app_with_one_line(tmp_path):
    """What the technician app does: `app.merge(portal_app(data_dir))`; the portal keeps its headers."""
    import bottle

    from webui.portal import portal_app

    data = tmp_path / "data"
    study = stored_study(data, "a")
    conn = db.connect(data)
    token, _ = tokens.create(conn, study, 5)
    conn.close()
    tech = bottle.Bottle()

    @tech.get("/")
    def home():
        return "technician"

    tech.merge(portal_app(data))
    with serve(tech) as port:
        assert get(port, "/")[2] == b"technician"
        status, headers, _ = get(port, "/token?" + token)
        assert status == 303 and headers["referrer-policy"] == "no-referrer"
        status, headers, body = get(port, "/portal/", {"Cookie": headers["set-cookie"].split(";")[0]})
        assert status == 200 and b"DOE, JOHN" in body and headers["cache-control"] == "no-store"
