"""The web pages for query/retrieve/send, the transfer queue and forwarding rules, storage retention,
network settings and configuration backup: each page for its role, refused below it, bad values
shown with their reason, and what the pages do checked against the CLI and real dcmtk peers.

One station serves the whole module (plain HTTP, a logged-in session per role, CSRF tokens).
"""

from __future__ import annotations

import json
import re

import pytest
from bottle import html_escape
from pydicom import dcmread
from support import Station, burnstation, dcmtk, storescp, wait_for, write_study
from test_web_http import Client, make_admin, web_ready

pytestmark = pytest.mark.station
PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A running station with an admin, a technician and a viewer logged in, and one stored study."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BURNSTATION_TEST_SCRYPT_N", "1024")
    base = tmp_path_factory.mktemp("webpages")
    st = Station(base / "data")
    st.start()
    try:
        web_ready(st)
        admin = Client(st.http_port)
        make_admin(st, admin, "admin", PASSWORD)
        clients = {"admin": admin}
        for name in ("technician", "viewer"):
            burnstation(st.data, "users", "add", name, "--role", name, input=PASSWORD + "\n")
            c = Client(st.http_port)
            assert c.login(name, PASSWORD) == 303
            clients[name] = c
        files = write_study(base / "study", 1, 3, patient_id="PWEB1", patient_name="WEB^ANN", rows=16, cols=16)
        r = dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *map(str, files))
        assert r.returncode == 0, r.stderr
        burnstation(st.data, "nodes", "add", "BURNSTATION", "127.0.0.1", str(st.port), "--description", "this station")
        yield {"st": st, "files": files, "study": str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID),
               "base": base, **clients}
    finally:
        st.stop()
        mp.undo()


def token(c: Client, path: str = "/jobs") -> str:
    return c.csrf(path)


def flash(headers: dict[str, str]) -> str:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(headers["location"]).query).get("msg", [""])[0]


def transfers_api(c: Client) -> dict:
    status, _, text = c.get("/api/transfers")
    assert status == 200, text[:300]
    return json.loads(text)


@pytest.mark.parametrize(("path", "role"), [("/query", "technician"), ("/transfers", "technician"),
                                            ("/forwarding", "technician"), ("/api/transfers", "technician"),
                                            ("/storage", "technician"), ("/network", "admin"), ("/backup", "admin"),
                                            ("/logs/hl7", "admin")])
def test_pages_render_for_their_role_and_are_refused_below(site, path, role):
    lower = {"technician": "viewer", "admin": "technician"}[role]
    assert site[role].get(path)[0] == 200
    assert site["admin"].get(path)[0] == 200
    status, _, text = site[lower].get(path)
    assert status == 403 and f"needs the {role} role" in text
    nav = site[role].get("/jobs")[2]
    if path.startswith(("/query", "/transfers", "/forwarding", "/storage", "/network", "/backup")):
        assert f'href="{path}"' in nav
        assert f'href="{path}"' not in site[lower].get("/jobs")[2]


def test_query_lists_the_nodes_studies_and_refuses_bad_values(site):
    tech = site["technician"]
    status, _, text = tech.get("/query?node=BURNSTATION&level=study&name=WEB*")
    assert status == 200, text[:500]
    assert "1 result(s) from BURNSTATION" in text and "WEB^ANN" in text and "PWEB1" in text
    assert text.count(f'name="study" value="{site["study"]}"') == 2  # Retrieve, and Retrieve and burn
    assert "0 result(s)" in tech.get("/query?node=BURNSTATION&level=study&name=NOBODY*")[2]
    bad = tech.get("/query?node=BURNSTATION&level=study&from=2024-13")[2]
    assert "query date: YYYY-MM-DD" in bad
    series = tech.get("/query?node=BURNSTATION&level=series")[2]
    assert "give -k StudyInstanceUID" in series
    assert html_escape("'NOPE' is not a known node") in tech.get("/query?node=NOPE")[2]
    # the query is in the audit log
    assert "query" in site["admin"].get("/logs/audit?q=query")[2]


def test_retrieve_from_a_query_result_is_queued(site):
    tech = site["technician"]
    status, headers, _ = tech.post("/query/retrieve", {"csrf": token(tech, "/query"), "node": "BURNSTATION",
                                                       "study": site["study"], "burn": "0"})
    assert status == 303 and "/transfers?" in headers["location"]
    tid = re.search(r"Transfer (\S+) queued", flash(headers)).group(1)
    listed = {t["id"]: t for t in transfers_api(tech)["transfers"]}
    assert listed[tid]["kind"].startswith("retrieve") and listed[tid]["node"] == "BURNSTATION"
    assert tid in tech.get("/transfers")[2]
    refused = tech.post("/query/retrieve", {"csrf": token(tech, "/query"), "node": "NOPE", "study": site["study"]})
    assert "Not retrieved" in flash(refused[1]) and "not a known node" in flash(refused[1])
    assert site["viewer"].post("/query/retrieve", {"csrf": token(site["viewer"]), "node": "BURNSTATION",
                                                   "study": site["study"]})[0] == 403


