"""Discovery: USB matchers as data, udev's absence handled cleanly, the simulator's plug/unplug
announcements starting and stopping a Primera driver process, and `_P` jobs burning or waiting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from support import Station, burnstation, dcmtk, holds_for, wait_for, write_study

from appliance.discovery import Discovery, udev
from appliance.discovery.matchers import (
    USB_MATCHERS_FILE,
    Matcher,
    best_match,
    driver_matchers,
    load_matchers,
)
from appliance.discovery.simulated import SimulatedBackend

TIMEOUT = 90


# --------------------------------------------------------------------------- matchers


def test_most_specific_matcher_wins():
    matchers = [Matcher("broad", vid="04b8"), Matcher("narrow", vid="04b8", model="PP-100"),
                Matcher("narrower", vid="04b8", model="PP-100II"), Matcher("exact", vid="04b8", pid="0b1d")]
    assert best_match({"vendor_id": "04B8", "product_id": "1234", "model": "Stylus"}, matchers) == "broad"
    assert best_match({"vendor_id": "04b8", "model": "PP-100N"}, matchers) == "narrow"
    assert best_match({"vendor_id": "04b8", "model": "Discproducer_PP-100II"}, matchers) == "narrower"
    assert best_match({"vendor_id": "0x04b8", "product_id": "0B1D", "model": "PP-100II"}, matchers) == "exact"
    assert best_match({"vendor_id": "1234"}, matchers) is None
    assert best_match({"vendor_id": "04b8"}, [Matcher("empty")]) is None  # an empty matcher matches nothing


def test_drivers_and_panel_declare_matchers():
    matchers = load_matchers()
    assert {m.target for m in matchers} >= {"epson", "primera", "lcd"}
    assert best_match({"vendor_id": "04b8", "model": "PP-100II", "vendor": "Seiko Epson"}, matchers) == "epson"
    assert best_match({"vendor": "Primera Technology", "model": "Bravo 4100"}, matchers) == "primera"
    assert best_match({"vendor_id": "1b3d", "product_id": "0120"}, matchers) == "lcd"
    assert best_match({"vendor_id": "0403", "product_id": "fa03"}, matchers) == "lcd"
    assert best_match({"vendor_id": "0403", "product_id": "6001", "model": "FT232R USB UART"}, matchers) is None


def test_technician_matchers_file_counts(tmp_path):
    (tmp_path / "usb-matchers.json").write_text(json.dumps({"primera": [{"vendor_id": "abcd"}]}))
    assert best_match({"vendor_id": "abcd", "model": "X"}, load_matchers(tmp_path)) == "primera"
    assert best_match({"vendor_id": "abcd", "model": "X"}, load_matchers()) is None


def test_driver_matchers_on_udev_properties_and_technician_file(tmp_path, caplog):
    """The drivers' built-in matchers on udev's own property names, and what README promises for
    `usb-matchers.json`: ids exact (any spelling), vendor/model substrings, a broken file ignored."""

    def driver(device, data_dir=None):
        return best_match(device, driver_matchers(data_dir))

    pp100 = {"ID_VENDOR_ID": "04b8", "ID_MODEL_ID": "0b1d", "ID_VENDOR": "EPSON", "ID_MODEL": "PP-100II"}
    assert driver(pp100) == "epson"
    assert driver({"ID_VENDOR_ID": "04b8", "ID_MODEL": "Stylus_Photo"}) is None  # an Epson printer
    assert driver({"ID_VENDOR_ID": "1234", "ID_MODEL": "PP-100"}) is None
    assert driver({"vendor_id": "0f25", "vendor": "Primera Technology, Inc.", "model": "Bravo 4100"}) == "primera"
    assert driver({"ID_VENDOR": "Primera_Technology", "ID_MODEL": "Disc_Publisher_XRP"}) == "primera"
    assert driver({"ID_VENDOR": "EPSON", "ID_MODEL": "PP-50"}) is None  # not Primera; Epson needs its id
    assert all(m.vid == "04b8" for m in driver_matchers() if m.target == "epson")

    pp150 = {"ID_VENDOR_ID": "04b8", "ID_MODEL": "PP-150"}
    assert driver(pp150, tmp_path) is None
    path = tmp_path / USB_MATCHERS_FILE
    path.write_text(json.dumps({"epson": [{"vendor_id": "04b8", "model": "PP-150"}]}))
    assert driver(pp150, tmp_path) == "epson"
    path.write_text(json.dumps({"epson": [{"vid": "04B8", "model": "PP-7"}]}))
    assert driver({"ID_VENDOR_ID": "04b8", "ID_MODEL": "PP-7"}, tmp_path) == "epson"  # discovery's spelling too
    path.write_text(json.dumps({"epson": [{}, "PP-9", {"model": "PP-9"}], "epsn": [{"model": "PP-8"}]}))
    assert driver({"ID_MODEL": "PP-9"}, tmp_path) == "epson"  # the good entry counts, the others are named
    assert "epsn" in caplog.text and "'PP-9' ignored" in caplog.text
    path.write_text("{broken")
    assert driver(pp100, tmp_path) == "epson" and driver(pp150, tmp_path) is None
    assert "usb-matchers.json: ignored" in caplog.text


# --------------------------------------------------------------------------- backends


def test_without_udev_discovery_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(udev, "UDEV_CONTROL", str(tmp_path / "no-such-control"))
    disc = Discovery(udev.UdevBackend())
    status = disc.status()
    assert status["backend"] == "udev" and status["working"] is False
    assert "no udev daemon" in status["message"] and "robots add" in status["message"]
    assert disc.poll() is False and disc.robots() == {} and disc.lcd() is None


def test_udev_device_description_uses_stable_paths():
    tty = SimpleNamespace(
        properties={"ID_VENDOR_ID": "1b3d", "ID_MODEL_ID": "0120", "ID_VENDOR": "Matrix_Orbital",
                    "ID_MODEL": "LK204", "ID_SERIAL_SHORT": "A1", "ID_PATH": "pci-0000:00:14.0-usb-0:2:1.0",
                    "DEVLINKS": "/dev/serial/by-path/x /dev/serial/by-id/usb-Matrix_Orbital_LK204_A1-if00-port0"},
        attributes={}, subsystem="tty", device_node="/dev/ttyUSB0", sys_path="/sys/x")
    info = udev.describe(tty)
    assert info["device"] == "/dev/serial/by-id/usb-Matrix_Orbital_LK204_A1-if00-port0"
    assert info["id_path"].startswith("pci-")
    assert best_match(info, load_matchers()) == "lcd"


def test_simulated_announcements_are_plug_and_unplug(tmp_path):
    devices = tmp_path / "devices"
    devices.mkdir()
    disc = Discovery(SimulatedBackend(tmp_path, interval=0))
    assert disc.robots() == {} and disc.status()["working"]
    doc = {"name": "p2", "kind": "primera", "vendor_id": "0f25", "product_id": "0041",
           "vendor": "Primera Technology, Inc.", "model": "Bravo 4100", "serial": "S1", "spool": "/x/p2"}
    (devices / "p2.json").write_text(json.dumps(doc))
    assert disc.poll() is True
    assert disc.robots()["p2"]["driver"] == "primera" and disc.robots()["p2"]["spool"] == "/x/p2"
    assert disc.poll() is False
    (devices / "bad.json").write_text("{not json")
    disc.poll()
    assert set(disc.robots()) == {"p2"}
    (devices / "p2.json").unlink()
    assert disc.poll() is True and disc.robots() == {}


# --------------------------------------------------------------------------- the station


def status(data: Path) -> dict:
    return json.loads(burnstation(data, "status", "--json").stdout)


def driver_state(data: Path, robot: str) -> str | None:
    for proc in status(data)["processes"]:
        if proc["name"] == f"driver:{robot}":
            return proc["state"]
    return None


def robot_row(data: Path, name: str) -> dict:
    return next(r for r in status(data)["robots"] if r["name"] == name)


def jobs(data: Path) -> list[dict]:
    return json.loads(burnstation(data, "jobs", "list", "--json").stdout)["jobs"]


def sim_ctl(root: Path, *words: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "burnstation_sim", "ctl", "--root", str(root), *words],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def send(st: Station, aet: str, files: list[Path]) -> None:
    result = dcmtk("storescu", "-aec", aet, "127.0.0.1", str(st.port), *map(str, files), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.station
def test_simulated_primera_plug_burn_unplug_wait(tmp_path):
    st = Station(tmp_path / "data", supervisor__start_seconds=1, hl7__port=0, http__port=0)
    sim = st.data / "sim"
    st.start("--simulate", "--robots", "primera", "--sim-speed", "0")
    try:
        # plugged in at start: the driver process runs and is visible in status
        wait_for(lambda: driver_state(st.data, "primera") == "running", what="driver:primera running", timeout=TIMEOUT)
        row = robot_row(st.data, "primera")
        assert row["source"] == "simulated" and row["plugged"] is True and row["driver"] == "primera"
        assert "simulated" in status(st.data)["discovery"]["backend"]
        log = st.log()  # `run --simulate` says where the discs land and how to inject a fault
        assert f"output bin {sim}/bin/<robot>/<job id>/" in log
        assert f"burnstation-sim ctl --root {sim} primera fault input_empty on" in log

        # a _P association burns on the simulated Primera
        send(st, "BURNSTATION_P", write_study(tmp_path / "one", n_series=1, per_series=2))
        first = wait_for(lambda: [j for j in jobs(st.data) if j["state"] == "done"], what="first job done", timeout=TIMEOUT)[0]
        assert first["robot"] == "primera"
        assert (sim / "bin" / "primera" / first["id"]).is_dir()

        # unplug: the driver process stops, a new _P job waits with the reason visible
        sim_ctl(sim, "primera", "unplug")
        wait_for(lambda: driver_state(st.data, "primera") is None, what="driver:primera stopped", timeout=TIMEOUT)
        row = wait_for(lambda: (lambda r: r if not r["online"] else None)(robot_row(st.data, "primera")),
                       what="robot offline", timeout=TIMEOUT)
        assert row["plugged"] is False and "unplugged" in row["message"], row
        assert row["process"] == "not running"
        send(st, "BURNSTATION_P", write_study(tmp_path / "two", n_series=1, per_series=2))
        # "built" first carries the builder's message; the burner then says why the job waits
        second = wait_for(lambda: [j for j in jobs(st.data) if j["id"] != first["id"] and j["state"] == "built"
                                   and "online" in j["message"]], what="second job waiting for a robot",
                          timeout=TIMEOUT)[0]
        assert "robot" in second["message"] and "online" in second["message"], second
        holds_for(lambda: next(j for j in jobs(st.data) if j["id"] == second["id"])["state"] == "built"
                  and not (sim / "bin" / "primera" / second["id"]).exists(), 3, "second job waiting, unburned")
        text = burnstation(st.data, "status").stdout
        assert "UNPLUGGED" in text and "unplugged" in text
        assert f"1 built: {second['message']}" in text  # why the job waits, in status too

        # plug it back: the driver returns and the waiting job burns
        sim_ctl(sim, "primera", "plug")
        wait_for(lambda: driver_state(st.data, "primera") == "running", what="driver:primera back", timeout=TIMEOUT)
        done = wait_for(lambda: [j for j in jobs(st.data) if j["id"] == second["id"] and j["state"] == "done"],
                        what="second job done after plug", timeout=TIMEOUT)[0]
        assert done["robot"] == "primera" and (sim / "bin" / "primera" / second["id"]).is_dir()
    finally:
        st.stop()


class FakeUdev:
    """Stands in for udev: a list of USB devices the test plugs and unplugs."""

    name = "udev"

    def __init__(self) -> None:
        self.devices: list[dict] = []
        self.event = False

    def available(self):
        return True, "fake udev"

    def scan(self):
        return list(self.devices)

    def poll(self):
        event, self.event = self.event, False
        return event

    def close(self):
        pass


def test_udev_robot_is_registered_and_gets_a_driver_while_plugged(tmp_path):
    from appliance.services.plan import StationPlan

    data = tmp_path / "data"
    burnstation(data, "init")
    fake = FakeUdev()
    plan = StationPlan(data, discovery=Discovery(fake, data_dir=data), services=[])
    assert not [s for s in plan() if s.name.startswith("driver:")]
    # a Primera on USB (udev strings as the kernel reports them), and a serial LCD
    fake.devices = [
        {"vendor_id": "0f25", "product_id": "0041", "vendor": "Primera_Technology", "model": "Bravo_4100",
         "serial": "PT-000123", "id_path": "pci-0000:00:14.0-usb-0:1:1.0", "subsystem": "usb", "device": ""},
        {"vendor_id": "1b3d", "product_id": "0120", "vendor": "Matrix_Orbital", "model": "LK204",
         "subsystem": "tty", "device": "/dev/serial/by-id/usb-Matrix_Orbital_LK204-if00-port0"},
        {"vendor_id": "046d", "product_id": "c52b", "vendor": "Logitech", "model": "Receiver", "subsystem": "usb"},
    ]
    fake.event = True
    assert plan.changed() is True  # polls discovery and registers what it found
    robots = {r["name"]: r for r in plan.settings.table_all("robots")}
    assert set(robots) == {"primera-PT000123"}
    robot = robots["primera-PT000123"]
    assert robot["source"] == "udev" and robot["driver"] == "primera" and robot["role"] == "primera"
    assert robot["spool"] == str((data / "spool" / "primera-PT000123").resolve())
    wanted = {s.name: s for s in plan()}
    assert wanted["driver:primera-PT000123"].argv[-3:] == ["driver", "--robot", "primera-PT000123"]
    assert wanted["panel"].argv[-2:] == ["--device", "/dev/serial/by-id/usb-Matrix_Orbital_LK204-if00-port0"]
    # unplugged: no driver, no panel; the robot stays configured (its spool and settings are kept)
    fake.devices = []
    fake.event = True
    assert plan.changed() is True
    assert not [s for s in plan() if s.name.startswith("driver:") or s.name == "panel"]
    assert [r["name"] for r in plan.settings.table_all("robots")] == ["primera-PT000123"]
