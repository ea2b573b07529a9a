"""The front panel: Matrix Orbital commands, the simulator's virtual LCD on a pty, and the panel
process of a running station drawing AE title, IP address and state onto it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import serial
from burnstation_sim.lcd import Screen
from support import Station, burnstation, wait_for

from appliance.panel import protocol


def host_addresses() -> set[str]:
    """The machine's IPv4 addresses, asked from `ip` (independent of the panel's own code)."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return {"127.0.0.1"}
    return {line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3}


def test_frame_decodes_back_to_the_same_screen():
    lines = ["BURNSTATION", "IP 10.1.2.3", "DICOM 104 TLS 2762", "State: OK"]
    data = protocol.clear() + protocol.backlight(True) + protocol.frame(lines)
    screen = Screen()
    for i in range(0, len(data), 3):  # any chunking
        screen.feed(data[i:i + 3])
    assert screen.lines() == [line.ljust(20) for line in lines]
    assert screen.backlight
    screen.feed(protocol.backlight(False) + protocol.goto(5, 2) + protocol.text("XY"))
    assert not screen.backlight
    assert screen.lines()[1] == "IP 1XY1.2.3".ljust(20)  # written over, column 5
    screen.feed(protocol.clear())
    assert screen.lines() == [" " * 20] * 4


def test_untrusted_text_cannot_become_a_command():
    assert protocol.text("MÜLLER\xfe\x58") == b"M?LLER?X"  # 0xFE dropped: "X" stays text
    assert protocol.fit("x" * 30) == "x" * 20
    with pytest.raises(ValueError):
        protocol.goto(21, 1)
    screen = Screen()
    screen.feed(protocol.frame(["A" * 25, "\xfeX"]))
    assert screen.lines()[0] == "A" * 20 and screen.lines()[1].startswith("?X")


def test_virtual_lcd_on_a_pty_through_pyserial(tmp_path):
    root = tmp_path / "sim"
    proc = subprocess.Popen([sys.executable, "-m", "burnstation_sim.lcd", "--root", str(root)],
                            stderr=subprocess.PIPE)
    try:
        announce = root / "devices" / "lcd.json"
        wait_for(announce.exists, 30, "lcd.json", every=0.1)
        doc = json.loads(announce.read_text())
        assert doc["kind"] == "lcd" and doc["vendor_id"] == "1b3d" and doc["device"].startswith("/dev/pts/")
        with serial.Serial(doc["device"], 19200, timeout=1) as port:
            port.write(protocol.clear() + protocol.frame(["hello", "", "", "world"]))
            port.flush()
        screen = root / "lcd-screen.txt"
        text = wait_for(lambda: "world" in screen.read_text() and screen.read_text(), 10, "the screen", every=0.1)
        assert text.splitlines() == ["hello".ljust(20), " " * 20, " " * 20, "world".ljust(20)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert not (root / "devices" / "lcd.json").exists()


def test_station_panel_shows_address_aet_and_state(tmp_path):
    st = Station(tmp_path / "data", panel__page_seconds=2, supervisor__start_seconds=1)
    screen = st.data / "sim" / "lcd-screen.txt"
    seen: dict[str, str] = {}

    def collect(*needles):
        def check():
            if not screen.exists():
                return False
            text = screen.read_text()
            for line in text.splitlines():
                seen[line.strip()] = line
            return all(any(n in line for line in seen) for n in needles)
        return check

    st.start("--simulate", "--robots", "epson", "--sim-speed", "0")
    try:
        wait_for(collect("BURNSTATION", "IP ", "State: OK", f" {st.port} TLS {st.tls_port}"), 90,
                 "the panel's first page", every=0.1)
        ips = [line.split()[1] for line in seen if line.startswith("IP ")]
        assert set(ips) & host_addresses(), (ips, host_addresses())
        wait_for(collect("HL7 ", "Queue"), 30, "the second page (ports, job)", every=0.1)
        # no web user yet: the panel shows the one-time setup code
        code = (st.data / "setup-code").read_text().strip()
        wait_for(collect("Web setup code:", code, "/setup"), 30, "the setup code page", every=0.1)
        # a robot fault shows as the station's state, with the robot's own words
        sim_ctl = [sys.executable, "-m", "burnstation_sim", "ctl", "--root", str(st.data / "sim"), "epson"]
        subprocess.run([*sim_ctl, "fault", "cover_open", "on"], check=True, capture_output=True, timeout=60)
        seen.clear()
        wait_for(collect("State: ROBOT FAULT", "epson: "), 60, "ROBOT FAULT on the panel", every=0.1)
        subprocess.run([*sim_ctl, "fault", "cover_open", "off"], check=True, capture_output=True, timeout=60)
        seen.clear()
        wait_for(collect("State: OK"), 60, "OK again on the panel", every=0.1)
        # a settings change reaches the panel without a restart
        burnstation(st.data, "config", "set", "dicom.aet=FRONTDESK")
        seen.clear()
        wait_for(collect("FRONTDESK"), 30, "the new AE title on the panel", every=0.1)
        status = json.loads(burnstation(st.data, "status", "--json").stdout)
        panel = next(p for p in status["processes"] if p["name"] == "panel")
        assert panel["state"] == "running" and panel["starts"] == 1
        assert panel["device"] == json.loads((st.data / "sim" / "devices" / "lcd.json").read_text())["device"]
    finally:
        st.stop()
    assert os.path.exists(st.data / "sim" / "lcd-screen.txt")


def test_panel_device_set_by_hand_starts_the_panel(tmp_path):
    """No USB discovery here: `panel.device` set while running starts the panel process on that line."""
    root = tmp_path / "lcd"
    lcd = subprocess.Popen([sys.executable, "-m", "burnstation_sim.lcd", "--root", str(root)], stderr=subprocess.PIPE)
    st = Station(tmp_path / "data", supervisor__start_seconds=1, panel__baud=9600)
    try:
        wait_for((root / "devices" / "lcd.json").exists, 30, "the virtual LCD", every=0.1)
        device = json.loads((root / "devices" / "lcd.json").read_text())["device"]
        with st:
            procs = wait_for(lambda: (lambda ps: ps if ps and all(p["state"] == "running" for p in ps) else None)(
                json.loads(burnstation(st.data, "status", "--json").stdout)["processes"]), 60, "all running", every=0.1)
            assert "panel" not in [p["name"] for p in procs]  # nothing found, nothing configured
            burnstation(st.data, "config", "set", f"panel.device={device}")
            screen = root / "lcd-screen.txt"
            wait_for(lambda: "BURNSTATION" in screen.read_text(), 60, "the AE title on the hand-set LCD", every=0.1)
            status = json.loads(burnstation(st.data, "status", "--json").stdout)
            assert next(p for p in status["processes"] if p["name"] == "panel")["device"] == device
            burnstation(st.data, "config", "set", "panel.device=")
            wait_for(lambda: "panel" not in [p["name"] for p in json.loads(
                burnstation(st.data, "status", "--json").stdout)["processes"]], 30, "the panel stopped", every=0.1)
            # the panel says goodbye when it stops
            wait_for(lambda: "BurnStation stopped" in screen.read_text(), 30, "the goodbye text", every=0.1)
    finally:
        lcd.send_signal(signal.SIGTERM)
        lcd.wait(10)
