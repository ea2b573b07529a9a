"""The web UI over plain HTTP (and HTTPS): the setup code, sessions, CSRF, throttling, roles, headers,
escaping of hostile DICOM text, and the `burnstation users` CLI.

A real station (`burnstation run`) serves the pages; requests go through http.client so that the
raw headers (Set-Cookie flags, redirects) can be asserted, which a browser would hide.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
from bottle import html_escape
from support import BIN, Station, burnstation, dcmtk, free_port, port_open, wait_for, write_study

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch):
    """A low scrypt cost for the station and CLI processes started by these tests (test-only hook)."""
    monkeypatch.setenv("BURNSTATION_TEST_SCRYPT_N", "1024")
    monkeypatch.setenv("BURNSTATION_TEST_LOGIN_BACKOFF", "3")


class Client:
    """A cookie-keeping HTTP client that does not follow redirects."""

    def __init__(self, port: int, https: bool = False, ca: Path | None = None) -> None:
        self.port, self.https, self.ca = port, https, ca
        self.cookies: dict[str, str] = {}
        self.last_set_cookie: list[str] = []

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None,
                files: dict[str, bytes] | None = None) -> tuple[int, dict[str, str], str]:
        if self.https:
            ctx = ssl.create_default_context(cafile=str(self.ca))
            ctx.check_hostname = False
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30, context=ctx)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        hdrs = dict(headers or {})
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body: str | bytes | None = None
        if files is not None:
            boundary = "----burnstationtest"
            parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                     for k, v in (form or {}).items()]
            parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{k}.pem"\r\n'
                      f"Content-Type: application/octet-stream\r\n\r\n".encode() + v + b"\r\n"
                      for k, v in files.items()]
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            hdrs["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        elif form is not None:
            body = urlencode(form)
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        self.last_set_cookie = resp.headers.get_all("Set-Cookie") or []
        for item in self.last_set_cookie:
            name, _, rest = item.partition("=")
            value = rest.split(";", 1)[0]
            if value and "expires=Thu, 01 Jan 1970" not in item and "Max-Age=-1" not in item:
                self.cookies[name.strip()] = value
            else:
                self.cookies.pop(name.strip(), None)
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, text

    def get(self, path: str, **kw: object) -> tuple[int, dict[str, str], str]:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict[str, str], **kw: object) -> tuple[int, dict[str, str], str]:
        return self.request("POST", path, form=form, **kw)

    def csrf(self, path: str = "/jobs") -> str:
        status, _, text = self.get(path)
        assert status == 200, (status, text[:300])
        match = re.search(r'name="csrf-token" content="([^"]*)"', text) or re.search(r'name="csrf" value="([^"]*)"', text)
        assert match and match.group(1), text[:500]
        return match.group(1)

    def login(self, name: str, password: str) -> int:
        token = self.csrf("/login")
        status, _, _ = self.post("/login", {"csrf": token, "username": name, "password": password})
        return status


class TestPKI:
    """A CA and a server certificate for burn.example (what a hospital's PKI would hand out)."""

    __test__ = False  # not a test class

    def __init__(self, folder: Path, name: str = "burn.example") -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.UTC)

        def pem(cert):
            return cert.public_bytes(serialization.Encoding.PEM)

        def key_pem(key):
            return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Hospital test CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
              .not_valid_after(now + datetime.timedelta(days=30))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=10))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        self.ca_path = folder / "test-ca.pem"
        self.ca_path.write_bytes(pem(ca))
        self.leaf_only_pem = pem(leaf)
        self.leaf_pem = pem(leaf) + pem(ca)
        self.key_pem = key_pem(key)
        self.other_key_pem = key_pem(ec.generate_private_key(ec.SECP256R1()))


def web_ready(station) -> None:
    """The web process answers (it starts beside the DICOM one)."""
    def answers():
        try:
            return Client(station.http_port).get("/static/style.css")[0] == 200
        except OSError:
            return False
    wait_for(answers, 60, "the web server")