def test_sends_from_the_cli_and_the_study_page_in_the_transfer_queue(site, tmp_path):
    tech, st = site["technician"], site["st"]
    dest = tmp_path / "dest"
    with storescp(dest, "DEST") as port:
        burnstation(st.data, "nodes", "add", "DEST", "127.0.0.1", str(port))
        out = burnstation(st.data, "send", "DEST", "--study", site["study"], "--no-wait")
        cli_id = out.stdout.split()[0]
        page = tech.get("/transfers")[2]
        assert f'data-transfer="{cli_id}"' in page

        def done(tid):
            t = {t["id"]: t for t in transfers_api(tech)["transfers"]}.get(tid)
            return t if t and t["state"] in ("done", "failed", "cancelled") else None

        t = wait_for(lambda: done(cli_id), 60, "the CLI send")
        assert t["state"] == "done" and t["completed"] == 3 and t["remaining"] == 0, t
        for p in [p for p in dest.rglob("*") if p.is_file()]:
            p.unlink()  # what arrives next came from the web send
        # the study page's "Send to node"
        study_page = tech.get(f"/studies/{site['study']}")[2]
        assert 'id="send-form"' in study_page and '<option value="DEST">' in study_page
        status, headers, _ = tech.post(f"/studies/{site['study']}/send",
                                       {"csrf": token(tech), "node": "DEST"})
        assert status == 303, headers
        web_id = re.search(r"Transfer (\S+) queued: 3 instances to DEST", flash(headers)).group(1)
        assert wait_for(lambda: done(web_id), 60, "the web send")["state"] == "done"
        got = sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in dest.rglob("*") if p.is_file())
    sent = sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in site["files"])
    assert got == sent
    # a finished transfer cannot be cancelled: the reason is shown
    _, headers, _ = tech.post(f"/transfers/{web_id}/cancel", {"csrf": token(tech)})
    assert "cannot cancel a transfer that is done" in flash(headers)
    nothing = tech.post("/studies/1.2.3.4/send", {"csrf": token(tech), "node": "DEST"})
    assert "Not sent" in flash(nothing[1])
    assert any(r for r in json.loads(burnstation(st.data, "transfers", "list", "--json").stdout) if r["id"] == web_id)


def test_forwarding_rules_add_show_backlog_and_delete(site):
    admin, tech, st = site["admin"], site["technician"], site["st"]
    burnstation(st.data, "nodes", "add", "FWD", "127.0.0.1", "9")  # nothing listens: the backlog stays
    status, _, text = admin.post("/forwarding", {"csrf": token(admin, "/forwarding"), "node": "FWD",
                                                 "modalities": "C T", "delay": "5"})
    assert status == 200 and "is not a modality code such as CT or MR" in text
    status, _, text = admin.post("/forwarding", {"csrf": token(admin, "/forwarding"), "node": "FWD",
                                                 "delay": "90000"})
    assert "from 0 to 86400 seconds" in text
    assert tech.post("/forwarding", {"csrf": token(tech), "node": "FWD"})[0] == 403
    status, headers, _ = admin.post("/forwarding", {"csrf": token(admin, "/forwarding"), "node": "FWD",
                                                    "name": "to-fwd", "modalities": "ot,CT", "delay": "600"})
    assert status == 303 and "Rule to-fwd added" in flash(headers)
    listed = json.loads(burnstation(st.data, "forward", "list", "--json").stdout)
    assert [(r["name"], r["node"], r["modalities"], r["delay"]) for r in listed] == [("to-fwd", "FWD", ["OT", "CT"], 600)]
    # something received now waits for the rule's delay: the backlog shows it
    files = write_study(site["base"] / "fwd", 1, 2, patient_id="PFWD", rows=16, cols=16)
    assert dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *map(str, files)).returncode == 0

    def backlog():
        row = re.search(r'data-rule="to-fwd">.*?<td class="num">(\d+) ', tech.get("/forwarding")[2], re.S)
        return row and int(row.group(1)) == 2

    wait_for(backlog, 60, "the backlog of 2")
    assert "Delete" not in tech.get("/forwarding")[2].split('data-rule="to-fwd"')[1].split("</tr>")[0]
    assert tech.post("/forwarding/to-fwd/delete", {"csrf": token(tech)})[0] == 403
    status, headers, _ = admin.post("/forwarding/to-fwd/delete", {"csrf": token(admin)})
    assert status == 303 and "Rule to-fwd deleted" in flash(headers)
    assert json.loads(burnstation(st.data, "forward", "list", "--json").stdout) == []
    assert any(r["action"] == "forward-add" and r["target"] == "to-fwd" for r in audit(st))


