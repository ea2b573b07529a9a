"""Configuration backup (issue 18): export from one station, import into a fresh one; a corrupt,
foreign, tampered or invalid file is refused and changes nothing."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import burnstation

from appliance import accounts, backup, db, network, permissions, trail
from appliance.burn import robots
from appliance.config import Settings
from appliance.transfer import rules

PASSWORD = "correct horse battery"


def _users_add(data: Path, name: str, role: str, password: str) -> None:
    """`burnstation users add`, the password on standard input as an operator types it."""
    proc = burnstation(data, "users", "add", name, "--role", role, input=password + "\n", check=False)
    assert proc.returncode == 0, proc.stderr


def _users(data: Path) -> list[dict]:
    """Users with their hashes, and how many sessions exist (read in-process, owner-only files)."""
    umask = os.umask(permissions.PRIVATE_UMASK)
    try:
        conn = db.connect(data)
        try:
            return accounts.export_users(conn)
        finally:
            conn.close()
    finally:
        os.umask(umask)


def _state(data: Path) -> dict[str, str]:
    """What an operator sees of a station's configuration."""
    return {"config": burnstation(data, "config", "show", "--json").stdout,
            "nodes": burnstation(data, "nodes", "list").stdout,
            "robots": json.dumps([{k: v for k, v in r.items() if k not in ("online", "message", "status",
                                                                         "heartbeat_at")}
                                  for r in json.loads(burnstation(data, "robots", "list", "--json").stdout)]),
            "network": json.dumps(json.loads(burnstation(data, "network", "show", "--json").stdout)["values"]),
            "users": burnstation(data, "users", "list").stdout,
            "rules": json.dumps([{k: v for k, v in r.items() if k in ("name", "node", "called", "calling",
                                                                      "modalities", "delay")}
                                 for r in json.loads(burnstation(data, "forward", "list", "--json").stdout)])}


def _quick_state(data: Path) -> tuple:
    """The same, read in-process (the refusal tests compare before and after many times)."""
    settings = Settings(data)
    return (settings.all(), [n.to_doc() for n in settings.nodes()], robots.list_robots(settings),
            network.Network(data).current(), sorted(p.name for p in (data / "tls").iterdir()),
            [r.to_doc() for r in rules.list_rules(settings)], _users(data))


