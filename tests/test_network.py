"""Network and time settings (issue 18): validation messages, the files written, the rollback of an
unconfirmed address change (injected clock), and the LCD countdown."""

from __future__ import annotations

import ipaddress
import json
import os
import time
from pathlib import Path

import pytest
from support import burnstation

from appliance import network, trail
from appliance.config import SettingError, Settings
from appliance.panel import screen

# the keys systemd-networkd (systemd.network(5)) and timesyncd (timesyncd.conf(5)) know in what we write
NETWORKD_KEYS = {"Match": {"Name"}, "Network": {"DHCP", "Address", "Gateway", "DNS", "Domains"}}
TIMESYNCD_KEYS = {"Time": {"NTP", "FallbackNTP"}}


def parse_unit_file(text: str) -> dict[str, list[tuple[str, str]]]:
    """systemd's ini syntax: [Section], Key=Value (keys may repeat), # and ; comments."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        assert current is not None, f"key outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not Key=Value: {raw!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def check_networkd(text: str) -> dict[str, list[tuple[str, str]]]:
    """Parse a .network file and check every key is known and every value well-formed."""
    sections = parse_unit_file(text)
    assert set(sections) <= set(NETWORKD_KEYS) and "Match" in sections and "Network" in sections
    for section, items in sections.items():
        for key, value in items:
            assert key in NETWORKD_KEYS[section], (section, key)
            if key == "Address":
                ipaddress.ip_interface(value)
            elif key in ("Gateway", "DNS"):
                ipaddress.ip_address(value)
            elif key == "DHCP":
                assert value in ("yes", "no", "ipv4", "ipv6")
    return sections


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    burnstation(folder, "init")
    return folder


@pytest.mark.parametrize(("assignment", "message"), [
    (["mode=static"], "address: a static address is needed with mode=static"),
    (["mode=static", "address=192.168.1.20"], "address: '192.168.1.20' needs its prefix length"),
    (["mode=static", "address=192.168.1.300/24"], "is not an address with a prefix"),
    (["mode=static", "address=192.168.1.0/24"], "is the network address of 192.168.1.0/24"),
    (["mode=static", "address=192.168.1.20/24", "gateway=192.168.2.1"],
     "gateway: 192.168.2.1 is not inside the subnet 192.168.1.0/24"),
    (["mode=static", "address=192.168.1.20/24", "dns=dns.example.org"], "dns: 'dns.example.org' is not an IP address"),
    (["mode=bridge"], "mode: must be dhcp or static"),
    (["address=10.0.0.5/8"], "only with mode=static"),
    (["hostname=-box"], "hostname: '-box' must be 1 to 63 letters"),
    (["hostname=box.example.org"], "no dots"),
    (["timezone=Mars/Olympus"], "timezone: no time zone 'Mars/Olympus'"),
    (["timezone=../../etc/passwd"], "is not a time zone name"),
    (["ntp=bad_host!"], "ntp: 'bad_host!' is neither an IP address nor a host name"),
    (["search=exa mple..org"], "search:"),
    (["colour=blue"], "colour: no such network setting"),
])
def test_bad_values_refused_with_message(data: Path, assignment: list[str], message: str) -> None:
    proc = burnstation(data, "network", "set", *assignment, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (data / "system" / "network.json").exists()  # nothing written
    assert not (data / "system" / "etc").exists()


def test_good_values_written_as_valid_files(data: Path) -> None:
    proc = burnstation(data, "network", "set", "hostname=burn-01", "mode=static", "address=192.168.10.20/24",
                       "gateway=192.168.10.1", "dns=192.168.10.2,2001:db8::53", "search=hospital.example",
                       "ntp=ntp1.hospital.example 192.168.10.3", "timezone=Europe/Berlin")
    assert "confirm within 120 s" in proc.stdout and "not applied: outside the appliance image" in proc.stdout
    etc = data / "system" / "etc"
    sections = check_networkd((etc / network.NETWORK_FILE).read_text())
    assert ("Address", "192.168.10.20/24") in sections["Network"]
    assert ("Gateway", "192.168.10.1") in sections["Network"]
    assert [v for k, v in sections["Network"] if k == "DNS"] == ["192.168.10.2", "2001:db8::53"]
    assert ("Domains", "hospital.example") in sections["Network"]
    timesync = parse_unit_file((etc / network.TIMESYNC_FILE).read_text())
    assert timesync == {"Time": [("NTP", "ntp1.hospital.example 192.168.10.3")]}
    assert (etc / "hostname").read_text() == "burn-01\n"
    assert (etc / "timezone").read_text() == "Europe/Berlin\n"
    assert os.readlink(etc / "localtime") == "/usr/share/zoneinfo/Europe/Berlin"
    shown = json.loads(burnstation(data, "network", "show", "--json").stdout)
    assert shown["values"]["address"] == "192.168.10.20/24" and shown["applied"] is False
    assert 0 < shown["pending_seconds"] <= 120
    assert burnstation(data, "network", "confirm").stdout.strip() == "network change confirmed"
    assert json.loads(burnstation(data, "network", "show", "--json").stdout)["pending_seconds"] is None
    assert burnstation(data, "network", "confirm", check=False).returncode == 1
    # back to DHCP: a valid file too
    burnstation(data, "network", "set", "mode=dhcp", "address=", "gateway=")
    sections = check_networkd((etc / network.NETWORK_FILE).read_text())
    assert ("DHCP", "yes") in sections["Network"] and not any(k == "Address" for k, _ in sections["Network"])


def test_unconfirmed_change_rolls_back_after_the_timeout(data: Path) -> None:
    now = [time.time()]  # the LCD reads the real clock; the rollback reads this one
    net = network.Network(data, clock=lambda: now[0])
    net.set({"mode": "static", "address": "10.1.0.5/16", "gateway": "10.1.0.1"})
    confirmed = net.current()
    net.confirm()
    net.set({"address": "10.2.0.5/16", "gateway": "10.2.0.1"})  # a change of address: armed
    net.set({"address": "10.3.0.5/16", "gateway": "10.3.0.1"})  # a second one rolls back to the first
    net.set({"timezone": "Asia/Tokyo"})  # not an address change: no new deadline
    assert net.seconds_left() == network.ROLLBACK_SECONDS
    lcd = screen.pages(data, Settings(data), addresses=["10.3.0.5"])
    assert lcd[0][3] in ("IP confirm 120s", "IP confirm 119s")
    now[0] += network.ROLLBACK_SECONDS - 1
    assert net.check_rollback() is False and net.current()["address"] == "10.3.0.5/16"
    now[0] += 1
    assert net.check_rollback() is True
    assert net.current() == confirmed
    assert net.pending() is None
    entries = [json.loads(line) for line in (data / "logs" / trail.TRAIL_FILE).read_text().splitlines()]
    assert [e["action"] for e in entries][-2:] == ["network.set", "network.rolled_back"]
    assert entries[-1]["restored"]["address"] == "10.1.0.5/16" and entries[-1]["unconfirmed"]["address"] == "10.3.0.5/16"
    text = (data / "system" / "etc" / network.NETWORK_FILE).read_text()
    assert ("Address", "10.1.0.5/16") in check_networkd(text)["Network"]
    assert screen.pages(data, Settings(data), addresses=["10.1.0.5"])[0][3].startswith("State:")
    # a timezone-only change never arms a rollback
    net.set({"timezone": "UTC"})
    assert net.pending() is None


def test_validation_rejects_whole_configuration() -> None:
    good = network.validate({"mode": "static", "address": "fd00::5/64", "gateway": "fd00::1"})
    assert good["address"] == "fd00::5/64"
    with pytest.raises(SettingError, match="gateway: 192.168.1.1 is not inside the subnet fd00::/64"):
        network.validate({"mode": "static", "address": "fd00::5/64", "gateway": "192.168.1.1"})


def test_web_confirmation_counts_only_from_the_new_address() -> None:
    """The web Confirm proves the new settings work only when it came in on the new static address."""
    pending = {"previous": network.validate({"mode": "static", "address": "192.0.2.20/24"}),
               "new": network.validate({"mode": "static", "address": "192.0.2.30/24"}), "deadline": 0}
    refusal = network.confirm_refusal("192.0.2.20", pending)
    assert refusal == ("reached at 192.0.2.20, not at the new address 192.0.2.30: "
                       "open this page at 192.0.2.30 to confirm")
    assert network.confirm_refusal("192.0.2.30", pending) is None
    assert network.confirm_refusal("127.0.0.1", pending) is None  # on the box itself
    assert network.confirm_refusal("burnstation.hospital.example", pending) is None  # a name: not known here
    v6 = {**pending, "new": network.validate({"mode": "static", "address": "fd00::30/64"})}
    assert network.confirm_refusal("[fd00::30]", v6) is None and network.confirm_refusal("[fd00::20]", v6)
    dhcp = {**pending, "new": network.validate({"mode": "dhcp"})}
    assert network.confirm_refusal("198.51.100.7", dhcp) is None  # the DHCP address is not known in advance
    assert network.confirm_refusal("192.0.2.20", None) is None  # nothing pending
