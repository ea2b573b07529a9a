"""The root side of the network settings in the image (appliance/netapply.py), run here on tmp folders
with an injected clock, command runner and sethostname: it installs only what it validated itself,
refuses foreign or unsafe files without changing anything, and keeps the 120 s rollback on its own
timer. The station half is the real `network.Network` in image mode, talking to it through the
request file and the status file."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from support import wait_for

from appliance import netapply, network

T0 = 1_800_000_000.0


class Box:
    """An appliance's data folder, /etc and /run status, all under tmp_path; records what is run."""

    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self.etc = root / "etc"
        self.status = root / "run" / "status.json"
        self.etc.mkdir(parents=True)
        self.now = T0
        self.commands: list[list[str]] = []
        self.hostnames: list[str] = []
        self.net = network.Network(self.data, clock=lambda: self.now,
                                   tgt=network.Target(self.data / "system" / "etc", True),
                                   status_path=self.status, apply_wait=10)

    def apply(self, owners: set[int] | None = None) -> dict[str, Any]:
        self.commands.clear()
        return netapply.apply(self.data, self.etc, self.status, now=lambda: self.now, run=self.commands.append,
                              sethostname=self.hostnames.append,
                              owners={os.getuid()} if owners is None else owners)

    def set(self, **changes: str) -> dict[str, Any]:
        """`network set` as the station does it, answered by one apply run (the path unit's job)."""
        result: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: result.update(self.net.set(changes)))
        worker.start()
        wait_for(lambda: self.net.request_path.exists() or not worker.is_alive(), 10, "the station's request",
                 every=0.01)
        assert self.net.request_path.exists(), "the station wrote no request"
        self.apply()
        worker.join(10)
        return result

    def etc_files(self) -> dict[str, str]:
        return {str(p.relative_to(self.etc)): p.read_text() for p in sorted(self.etc.rglob("*")) if p.is_file()}

    def timer_seconds(self) -> int | None:
        runs = [c for c in self.commands if c[0] == "systemd-run"]
        assert len(runs) <= 1
        if not runs:
            return None
        assert f"--unit={netapply.ROLLBACK_UNIT}" in runs[0] and runs[0][-1] == netapply.APPLY_UNIT
        return int(next(a for a in runs[0] if a.startswith("--on-active=")).split("=")[1].rstrip("s"))


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


def test_station_request_applied_under_etc_with_rollback_timer(box: Box) -> None:
    result = box.set(hostname="burn-07", mode="static", address="192.0.2.20/24", gateway="192.0.2.1",
                     timezone="Europe/Berlin")
    assert result["applied"] is True and result["failed"] == []
    assert not box.net.request_path.exists()  # taken by the apply run
    network_file = box.etc / network.NETWORK_FILE
    assert "Address=192.0.2.20/24\nGateway=192.0.2.1\n" in network_file.read_text()
    assert oct(network_file.stat().st_mode & 0o777) == "0o644"
    assert (box.etc / "hostname").read_text() == "burn-07\n" and box.hostnames == ["burn-07"]
    assert os.readlink(box.etc / "localtime") == str(network.ZONEINFO / "Europe/Berlin")
    assert ["networkctl", "reload"] in box.commands
    assert box.timer_seconds() == network.ROLLBACK_SECONDS  # the root side's own deadline
    status = network.read_status(box.status)
    assert status["values"]["address"] == "192.0.2.20/24" and status["pending_deadline"] == T0 + 120
    assert box.net.show()["apply_status"]["token"] == status["token"]
    assert network.apply_summary(status).endswith("applied (systemd/network/10-burnstation.network, "
                                                  "systemd/timesyncd.conf.d/burnstation.conf, hostname, "
                                                  "timezone, localtime)")
    # confirmed: the next run drops the timer and changes nothing
    assert box.net.confirm()
    assert box.apply()["changed"] == [] and box.timer_seconds() is None
    assert ["systemctl", "stop", f"{netapply.ROLLBACK_UNIT}.timer"] in box.commands
    assert not any(c[:2] == ["networkctl", "reload"] for c in box.commands)  # nothing changed, nothing reloaded


def test_rollback_by_the_root_side_alone_injected_clock(box: Box) -> None:
    box.set(mode="static", address="192.0.2.20/24")
    box.net.confirm()
    box.apply()
    box.set(address="192.0.2.30/24")  # unconfirmed; the station is "down" from here: no check_rollback
    assert "Address=192.0.2.30/24" in (box.etc / network.NETWORK_FILE).read_text()
    box.now += 119.5  # the timer fired early: it is armed again for what is left
    assert box.apply()["rolled_back"] is False and box.timer_seconds() == 1
    assert "Address=192.0.2.30/24" in (box.etc / network.NETWORK_FILE).read_text()
    box.now += 0.5
    status = box.apply()
    assert status["rolled_back"] is True and status["errors"] == []
    assert "Address=192.0.2.20/24" in (box.etc / network.NETWORK_FILE).read_text()
    assert box.timer_seconds() is None and ["networkctl", "reload"] in box.commands
    # the station, back, agrees: its own check puts the previous settings in network.json too
    assert box.net.check_rollback() is True and box.net.current()["address"] == "192.0.2.20/24"
    assert box.apply()["changed"] == []


def test_a_deadline_further_than_one_period_is_clamped(box: Box) -> None:
    box.set(mode="static", address="192.0.2.20/24")
    pending = json.loads(box.net.pending_path.read_text())
    pending["deadline"] = T0 + 10 * 365 * 86400  # the station (or whoever writes there) cannot defer it
    box.net.pending_path.write_text(json.dumps(pending))
    assert box.apply()["pending_deadline"] == T0 + network.ROLLBACK_SECONDS
    assert box.timer_seconds() == network.ROLLBACK_SECONDS