def test_storage_page_shows_usage_settings_and_purge_preview(site):
    import shutil

    admin, tech, st = site["admin"], site["technician"], site["st"]
    text = tech.get("/storage")[2]
    disk = shutil.disk_usage(st.data)
    used = float(re.search(r'id="used">([\d.]+)% used', text).group(1))
    assert abs(used - 100 * (disk.total - disk.free) / disk.total) < 1.0
    assert 'id="retention-form"' not in text and 'id="preview-form"' not in text  # technician: read only
    assert tech.post("/storage", {"csrf": token(tech), "storage.purge_after_days": "5"})[0] == 403
    assert tech.post("/storage/purge", {"csrf": token(tech)})[0] == 403
    # a bad value: the settings' own message, nothing changed
    status, _, text = admin.post("/storage", {"csrf": token(admin, "/storage"), "storage.low_water_percent": "95",
                                              "storage.high_water_percent": "90"})
    assert status == 200 and "must be below storage.high_water_percent" in text
    status, _, text = admin.post("/storage", {"csrf": token(admin, "/storage"), "storage.purge_after_days": "-3"})
    assert status == 200 and "storage.purge_after_days" in text and 'id="storage-error"' in text
    shown = json.loads(burnstation(st.data, "config", "show", "--json").stdout)
    assert shown["storage.low_water_percent"] == 80 and shown["storage.purge_after_days"] == 30
    status, headers, _ = admin.post("/storage", {"csrf": token(admin, "/storage"), "storage.purge_after_days": "7"})
    assert status == 303 and "Saved (1 changed)" in flash(headers)
    assert json.loads(burnstation(st.data, "config", "show", "--json").stdout)["storage.purge_after_days"] == 7
    # the dry run lists what the CLI's dry run lists; then the purge deletes those, audited
    assert "older than days: a whole number" in admin.get("/storage?preview=1&older_than_days=abc")[2]
    cli = json.loads(burnstation(st.data, "storage", "purge", "--dry-run", "--older-than-days", "0", "--json").stdout)
    n = len(cli["studies"])
    text = admin.get("/storage?preview=1&older_than_days=0")[2]
    assert f"Preview: {n} stud" in text
    status, headers, _ = admin.post("/storage/purge", {"csrf": token(admin, "/storage"), "older_than_days": "0"})
    assert status == 303 and f"Purged: {n} stud" in flash(headers)
    assert any(r["action"] == "storage-purge" for r in audit(st))


def test_network_page_sets_refuses_and_confirms(site):
    admin, st = site["admin"], site["st"]
    form = {k: v for k, v in [("hostname", "burnstation"), ("mode", "static"), ("address", "999.1.1.1/24")]}
    status, _, text = admin.post("/network", {"csrf": token(admin, "/network"), **form})
    assert status == 200 and html_escape("address: '999.1.1.1/24' is not an address with a prefix") in text
    status, _, text = admin.post("/network", {"csrf": token(admin, "/network"), "hostname": "-bad-"})
    assert "hostname: " in text and "must be 1 to 63 letters" in text
    assert json.loads(burnstation(st.data, "network", "show", "--json").stdout)["values"]["mode"] == "dhcp"
    status, headers, _ = admin.post("/network", {"csrf": token(admin, "/network"), "hostname": "ward3"})
    assert status == 303 and "Saved" in flash(headers)
    assert 'id="pending"' not in admin.get("/network")[2]
    status, headers, _ = admin.post("/network", {"csrf": token(admin, "/network"), "mode": "static",
                                                 "address": "192.168.50.20/24", "gateway": "192.168.50.1"})
    assert status == 303 and "confirm within 120 s" in flash(headers)
    shown = json.loads(burnstation(st.data, "network", "show", "--json").stdout)
    assert shown["values"]["hostname"] == "ward3" and shown["values"]["address"] == "192.168.50.20/24"
    assert shown["pending_seconds"] is not None
    page = admin.get("/network")[2]
    assert 'id="pending"' in page and 'id="confirm"' in page
    assert f'href="http://192.168.50.20:{st.http_port}/network"' in page  # where to confirm from
    # reached at an address that is not the new one: it proves nothing, refused
    status, headers, _ = admin.request("POST", "/network/confirm", {"csrf": token(admin, "/network")},
                                       headers={"Host": f"192.168.9.9:{st.http_port}"})
    assert status == 303 and "Not confirmed: reached at 192.168.9.9, not at the new address 192.168.50.20" \
        in flash(headers)
    assert json.loads(burnstation(st.data, "network", "show", "--json").stdout)["pending_seconds"] is not None
    status, headers, _ = admin.post("/network/confirm", {"csrf": token(admin, "/network")})
    assert "confirmed" in flash(headers)
    assert json.loads(burnstation(st.data, "network", "show", "--json").stdout)["pending_seconds"] is None
    assert "No network change waiting" in flash(admin.post("/network/confirm", {"csrf": token(admin)})[1])
    assert site["technician"].post("/network", {"csrf": token(site["technician"]), "hostname": "x"})[0] == 403