@pytest.fixture(scope="module", autouse=True)
def cheap_hashes() -> Iterator[None]:
    """scrypt at test cost in the CLI processes (the web tests do the same)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(accounts.TEST_COST_ENV, "1024")
        yield


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory, cheap_hashes: None) -> Path:
    tmp_path = tmp_path_factory.mktemp("old")
    data = tmp_path / "old"
    burnstation(data, "init")
    burnstation(data, "config", "set", "dicom.aet=RADIOLOGY1", "burn.delay_seconds=300", "http.institution=St. Elsewhere",
                "storage.purge_after_days=14", "dicom.tls_trusted_ca=" + str(data / "tls" / "ca.pem"))
    burnstation(data, "nodes", "add", "PACS", "10.0.0.7", "104", "--services", "store,find,move")
    burnstation(data, "nodes", "add", "CT1", "ct1.hospital.example", "11112", "--tls", "--description", "CT room 1")
    burnstation(data, "robots", "add", "epson1", "--driver", "epson", "--path", str(tmp_path / "spool"),
                "--media", "CD,DVD", "--option", "publisher=PP-100")
    burnstation(data, "robots", "add", "usb", "--driver", "folder", "--path", str(tmp_path / "usb"))
    burnstation(data, "network", "set", "hostname=burn-a", "timezone=Europe/Paris", "ntp=10.0.0.1")
    _users_add(data, "alice", "admin", PASSWORD)
    _users_add(data, "bob", "technician", "bobs password 2")
    burnstation(data, "forward", "add", "PACS", "--name", "to-pacs", "--called", "RADIOLOGY1_E", "--modality", "CT,MR",
                "--delay", "45")
    conn = db.connect(data)
    try:  # a live session on the old box: it must not travel
        session_id, _ = accounts.new_session(conn, "alice", "127.0.0.1", 3600)
    finally:
        conn.close()
    (data / "session-id").write_text(session_id)  # for the test that looks for it in the file
    return data


def test_export_import_into_a_fresh_station(old: Path, tmp_path: Path) -> None:
    exported = tmp_path / "box.json"
    proc = burnstation(old, "config", "export", str(exported))
    assert "no patient data, device keys or tokens" in proc.stdout
    text = exported.read_text()
    assert "PRIVATE KEY" not in text and "state.db" not in text
    assert exported.stat().st_mode & 0o077 == 0
    fresh = tmp_path / "fresh"
    burnstation(fresh, "init")
    before = _state(fresh)
    proc = burnstation(fresh, "config", "import", str(exported))
    assert "nodes (2)" in proc.stdout and "robots (2)" in proc.stdout
    assert "forward_rules (1)" in proc.stdout and "users (2)" in proc.stdout
    audit = [json.loads(line) for line in (fresh / "logs" / trail.TRAIL_FILE).read_text().splitlines()]
    assert [e["action"] for e in audit if e["action"].startswith("config")] == ["config.imported"]
    after, source = _state(fresh), _state(old)
    assert after != before
    # the trusted CA file is carried over and points into the new station's folder
    new_config = json.loads(after["config"])
    ca = Path(new_config.pop("dicom.tls_trusted_ca"))
    old_config = json.loads(source["config"])
    assert ca.parent == fresh / "tls" and ca.read_text() == Path(old_config.pop("dicom.tls_trusted_ca")).read_text()
    assert new_config == old_config
    assert after["nodes"] == source["nodes"] and after["robots"] == source["robots"]
    assert after["network"] == source["network"]
    # the device keys stay the fresh station's own
    assert (fresh / "tls" / "server.key").read_bytes() != (old / "tls" / "server.key").read_bytes()
    # users and rules: the same lists; the old password works, a wrong one does not
    assert after["users"] == source["users"] and "alice" in after["users"] and "technician" in after["users"]
    assert after["rules"] == source["rules"] and "to-pacs" in after["rules"]
    assert not (fresh / accounts.SETUP_FILE).exists()  # a user exists: the setup code is void
    _assert_owner_only(fresh)
    conn = db.connect(fresh)
    try:
        assert accounts.authenticate(conn, "alice", PASSWORD) == {"name": "alice", "role": "admin"}
        assert accounts.authenticate(conn, "alice", PASSWORD + "x") is None
        assert accounts.authenticate(conn, "bob", "bobs password 2") == {"name": "bob", "role": "technician"}
    finally:
        conn.close()


def _assert_owner_only(data: Path) -> None:
    """Every file 0600-or-less and every folder 0700-or-less, but for the spools handed to robots."""
    exempt = {os.path.realpath(p) for p in permissions.exempt_paths(data)}
    opened = []
    for root, dirs, files in os.walk(data):
        dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(root, d)) not in exempt]
        for name in [*dirs, *files, "."]:
            mode = os.lstat(os.path.join(root, name)).st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                opened.append(f"{os.path.join(root, name)} {stat.S_IMODE(mode):04o}")
    assert not opened, opened


def test_no_plain_passwords_or_sessions_in_the_file(old: Path, tmp_path: Path) -> None:
    exported = tmp_path / "box.json"
    burnstation(old, "config", "export", str(exported))
    text = exported.read_text()
    users = json.loads(text)["sections"]["users"]
    assert [u["name"] for u in users] == ["alice", "bob"] and all(set(u) == {"name", "role", "password_hash"}
                                                                  for u in users)
    assert PASSWORD not in text and "bobs password" not in text
    assert all(u["password_hash"].startswith("scrypt$1024$") for u in users)
    session_id = (old / "session-id").read_text()
    assert session_id not in text and accounts._hash_id(session_id) not in text and "sessions" not in text
    # a fresh station with its own admin and a live session: replaced, and the session ends
    fresh = tmp_path / "fresh"
    burnstation(fresh, "init")
    _users_add(fresh, "carol", "admin", "carols password")
    conn = db.connect(fresh)
    try:
        carol, _ = accounts.new_session(conn, "carol", "127.0.0.1", 3600)
    finally:
        conn.close()
    burnstation(fresh, "config", "import", str(exported))
    assert burnstation(fresh, "users", "list").stdout.split() == ["alice", "admin", "bob", "technician"]
    conn = db.connect(fresh)
    try:
        assert accounts.get_session(conn, carol, 3600) is None
        assert accounts.authenticate(conn, "carol", "carols password") is None
    finally:
        conn.close()


def test_older_file_without_users_or_rules_keeps_them(old: Path, tmp_path: Path) -> None:
    """A backup made before those sections existed: still version 1, still imported; users and rules stay."""
    exported = tmp_path / "box.json"
    burnstation(old, "config", "export", str(exported))
    doc = json.loads(exported.read_text())
    assert doc["version"] == 1
    del doc["sections"]["users"], doc["sections"]["forward_rules"]
    older = tmp_path / "older.json"
    older.write_text(_resealed(doc))
    fresh = tmp_path / "fresh"
    burnstation(fresh, "init")
    _users_add(fresh, "carol", "admin", "carols password")
    burnstation(fresh, "nodes", "add", "PACS", "10.9.9.9", "104")
    burnstation(fresh, "forward", "add", "PACS", "--name", "mine")
    proc = burnstation(fresh, "config", "import", str(older))
    assert "users (" not in proc.stdout and "forward_rules (" not in proc.stdout and "nodes (2)" in proc.stdout
    assert burnstation(fresh, "users", "list").stdout.split() == ["carol", "admin"]
    assert [r["name"] for r in json.loads(burnstation(fresh, "forward", "list", "--json").stdout)] == ["mine"]
    # the station's rule would name a node the import drops: refused, nothing changed
    del doc["sections"]["nodes"][0]  # PACS
    older.write_text(_resealed(doc))
    before = _quick_state(fresh)
    proc = burnstation(fresh, "config", "import", str(older), check=False)
    assert proc.returncode == 2 and "this station's forwarding rules (the file has none): entry" in proc.stderr
    assert "entry 1 ('mine'): forward node: 'PACS' is not a known node" in proc.stderr, proc.stderr
    assert _quick_state(fresh) == before


@pytest.mark.parametrize(("damage", "message"), [
    (lambda t: t[: len(t) // 2], "corrupt or not JSON"),
    (lambda t: json.dumps({"format": "something-else", "version": 1}), "format is not 'burnstation-config'"),
    (lambda t: t.replace('"PACS"', '"PACX"'), "checksum mismatch"),
    (lambda t: t.replace('"scrypt$1024$', '"scrypt$2048$'), "checksum mismatch"),  # a tampered user hash
    (lambda t: json.dumps({**json.loads(t), "version": 99}), "made by a newer BurnStation"),
    (lambda t: "\x00\xff binary", "corrupt or not JSON"),
])
def test_corrupt_or_foreign_file_refused(old: Path, tmp_path: Path, damage, message: str) -> None:
    exported = tmp_path / "box.json"
    burnstation(old, "config", "export", str(exported))
    bad = tmp_path / "bad.json"
    bad.write_text(damage(exported.read_text()))
    fresh = tmp_path / "fresh"
    burnstation(fresh, "init")
    before = _quick_state(fresh)
    proc = burnstation(fresh, "config", "import", str(bad), check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert _quick_state(fresh) == before


def _resealed(doc: dict) -> str:
    doc["sha256"] = backup._digest(doc["sections"])
    return json.dumps(doc)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s["robots"][1].update(driver="laser"), "robots: entry 2 ('usb'): robot driver: one of"),
    (lambda s: s["nodes"][0].update(port=70000), "nodes: entry 1 ('PACS'): node port"),
    (lambda s: s["settings"]["values"].update({"dicom.port": "x"}), "dicom.port: must be a TCP port"),
    (lambda s: s["settings"]["values"].update({"no.such": 1}), "no.such: no such setting"),
    (lambda s: s["network"].update(timezone="Nowhere/Land"), "network: timezone: no time zone"),
    (lambda s: s.update(passwords=[]), "sections this station does not know: passwords"),
    (lambda s: s["users"][0].update(password_hash=s["users"][0]["password_hash"][:-3]),
     "users: entry 1 ('alice'): password hash: salt and digest must be whole bytes of hex"),
    (lambda s: s["users"][0].update(password_hash="$2b$12$abcdefghijklmnopqrstuv"),
     "users: entry 1 ('alice'): password hash: not a scrypt hash"),
    (lambda s: s["users"][1].update(role="root"), "users: entry 2 ('bob'): role: one of admin, technician, viewer"),
    (lambda s: s["users"][1].update(password="plain text"), "users: entry 2: unknown field(s) password"),
    (lambda s: s.update(users=[]), "users: expected a non-empty list of users"),
    (lambda s: s["forward_rules"][0].update(node="NOWHERE"),
     "forward_rules: entry 1 ('to-pacs'): forward node: 'NOWHERE' is not a known node"),
    (lambda s: s["nodes"].pop(0), "forward_rules: entry 1 ('to-pacs'): forward node: 'PACS' is not a known node"),
    (lambda s: s["settings"]["values"].update({"dicom.aet": "OTHERAE"}),
     "forward_rules: entry 1 ('to-pacs'): forward called: 'RADIOLOGY1_E' is not one of the station's AE titles"),
])
def test_invalid_section_refused_whole(old: Path, tmp_path: Path, edit, message: str) -> None:
    """One bad value anywhere: nothing is imported, not even the valid sections before it."""
    exported = tmp_path / "box.json"
    burnstation(old, "config", "export", str(exported))
    doc = json.loads(exported.read_text())
    edit(doc["sections"])
    bad = tmp_path / "bad.json"
    bad.write_text(_resealed(doc))
    fresh = tmp_path / "fresh"
    burnstation(fresh, "init")
    before = _quick_state(fresh)
    proc = burnstation(fresh, "config", "import", str(bad), check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert _quick_state(fresh) == before
    trail_file = fresh / "logs" / trail.TRAIL_FILE
    assert not trail_file.exists() or "config.imported" not in trail_file.read_text()
    assert not list((fresh / "tls").glob("*imported*")) and not list((fresh / "tls").glob(".*check"))