def make_admin(station, client: Client, name: str = "admin", password: str = "correct horse") -> None:
    code = (station.data / "setup-code").read_text().strip()
    token = client.csrf("/setup")
    status, headers, text = client.post("/setup", {"csrf": token, "code": code, "username": name,
                                                   "password": password, "password2": password})
    assert status == 303, text[:500]


def audit_rows(station) -> list[dict]:
    from appliance import audit, db

    conn = db.connect(station.data)
    try:
        return audit.page(conn, limit=500)[0]
    finally:
        conn.close()


def test_setup_code_sessions_csrf_roles_and_escaping(station, tmp_path):
    web_ready(station)
    code_file = station.data / "setup-code"
    assert code_file.stat().st_mode & 0o777 == 0o600
    code = code_file.read_text().strip()
    assert re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}", code)

    c = Client(station.http_port)
    # no user yet: every page leads to /setup
    for path in ("/", "/jobs", "/studies", "/settings/dicom"):
        status, headers, _ = c.get(path)
        if path == "/":
            status, headers, _ = c.get("/jobs")
        assert status == 303 and headers["location"].endswith("/setup"), (path, status, headers)
    status, headers, _ = c.get("/api/jobs")
    assert status == 401

    # a wrong code is refused and makes no user
    token = c.csrf("/setup")
    status, _, text = c.post("/setup", {"csrf": token, "code": "AAAA-BBBB-CCCC", "username": "admin",
                                        "password": "correct horse", "password2": "correct horse"})
    assert status == 200 and "wrong setup code" in text
    assert c.get("/jobs")[1]["location"].endswith("/setup")

    # a POST without or with a wrong CSRF token: 403, nothing made
    for form in ({"code": code}, {"code": code, "csrf": "forged"}):
        status, _, _ = c.post("/setup", {**form, "username": "admin", "password": "correct horse",
                                         "password2": "correct horse"})
        assert status == 403
    # a request another site sent (right token, foreign Origin): 403
    status, _, _ = c.post("/setup", {"csrf": token, "code": code, "username": "admin", "password": "correct horse",
                                     "password2": "correct horse"}, headers={"Origin": "http://evil.example"})
    assert status == 403
    assert code_file.exists()

    # the right code makes the admin, with a new session id, and /setup is gone
    before = c.cookies.get("bsid")
    status, _, _ = c.post("/setup", {"csrf": token, "code": code.lower(), "username": "admin",
                                     "password": "correct horse", "password2": "correct horse"})
    assert status == 303
    cookie = next(v for v in c.last_set_cookie if v.startswith("bsid="))
    flags = [f.strip().lower() for f in cookie.split(";")[1:]]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    assert "secure" not in flags  # plain HTTP: the HTTPS test checks Secure
    assert c.cookies["bsid"] != before
    assert not code_file.exists()
    assert c.get("/setup")[0] == 404
    assert Client(station.http_port).get("/setup")[0] == 404

    # security headers on pages, redirects and errors alike
    for path in ("/jobs", "/", "/nope"):
        _, headers, _ = c.get(path)
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"]
    # paths out of the static folder
    for path in ("/static/..%2fapp.py", "/static/..%2f..%2fappliance%2fconfig.py", "/static/%2e%2e%2fauth.py",
                 "/static/../app.py"):
        assert c.get(path)[0] == 404, path
    assert c.get("/static/app.js")[0] == 200

    # institution and department on every page, escaped
    token = c.csrf("/settings/http")
    status, _, text = c.post("/settings/http", {"csrf": token, "http.institution": "St. Mary <b>Clinic</b>",
                                                "http.department": "Radiology & CT"})
    assert status == 303, text[:400]
    for path in ("/jobs", "/studies", "/robots", "/diagnostics", "/nodes", "/logs/audit"):
        status, _, text = c.get(path)
        assert status == 200, path
        assert "St. Mary &lt;b&gt;Clinic&lt;/b&gt;" in text and "Radiology &amp; CT" in text, path

    # a bad setting is refused with the CLI's message and changes nothing
    cli = burnstation(station.data, "config", "set", "dicom.aet=ABCDEFGHIJKLMN", check=False)
    token = c.csrf("/settings/dicom")
    status, _, text = c.post("/settings/dicom", {"csrf": token, "dicom.aet": "ABCDEFGHIJKLMN"})
    assert status == 200
    message = cli.stderr.strip().removeprefix("burnstation: ")
    assert message and html_escape(message) in text
    assert json.loads(burnstation(station.data, "config", "show", "--json").stdout)["dicom.aet"] == "BURNSTATION"

    # a viewer reads but cannot change a setting
    proc = subprocess.run([str(BIN / "burnstation"), "--data", str(station.data), "users", "add", "vera", "--role",
                           "viewer"], input="viewer pass\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    v = Client(station.http_port)
    assert v.login("vera", "viewer pass") == 303
    assert v.get("/settings/dicom")[0] == 200
    token = v.csrf("/settings/dicom")
    status, _, _ = v.post("/settings/dicom", {"csrf": token, "dicom.aet": "VIEWERSET"})
    assert status == 403
    assert json.loads(burnstation(station.data, "config", "show", "--json").stdout)["dicom.aet"] == "BURNSTATION"
    assert v.get("/users")[0] == 403

    # a hostile patient name stored with storescu shows as text on every page it appears on
    files = write_study(tmp_path / "hostile", n_series=1, per_series=2, patient_name=HOSTILE)
    result = dcmtk("storescu", "-aec", station.aet, "127.0.0.1", str(station.port), *map(str, files))
    assert result.returncode == 0, result.stderr
    status, _, text = c.get("/studies?" + urlencode({"name": "onerror"}))
    uid = wait_for(lambda: (re.findall(r'href="/studies/([0-9.]+)"', c.get("/studies?name=onerror")[2]) or [None])[0],
                   30, "the hostile study in the list")
    pages = ["/studies", f"/studies/{uid}"]
    token = c.csrf(f"/studies/{uid}")
    status, headers, _ = c.post(f"/studies/{uid}/burn", {"csrf": token, "role": "epson", "copies": "1",
                                                         "priority": "0"})
    assert status == 303 and "/jobs" in headers["location"]
    pages.append("/jobs")
    for path in pages:
        text = c.get(path)[2]
        assert "&lt;img src=x onerror=alert(1)&gt;" in text, path
        assert "<img src=x" not in text, path
    jobs = json.loads(c.get("/api/jobs")[2])["jobs"]
    assert jobs[0]["patient_name"] == HOSTILE  # JSON carries the text; the page script writes it as text

    # the JSON API: cancel with the token in a header; without it 403 and the job unchanged
    job_id = jobs[0]["id"]
    token = c.csrf()
    # (a study that a job still burns is not deleted)
    status, headers, _ = c.post(f"/studies/{uid}/delete", {"csrf": token})
    assert status == 303 and "Not+deleted" in headers["location"] and job_id in headers["location"]
    assert c.get(f"/studies/{uid}")[0] == 200
    status, _, _ = c.post(f"/jobs/{job_id}/cancel", {}, headers={"X-CSRF-Token": "forged"})
    assert status == 403
    status, _, _ = c.post(f"/jobs/{job_id}/cancel", {"csrf": token}, headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    assert json.loads(c.get("/api/jobs")[2])["jobs"][0]["state"] != "cancelled"
    status, _, text = c.post(f"/jobs/{job_id}/cancel", {}, headers={"X-CSRF-Token": token,
                                                                      "Sec-Fetch-Site": "same-origin"})
    assert status == 200 and json.loads(text)["ok"].endswith("cancelled"), text
    assert json.loads(c.get("/api/jobs")[2])["jobs"][0]["state"] == "cancelled"
    status, _, text = c.post(f"/jobs/{job_id}/cancel", {}, headers={"X-CSRF-Token": token})
    assert status == 409 and "cannot cancel" in json.loads(text)["error"]
    # now the admin can delete it: files and index rows go, the audit log says so
    stored = sorted((station.data / "storage").rglob("*.dcm"))
    status, headers, _ = c.post(f"/studies/{uid}/delete", {"csrf": token})
    assert status == 303 and "Study+deleted" in headers["location"], headers["location"]
    assert c.get(f"/studies/{uid}")[0] == 404
    assert len(sorted((station.data / "storage").rglob("*.dcm"))) == len(stored) - 2
    # the audit log as CSV
    status, headers, text = c.get("/logs/audit.csv")
    assert status == 200 and headers["content-type"].startswith("text/csv")
    lines = text.splitlines()
    assert lines[0].split(",")[:4] == ["id", "at", "actor", "action"]
    assert any(",admin,cancel," in line and job_id in line for line in lines)

    # robots: add (a folder export), a bad field refused with its reason, edit keeps the rest, delete
    spool = tmp_path / "stick"
    token = c.csrf("/robots")
    robot = {"csrf": token, "name": "stick", "driver": "folder", "role": "any", "media": "CD,DVD",
             "spool": str(spool), "engine_path": "", "mode": "data", "verify": "false"}
    status, _, text = c.post("/robots", {**robot, "media": "FLOPPY"})
    assert status == 200 and "robot media: unknown &#039;FLOPPY&#039;" in text
    assert c.post("/robots", robot)[0] == 303
    listed = json.loads(burnstation(station.data, "robots", "list", "--json").stdout)
    stick = next(r for r in (listed["robots"] if isinstance(listed, dict) else listed) if r["name"] == "stick")
    assert stick["mode"] == "data" and stick["verify"] is False
    assert 'value="stick"' in c.get("/robots?edit=stick")[2]
    assert c.post("/robots", {**robot, "media": "DVD"})[0] == 303
    assert v.post("/robots/stick/delete", {"csrf": v.csrf("/robots")})[0] == 403
    assert c.post("/robots/stick/delete", {"csrf": token})[0] == 303
    assert "stick" not in burnstation(station.data, "robots", "list").stdout

    # log files: listed ones only, admin only
    (station.data / "logs" / "dicom-debug.log").write_text("debug line\n")
    status, headers, text = c.get("/logs/files/dicom-debug.log")
    assert status == 200 and text == "debug line\n" and "attachment" in headers["content-disposition"]
    assert c.get("/logs/files/..%2fsettings.json")[0] == 404
    assert v.get("/logs/files/dicom-debug.log")[0] == 403
    # an admin changes a role; it applies to the live session at once
    token = c.csrf("/users")
    status, _, text = c.post("/users", {"csrf": token, "action": "role", "username": "vera", "role": "technician",
                                        "password": "", "password2": ""})
    assert status == 303, text[:300]
    listing = burnstation(station.data, "users", "list").stdout.splitlines()
    assert any(line.split() == ["vera", "technician"] for line in listing), listing
    assert v.get("/users")[0] == 403
    assert "Add a node" in v.get("/nodes")[2]  # technician tools shown now

    # logout ends the session on the server
    token = c.csrf()
    old = dict(c.cookies)
    assert c.post("/logout", {"csrf": token})[0] == 303
    replay = Client(station.http_port)
    replay.cookies = old
    assert replay.get("/jobs")[0] == 303

    # every change above is in the audit log with the user's name
    rows = audit_rows(station)
    seen = {(r["actor"], r["action"], r["target"]) for r in rows}
    assert ("admin", "setup", "admin") in seen
    assert ("admin", "setting", "http.institution") in seen
    assert any(r["actor"].startswith("cli:") and r["action"] == "user-add" and r["target"] == "vera" for r in rows)
    assert ("vera", "login", "") in seen
    assert ("admin", "burn", uid) in seen
    assert ("admin", "logout", "") in seen
    assert ("admin", "delete", uid) in seen
    assert ("admin", "user-role", "vera") in seen
    assert {("admin", "robot-add", "stick"), ("admin", "robot-edit", "stick"), ("admin", "robot-delete", "stick")} <= seen
    assert any(r["action"] == "setup-failed" for r in rows)
    detail = next(r["detail"] for r in rows if r["target"] == "http.institution")
    assert detail == '"" -> "St. Mary <b>Clinic</b>"'


def test_login_throttling_and_https(station, tmp_path):
    web_ready(station)
    c = Client(station.http_port)
    make_admin(station, c)
    # ten wrong passwords: then 429 even for the right one, until the backoff ends
    t = Client(station.http_port)
    for _ in range(10):
        assert t.login("admin", "wrong password") == 200
    assert t.login("admin", "correct horse") == 429
    assert Client(station.http_port).login("admin", "correct horse") == 429  # per user, whatever the address
    rows = audit_rows(station)
    assert sum(r["action"] == "login-failed" and r["actor"] == "admin" for r in rows) == 10
    # BURNSTATION_TEST_LOGIN_BACKOFF (3 s): the right password works again once it ends (a throttled
    # attempt does not extend it; its length, doubling and cap: test_throttle_backoff_by_the_clock)
    wait_for(lambda: t.login("admin", "correct horse") == 303, 30, "the login backoff to end", every=0.5)

    # HTTPS: switched on live, served with the device certificate; cookie Secure and __Host-
    token = c.csrf("/settings/http")
    status, _, _ = c.post("/settings/http", {"csrf": token, "http.ssl": "true"})
    assert status == 303
    s = Client(station.http_port, https=True, ca=station.data / "tls" / "ca.pem")

    def https_up():
        try:
            return s.get("/static/style.css")[0] == 200
        except (OSError, ssl.SSLError):
            return False
    wait_for(https_up, 30, "HTTPS on the web port")
    assert s.login("admin", "correct horse") == 303
    cookie = next(v for v in s.last_set_cookie if v.startswith("__Host-bsid="))
    flags = [f.strip().lower() for f in cookie.split(";")[1:]]
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= set(flags)
    assert s.get("/jobs")[0] == 200
    # TLS 1.2 is enough (TLS 1.1 is refused by the context: minimum_version)
    ctx = ssl.create_default_context(cafile=str(station.data / "tls" / "ca.pem"))
    ctx.check_hostname = False
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    conn = http.client.HTTPSConnection("127.0.0.1", station.http_port, timeout=10, context=ctx)
    conn.request("GET", "/static/style.css")
    assert conn.getresponse().status == 200

    # an uploaded certificate: refused with the reason when it does not fit, then served
    pki = TestPKI(tmp_path)
    burnstation(station.data, "config", "set", "http.server_name=burn.example")
    token = s.csrf("/settings/http")
    status, headers, _ = s.request("POST", "/tls/upload", form={"csrf": token},
                                   files={"certificate": pki.leaf_pem, "key": pki.other_key_pem})
    assert status == 303 and "does+not+belong" in headers["location"], headers
    status, headers, _ = s.request("POST", "/tls/upload", form={"csrf": token},
                                   files={"certificate": pki.leaf_only_pem, "key": pki.key_pem})
    assert "chain+incomplete" in headers["location"], headers
    assert not (station.data / "tls" / "web.pem").exists()
    status, headers, _ = s.request("POST", "/tls/upload", form={"csrf": token},
                                   files={"certificate": pki.leaf_pem, "key": pki.key_pem})
    assert status == 303 and "Certificate+installed" in headers["location"], headers
    assert (station.data / "tls" / "web.key").stat().st_mode & 0o777 == 0o600

    def serves_uploaded():
        ctx = ssl.create_default_context(cafile=str(pki.ca_path))  # checks the name too
        try:
            with socket.create_connection(("127.0.0.1", station.http_port), 5) as raw, \
                    ctx.wrap_socket(raw, server_hostname="burn.example") as tls:
                return tls.version() is not None
        except (OSError, ssl.SSLError):
            return False
    wait_for(serves_uploaded, 30, "HTTPS with the uploaded certificate")
    rows = audit_rows(station)
    assert sum(r["action"] == "certificate-refused" for r in rows) == 2
    assert any(r["action"] == "certificate" and "burn.example" in r["detail"] for r in rows)

    # http.port = 0 closes the web server, another port opens it there, both without a restart
    burnstation(station.data, "config", "set", "http.port=0")
    wait_for(lambda: not port_open(station.http_port), 30, "the web port closed")
    new_port = free_port()
    burnstation(station.data, "config", "set", f"http.port={new_port}")
    station.http_port = new_port
    wait_for(serves_uploaded, 30, "HTTPS on the new port")


def test_users_cli(tmp_path, monkeypatch):
    data = tmp_path / "data"
    out = burnstation(data, "init").stdout
    code = (data / "setup-code").read_text().strip()
    assert code in out
    assert (data / "setup-code").stat().st_mode & 0o777 == 0o600
    # init again while no user exists: the same code
    assert code in burnstation(data, "init").stdout

    def users(*args: str, password: str = "") -> subprocess.CompletedProcess:
        return burnstation(data, "users", *args, input=password, check=False)

    assert users("add", "ann", "--role", "admin", password="s3cret-pass\n").returncode == 0
    assert not (data / "setup-code").exists()  # a user exists: the code is void
    short = users("add", "bob", "--role", "technician", password="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    assert users("add", "ann", "--role", "viewer", password="another-pass\n").returncode == 2
    assert users("add", "bob", "--role", "technician", password="bob-password\n").returncode == 0
    listing = users("list").stdout.split("\n")
    assert any(line.split() == ["ann", "admin"] for line in listing)
    assert any(line.split() == ["bob", "technician"] for line in listing)
    assert users("passwd", "bob", password="new-password\n").returncode == 0
    assert users("delete", "ann").returncode == 2  # the last admin stays
    assert users("delete", "bob").returncode == 0
    assert "bob" not in users("list").stdout

    from appliance import accounts, db

    conn = db.connect(data)
    assert accounts.authenticate(conn, "ann", "s3cret-pass")["role"] == "admin"
    assert accounts.authenticate(conn, "ann", "wrong") is None
    stored = conn.execute("SELECT password FROM users WHERE name='ann'").fetchone()[0]
    assert stored.startswith("scrypt$1024$8$1$") and "s3cret" not in stored
    conn.close()
    burnstation(data, "config", "set", "http.department=ICU")
    rows = audit_rows(type("S", (), {"data": data}))
    assert any(r["actor"].startswith("cli:") and r["target"] == "http.department" and r["detail"] == '"" -> "ICU"'
               for r in rows)
    assert any(r["actor"].startswith("cli:") and r["action"] == "user-delete" and r["target"] == "bob" for r in rows)


def test_scrypt_default_cost(monkeypatch):
    """Without the test hook the hash uses n=2^17, r=8, p=1 (and the maxmem that needs)."""
    from appliance import accounts

    monkeypatch.delenv("BURNSTATION_TEST_SCRYPT_N")
    stored = accounts.hash_password("correct horse")
    assert stored.startswith("scrypt$131072$8$1$")
    assert accounts.check_password(stored, "correct horse")
    assert not accounts.check_password(stored, "correct hors")


def test_sessions_are_stored_hashed_and_end_when_idle(tmp_path):
    from appliance import accounts, db

    clock = [time.time()]  # driven by the test: the idle timeout passes without waiting for it

    def now() -> float:
        return clock[0]
    conn = db.connect(tmp_path)
    accounts.add_user(conn, "ann", "technician", "s3cret-pass")
    sid, csrf = accounts.new_session(conn, "ann", "127.0.0.1", 60, now=now)
    assert len(sid) >= 43 and len(csrf) >= 43  # 256 random bits each
    assert conn.execute("SELECT COUNT(*) FROM sessions WHERE id_hash=?", (sid,)).fetchone()[0] == 0  # not in clear
    assert accounts.get_session(conn, sid, 60, now=now)["role"] == "technician"
    assert accounts.get_session(conn, sid + "x", 60, now=now) is None
    clock[0] += 0.8
    assert accounts.get_session(conn, sid, 1, now=now)["role"] == "technician"  # idle, not yet too long
    clock[0] += 1.2
    assert accounts.get_session(conn, sid, 1, now=now) is None  # idle longer than the timeout: gone
    assert accounts.get_session(conn, sid, 60, now=now) is None  # and deleted, not just refused
    sid2, _ = accounts.new_session(conn, "ann", "127.0.0.1", 60)
    accounts.set_role(conn, "ann", "viewer")
    assert accounts.get_session(conn, sid2, 60)["role"] == "viewer"  # a role change applies at once
    accounts.delete_user(conn, "ann")
    assert accounts.get_session(conn, sid2, 60) is None
    conn.close()


def test_throttle_backoff_by_the_clock(monkeypatch):
    """The login lock: from the tenth failure, for the backoff (doubling with each further failure, capped),
    per key; a success or an hour without failures forgets the count. Driven by a clock, not waited out."""
    from webui import auth

    monkeypatch.delenv("BURNSTATION_TEST_LOGIN_BACKOFF")  # the station's own 60 s
    clock = [1_000_000.0]
    t = auth.Throttle(now=lambda: clock[0])
    for _ in range(auth.THRESHOLD - 1):
        t.failed("user:ann", "addr:a")
    assert t.wait_seconds("user:ann") <= 0
    t.failed("user:ann", "addr:a")
    assert t.wait_seconds("user:ann") == auth.BACKOFF_SECONDS
    assert t.wait_seconds("addr:a", "user:bob") == auth.BACKOFF_SECONDS  # the longest lock among the keys
    assert t.wait_seconds("user:bob") <= 0
    clock[0] += auth.BACKOFF_SECONDS - 1
    assert t.wait_seconds("user:ann") == 1
    clock[0] += 1
    assert t.wait_seconds("user:ann") <= 0  # the backoff is over
    t.failed("user:ann")
    assert t.wait_seconds("user:ann") == 2 * auth.BACKOFF_SECONDS  # another failure: twice as long
    for _ in range(10):
        t.failed("user:ann")
    assert t.wait_seconds("user:ann") == auth.BACKOFF_MAX
    t.succeeded("user:ann")
    assert t.wait_seconds("user:ann") <= 0
    t.failed("user:ann")
    assert t.wait_seconds("user:ann") <= 0  # counting starts again
    for _ in range(auth.THRESHOLD - 2):
        t.failed("user:cy")
    clock[0] += auth.FORGET_SECONDS + 1
    t.failed("user:cy")
    assert t.wait_seconds("user:cy") <= 0  # old failures without a lock are forgotten


def test_certificate_checks_say_why(tmp_path):
    import datetime

    from appliance import tlsca

    pki = TestPKI(tmp_path)
    assert "burn.example" in tlsca.check_web_certificate(pki.leaf_pem, pki.key_pem, "burn.example")
    cases = [
        ((b"not a certificate", pki.key_pem, ""), "holds no PEM certificate"),
        ((pki.leaf_pem, b"junk", ""), "no PEM private key"),
        ((pki.leaf_pem, pki.other_key_pem, ""), "does not belong"),
        ((pki.leaf_only_pem, pki.key_pem, ""), "chain incomplete"),
        ((pki.leaf_pem, pki.key_pem, "other.example"), "not for the web server name 'other.example'"),
    ]
    for args, reason in cases:
        with pytest.raises(tlsca.CertificateError, match=re.escape(reason)):
            tlsca.check_web_certificate(*args)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=20)
    with pytest.raises(tlsca.CertificateError, match="expired on"):
        tlsca.check_web_certificate(pki.leaf_pem, pki.key_pem, now=later)
    broken = pki.leaf_only_pem + TestPKI(tmp_path / "..").leaf_pem.split(b"-----END CERTIFICATE-----\n", 1)[1]
    with pytest.raises(tlsca.CertificateError, match="chain broken"):
        tlsca.check_web_certificate(broken, pki.key_pem)


@pytest.fixture
def crashing_station(monkeypatch, tmp_path):
    """A station whose burner exits at every start (the supervisor's test hook), so it ends up failed.
    A start counts after 20 s, not 3: on a loaded machine the burner's imports alone can take 3 s, and
    its exit would then be a crash after a good start (restarted with backoff), never a failed one."""
    monkeypatch.setenv("BURNSTATION_CRASH_SERVICE", "burner")
    st = Station(tmp_path / "data", supervisor__start_seconds=20)
    st.start()
    yield st
    st.stop()


def test_reset_of_a_failed_process_from_the_cli_and_the_web(crashing_station):
    station = crashing_station

    def burner():
        status = json.loads(burnstation(station.data, "status", "--json").stdout)
        return next((p for p in status["processes"] if p["name"] == "burner"), None)

    failed = wait_for(lambda: (lambda p: p if p and p["state"] == "failed" else None)(burner()), 60, "burner failed")
    proc = burnstation(station.data, "restart-process", "burner", check=False)
    assert proc.returncode == 0 and "started again" in proc.stdout, proc.stdout + proc.stderr
    again = wait_for(lambda: (lambda p: p if p["state"] == "failed" and p["starts"] > failed["starts"] else None)(
        burner()), 60, "burner failed again (the hook is still on)")
    running = burnstation(station.data, "restart-process", "dicom", check=False)
    assert running.returncode == 0 and "not failed: nothing to do" in running.stdout
    unknown = burnstation(station.data, "restart-process", "nosuch", check=False)
    assert unknown.returncode == 2 and "no process 'nosuch'" in unknown.stderr
    # the same from the diagnostics page
    web_ready(station)
    c = Client(station.http_port)
    make_admin(station, c)
    page = c.get("/diagnostics")[2]
    assert 'data-reset="burner"' in page and 'data-reset="dicom"' not in page
    status, headers, _ = c.post("/diagnostics/reset/burner", {"csrf": c.csrf("/diagnostics")})
    assert status == 303 and "start+burner+again" in headers["location"], headers
    wait_for(lambda: burner()["starts"] > again["starts"], 30, "burner started from the web")
    rows = audit_rows(station)
    assert any(r["action"] == "process-reset" and r["actor"].startswith("cli:") for r in rows)
    assert any(r["action"] == "process-reset" and r["actor"] == "admin" and r["target"] == "burner" for r in rows)


def test_study_search_filters_and_paging(tmp_path):
    """The studies page's search (appliance.index.search_studies): each filter, paging, literal % and _."""
    from appliance import db, index

    conn = db.connect(tmp_path)
    for i in range(30):
        index.add_instance(conn, index.InstanceRecord(
            sop_uid=f"9.{i}.1.1", sop_class="1.2.840.10008.5.1.4.1.1.2", series_uid=f"9.{i}.1", study_uid=f"9.{i}",
            path=f"/x/{i}.dcm", size=10, transfer_syntax="1.2.840.10008.1.2.1",
            patient={"patient_id": f"P{i:02d}", "patient_name": "DOE_100%" if i == 7 else f"DOE^{i:02d}"},
            study={"study_date": f"202401{i + 1:02d}", "accession": f"A{i:03d}"},
            series={"modality": "MR" if i % 3 == 0 else "CT"}))

    def uids(**kw):
        rows, total = index.search_studies(conn, **kw)
        return [r["study_uid"] for r in rows], total

    assert uids(limit=5) == (["9.29", "9.28", "9.27", "9.26", "9.25"], 30)  # newest study date first
    assert uids(offset=25, limit=10) == (["9.4", "9.3", "9.2", "9.1", "9.0"], 30)
    assert uids(name="doe^1")[1] == 10
    assert uids(name="_100%") == (["9.7"], 1) and uids(name="DOE_1")[1] == 1  # % and _ are literal
    assert uids(patient_id="p0")[1] == 10
    assert uids(date_from="20240110", date_to="20240112") == (["9.11", "9.10", "9.9"], 3)
    assert uids(modality="MR")[1] == 10
    assert uids(accession="A02")[1] == 10 and uids(accession="a029") == (["9.29"], 1)
    rows, _ = index.search_studies(conn, accession="A029")
    assert rows[0]["instances"] == 1 and rows[0]["modalities"] == "CT" and rows[0]["id_value"] == "P29"
    conn.close()