def test_backup_export_and_import_with_the_refusal_reason(site):
    admin, st = site["admin"], site["st"]
    status, headers, body = admin.post("/backup/export", {"csrf": token(admin, "/backup")})
    assert status == 200 and "attachment" in headers["content-disposition"]
    doc = json.loads(body)
    assert doc["format"] == "burnstation-config" and "BURNSTATION" in {n["aet"] for n in doc["sections"]["nodes"]}
    tampered = json.loads(body)
    tampered["sections"]["settings"]["http.department"] = "X"
    status, headers, _ = admin.request("POST", "/backup/import", form={"csrf": token(admin, "/backup")},
                                       files={"file": json.dumps(tampered).encode()})
    assert status == 303
    page = admin.get(headers["location"].split("127.0.0.1:" + str(st.http_port))[-1])[2]
    assert "Import refused, nothing changed" in page and "checksum mismatch" in page
    burnstation(st.data, "config", "set", "http.department=Changed")
    status, headers, _ = admin.request("POST", "/backup/import", form={"csrf": token(admin, "/backup")},
                                       files={"file": body.encode()})
    assert status == 303 and "Imported" in flash(headers)
    assert json.loads(burnstation(st.data, "config", "show", "--json").stdout)["http.department"] == ""
    # a file that carries users replaces them and ends every session (README): all log in again,
    # with the passwords they had (the hashes travelled in the file)
    assert admin.get("/backup")[0] == 303
    for name in ("admin", "technician", "viewer"):
        site[name].cookies.clear()
        assert site[name].login(name, PASSWORD) == 303
    assert site["technician"].post("/backup/export", {"csrf": token(site["technician"])})[0] == 403


def test_hl7_log_page_shows_the_messages_searchable_and_escaped(site):
    from worklist_support import order, send_order, wait_hl7

    admin, st = site["admin"], site["st"]
    wait_hl7(st.hl7_port)
    burnstation(st.data, "config", "set", "hl7.log_messages=true")
    hostile = "<b>EVIL^X"
    assert send_order(st.hl7_port, order(control_id="WEBLOG1", name=hostile, patient_id="PHL7")) == "AA"
    wait_for(lambda: "WEBLOG1" in admin.get("/logs/hl7?q=PHL7")[2], 30, "the logged order")
    send_order(st.hl7_port, order(control_id="WEBLOG2", patient_id="POTHER", accession="ACC9"))
    wait_for(lambda: "WEBLOG2" in admin.get("/logs/hl7")[2], 30, "the second order")
    page = admin.get("/logs/hl7?q=PHL7")[2]
    assert "WEBLOG1" in page and "WEBLOG2" not in page
    assert html_escape(hostile) in page and hostile not in page
    assert "Messages are logged in full" in page
    assert "Nothing matches." in admin.get("/logs/hl7?q=NO-SUCH-THING")[2]
    assert (st.data / "logs" / "hl7.log").stat().st_mode & 0o077 == 0  # patient data: owner only


def test_query_and_transfers_pages_in_chromium(site):
    """The live parts run under the CSP in a real browser; laptop screenshots for docs/screenshots/."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from support import REPO

    st, tech = site["st"], site["technician"]
    base = f"http://127.0.0.1:{st.http_port}"
    shots = REPO / "docs" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                      args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            context = chromium.new_context(viewport={"width": 1366, "height": 800})
            context.add_cookies([{"name": k, "value": v, "url": base} for k, v in tech.cookies.items()])
            page = context.new_page()
            page.on("console", lambda m: errors.append(f"{m.text} {m.location.get('url')}")
                    if m.type == "error" and not m.location.get("url", "").endswith("/favicon.ico") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/query?node=BURNSTATION&level=study&name=WEB*")
            assert "1 result(s)" in page.inner_text("#result-count")
            page.screenshot(path=str(shots / "query-laptop.png"), full_page=True)
            page.goto(f"{base}/transfers")
            sync_api.expect(page.locator("#live-state")).to_contain_text("Last update", timeout=15000)
            rows = page.locator("#transfers tbody tr").count()
            assert rows == len(transfers_api(tech)["transfers"]) and rows > 0
            page.screenshot(path=str(shots / "transfers-laptop.png"), full_page=True)
        finally:
            chromium.close()
    assert errors == []


def audit(st) -> list[dict]:
    from appliance import audit as audit_mod
    from appliance import db

    conn = db.connect(st.data)
    try:
        return audit_mod.page(conn, limit=500)[0]
    finally:
        conn.close()
