"""Configuration backup (issue 18): export from one station, import into a fresh one; a corrupt,
foreign, tampered or invalid file is refused and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import burnstation

from appliance import backup, network, trail
from appliance.burn import robots
from appliance.config import Settings


def _state(data: Path) -> dict[str, str]:
    """What an operator sees of a station's configuration."""
    return {"config": burnstation(data, "config", "show", "--json").stdout,
            "nodes": burnstation(data, "nodes", "list").stdout,
            "robots": json.dumps([{k: v for k, v in r.items() if k not in ("online", "message", "status",
                                                                         "heartbeat_at")}
                                  for r in json.loads(burnstation(data, "robots", "list", "--json").stdout)]),
            "network": json.dumps(json.loads(burnstation(data, "network", "show", "--json").stdout)["values"])}


def _quick_state(data: Path) -> tuple:
    """The same, read in-process (the refusal tests compare before and after many times)."""
    settings = Settings(data)
    return (settings.all(), [n.to_doc() for n in settings.nodes()], robots.list_robots(settings),
            network.Network(data).current(), sorted(p.name for p in (data / "tls").iterdir()))


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory) -> Path:
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


@pytest.mark.parametrize(("damage", "message"), [
    (lambda t: t[: len(t) // 2], "corrupt or not JSON"),
    (lambda t: json.dumps({"format": "something-else", "version": 1}), "format is not 'burnstation-config'"),
    (lambda t: t.replace('"PACS"', '"PACX"'), "checksum mismatch"),
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
    (lambda s: s.update(users=[]), "sections this station does not know: users"),
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