def _refused(box: Box, before: dict[str, str], message: str, owners: set[int] | None = None) -> None:
    status = box.apply(owners)
    assert status["errors"] and message in status["errors"][0], status["errors"]
    assert status["errors"][0].startswith("refused, nothing changed")
    assert box.etc_files() == before and box.hostnames == ["burn-01"]
    assert not [c for c in box.commands if c[0] != "systemctl" or c[1] != "stop"]


@pytest.mark.parametrize("case", ["symlink", "hardlink", "fifo", "foreign-owner", "too-big", "not-json", "list",
                                  "unknown-key", "injected-line", "bad-gateway", "zone-escape",
                                  "pending-bad-deadline", "pending-bad-previous"])
def test_foreign_or_unsafe_files_refused_nothing_changed(box: Box, tmp_path: Path, case: str) -> None:
    box.set(hostname="burn-01", mode="static", address="192.0.2.20/24")
    box.net.confirm()
    box.apply()
    before = box.etc_files()
    settings = box.net.settings_path
    good = json.loads(settings.read_text())

    def write(values: Any) -> None:
        settings.unlink()
        settings.write_text(json.dumps(values))

    owners = None
    message = ""
    if case == "symlink":  # e.g. to a root-only file the station wants read or installed
        secret = tmp_path / "shadow.json"
        secret.write_text(json.dumps({**good, "address": "198.51.100.5/24"}))
        settings.unlink()
        settings.symlink_to(secret)
        message = "a link is never followed"
    elif case == "hardlink":  # another name of a file elsewhere (root's, on a box)
        secret = tmp_path / "other.json"
        secret.write_text(json.dumps({**good, "address": "198.51.100.5/24"}))
        settings.unlink()
        os.link(secret, settings)
        message = "has 2 names (a hard link)"
    elif case == "fifo":
        settings.unlink()
        os.mkfifo(settings)
        message = "not a regular file"
    elif case == "foreign-owner":
        owners = {os.getuid() + 1}
        message = f"owned by uid {os.getuid()}"
    elif case == "too-big":
        write({**good, "search": "a" * netapply.MAX_BYTES})
        message = "more than 65536"
    elif case == "not-json":
        settings.write_text("[Network]\nAddress=198.51.100.5/24\n")
        message = "not JSON"
    elif case == "list":
        write([good])
        message = "not a JSON object"
    elif case == "unknown-key":
        write({**good, "ExecStart": "/bin/sh"})
        message = "ExecStart: no such network setting"
    elif case == "injected-line":  # a value that would add a line to the .network file
        write({**good, "address": "192.0.2.20/24\n[Network]\nDNS=198.51.100.53"})
        message = "address:"
    elif case == "bad-gateway":
        write({**good, "gateway": "198.51.100.1"})
        message = "gateway: 198.51.100.1 is not inside the subnet 192.0.2.0/24"
    elif case == "zone-escape":
        write({**good, "timezone": "../../../etc/shadow"})
        message = "is not a time zone name"
    elif case == "pending-bad-deadline":
        box.net.pending_path.write_text(json.dumps({"previous": good, "new": good, "deadline": "soon"}))
        message = "no valid deadline"
    elif case == "pending-bad-previous":
        box.net.pending_path.write_text(json.dumps({"previous": {**good, "mode": "bridge"}, "new": good,
                                                    "deadline": T0 - 1}))
        message = "pending.json previous: mode: must be dhcp or static"
    _refused(box, before, message, owners)
    assert json.loads((box.status).read_text())["values"] is None


def test_request_token_only_a_signal(box: Box) -> None:
    """The request's content is echoed only when it is a short token; a link as request is not read."""
    box.data.joinpath("system").mkdir(parents=True)
    target = box.data / "elsewhere"
    target.write_text("secret\n")
    box.net.request_path.symlink_to(target)
    status = box.apply()
    assert status["token"] is None and not box.net.request_path.exists() and target.read_text() == "secret\n"
    box.net.request_path.write_text("x" * 100 + "\n")
    assert box.apply()["token"] is None


def test_a_request_that_cannot_be_taken_is_reported_not_fatal(box: Box) -> None:
    box.net.request_path.mkdir(parents=True)
    (box.data / "system" / ".apply-request.taken").mkdir()
    (box.data / "system" / ".apply-request.taken" / "x").write_text("")
    assert box.apply()["token"] is None and network.read_status(box.status) is not None


def test_never_set_leaves_the_image_default(box: Box) -> None:
    status = box.apply()
    assert status["values"] is None and status["errors"] == [] and box.etc_files() == {}
    assert box.timer_seconds() is None
    assert "no settings made yet, the image's defaults" in network.apply_summary(network.read_status(box.status))


def test_station_reports_an_apply_unit_that_does_not_answer(box: Box) -> None:
    box.net.apply_wait = 0.3
    result = box.net.set({"hostname": "burn-02"})
    assert result["failed"] and "did not answer within 0.3 s" in result["failed"][0]
    assert box.net.request_path.exists()  # still there for the unit when it comes
    assert box.net.current()["hostname"] == "burn-02"


def test_failed_commands_reported_files_kept(box: Box) -> None:
    def failing(cmd: list[str]) -> None:
        if cmd[:2] == ["networkctl", "reload"]:
            raise OSError("networkd is not running")

    box.data.joinpath("system").mkdir(parents=True)
    box.net._store(network.validate({"mode": "static", "address": "192.0.2.20/24"}))
    status = netapply.apply(box.data, box.etc, box.status, now=lambda: box.now, run=failing,
                            sethostname=lambda name: None, owners={os.getuid()})
    assert status["errors"] == ["networkctl reload: networkd is not running"]
    assert "Address=192.0.2.20/24" in (box.etc / network.NETWORK_FILE).read_text()
