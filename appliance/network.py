"""Network and time settings of the box: host name, DHCP or a static address, DNS, NTP, time zone.

Kept in `<data>/system/network.json` (validated whole, with clear messages) and written as the
files the system reads, under `<data>/system/etc/`: a systemd-networkd `.network` file, a
systemd-timesyncd drop-in, the host name and the time zone. The station never writes /etc: in the
appliance image (`BURNSTATION_IMAGE=1`, or the marker file IMAGE_MARKER) it drops a request
(`<data>/system/apply-request`) that a root unit watches; that unit (`appliance.netapply`) reads
network.json itself, validates it again, renders and installs the files under /etc and applies
them, and writes its outcome to APPLY_STATUS. Anywhere else (`make run`, tests) nothing is applied.

A change of address (mode, address, gateway, DNS, interface) is applied with a safety net, as
routers do: the previous settings come back by themselves ROLLBACK_SECONDS later unless the
change is confirmed (`burnstation network confirm`, from the new address). The pending change is
`<data>/system/pending.json` with a wall-clock deadline; the burner checks it every pass, and
every `network` command checks it first, so a rollback happens even after a restart. In the image
the root side keeps its own timer for the deadline too (a rollback happens with the station down).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import atomicfile, trail
from appliance.config import SettingError

LOG = logging.getLogger("burnstation.network")
ROLLBACK_SECONDS = 120
IMAGE_MARKER = Path("/usr/lib/burnstation/image")
ZONEINFO = Path("/usr/share/zoneinfo")
NETWORK_FILE = "systemd/network/10-burnstation.network"
TIMESYNC_FILE = "systemd/timesyncd.conf.d/burnstation.conf"
REQUEST_FILE = "apply-request"  # in <data>/system/: the root unit's path watch starts it
APPLY_STATUS = Path("/run/burnstation-network/status.json")  # written by the root unit only
APPLY_WAIT_SECONDS = 20.0

DEFAULTS: dict[str, Any] = {
    "hostname": "burnstation",
    "interface": "en* eth*",
    "mode": "dhcp",
    "address": "",
    "gateway": "",
    "dns": [],
    "search": "",
    "ntp": [],
    "timezone": "UTC",
}
# keys whose change can cut the technician off: applied with the rollback safety net
ADDRESS_KEYS = ("interface", "mode", "address", "gateway", "dns")

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
_HOSTNAME_RE = re.compile(rf"^{_LABEL}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:*?\[\]-]{1,15}$")


def _list(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        items = [str(v) for v in value]
    else:
        items = re.split(r"[,\s]+", str(value))
    return [item.strip() for item in items if item.strip()]


def _zone(value: Any) -> str:
    text = str(value).strip()
    if not text or text.startswith("/") or ".." in text.split("/") or not re.fullmatch(r"[A-Za-z0-9_+./-]+", text):
        raise SettingError(f"timezone: {value!r} is not a time zone name such as Europe/Berlin or UTC")
    path = ZONEINFO / text
    if not path.is_file():
        raise SettingError(f"timezone: no time zone {text!r} in {ZONEINFO} (e.g. Europe/Berlin, America/New_York, UTC)")
    with open(path, "rb") as fh:
        if fh.read(4) != b"TZif":
            raise SettingError(f"timezone: {text!r} is not a time zone file")
    return text


def validate(values: dict[str, Any]) -> dict[str, Any]:
    """The whole network configuration checked and normalised, or SettingError saying what is wrong."""
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        raise SettingError(f"{unknown[0]}: no such network setting (choose from {', '.join(DEFAULTS)})")
    out = {**DEFAULTS, **values}
    host = str(out["hostname"]).strip()
    if not _HOSTNAME_RE.match(host):
        raise SettingError(f"hostname: {host!r} must be 1 to 63 letters, digits or hyphens, not starting or "
                           "ending with a hyphen (no dots: the domain goes into `search`)")
    out["hostname"] = host
    names = _list(out["interface"])
    if not names or any(not _IFNAME_RE.match(n) for n in names):
        raise SettingError(f"interface: {out['interface']!r} must be interface names or patterns such as en* eth0")
    out["interface"] = " ".join(names)
    mode = str(out["mode"]).strip().lower()
    if mode not in ("dhcp", "static"):
        raise SettingError(f"mode: must be dhcp or static, not {out['mode']!r}")
    out["mode"] = mode
    dns = []
    for item in _list(out["dns"]):
        try:
            dns.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise SettingError(f"dns: {item!r} is not an IP address (DNS servers are given as addresses)") from None
    out["dns"] = dns
    address, gateway = str(out["address"]).strip(), str(out["gateway"]).strip()
    if mode == "static":
        if not address:
            raise SettingError("address: a static address is needed with mode=static, e.g. address=192.168.1.20/24")
        if "/" not in address:
            raise SettingError(f"address: {address!r} needs its prefix length, e.g. {address}/24")
        try:
            iface = ipaddress.ip_interface(address)
        except ValueError:
            raise SettingError(f"address: {address!r} is not an address with a prefix such as 192.168.1.20/24") from None
        net = iface.network
        if net.num_addresses > 2 and iface.ip in (net.network_address, net.broadcast_address) and iface.version == 4:
            raise SettingError(f"address: {iface.ip} is the {'network' if iface.ip == net.network_address else 'broadcast'}"
                               f" address of {net}, not a host address")
        if iface.ip.is_loopback or iface.ip.is_multicast or iface.ip.is_unspecified:
            raise SettingError(f"address: {iface.ip} cannot be the station's address")
        address = str(iface)
        if gateway:
            try:
                gw = ipaddress.ip_address(gateway)
            except ValueError:
                raise SettingError(f"gateway: {gateway!r} is not an IP address") from None
            if gw.version != iface.version or gw not in net:
                raise SettingError(f"gateway: {gw} is not inside the subnet {net} of address {address}")
            if gw == iface.ip:
                raise SettingError(f"gateway: {gw} is the station's own address")
            gateway = str(gw)
    elif address or gateway:
        raise SettingError("address/gateway: only with mode=static (DHCP gives them); set mode=static or clear them")
    out["address"], out["gateway"] = address, gateway
    search = str(out["search"]).strip()
    if search and any(not _DOMAIN_RE.match(d) for d in search.split()):
        raise SettingError(f"search: {search!r} must be domain names such as hospital.example")
    out["search"] = search
    ntp = _list(out["ntp"])
    for server in ntp:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            if not _DOMAIN_RE.match(server):
                raise SettingError(f"ntp: {server!r} is neither an IP address nor a host name") from None
    out["ntp"] = ntp
    out["timezone"] = _zone(out["timezone"])
    return out


def parse_assignments(items: list[str]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SettingError(f"{item!r}: expected key=value")
        key, value = item.split("=", 1)
        changes[key.strip()] = value
    return changes


# --------------------------------------------------------------------------- files


def render(values: dict[str, Any]) -> dict[str, str]:
    """Relative path under /etc → file content, for validated `values`."""
    lines = ["# written by burnstation (network set); changes here are overwritten", "[Match]",
             f"Name={values['interface']}", "", "[Network]"]
    if values["mode"] == "dhcp":
        lines.append("DHCP=yes")
    else:
        lines.append(f"Address={values['address']}")
        if values["gateway"]:
            lines.append(f"Gateway={values['gateway']}")
    for server in values["dns"]:
        lines.append(f"DNS={server}")
    if values["search"]:
        lines.append(f"Domains={values['search']}")
    time_lines = ["# written by burnstation (network set)", "[Time]"]
    time_lines.append(f"NTP={' '.join(values['ntp'])}" if values["ntp"] else "#NTP= (the distribution's servers)")
    return {NETWORK_FILE: "\n".join(lines) + "\n", TIMESYNC_FILE: "\n".join(time_lines) + "\n",
            "hostname": values["hostname"] + "\n", "timezone": values["timezone"] + "\n"}


def in_image() -> bool:
    """True inside the appliance image (its unit sets BURNSTATION_IMAGE=1, or the image has the marker)."""
    return os.environ.get("BURNSTATION_IMAGE") == "1" or IMAGE_MARKER.exists()


@dataclass
class Target:
    """Where the station writes the files, and whether the image's root unit applies them."""

    etc: Path
    apply: bool


def target(data_dir: Path) -> Target:
    return Target(Path(data_dir) / "system" / "etc", in_image())


def write_files(values: dict[str, Any], tgt: Target) -> list[Path]:
    written = []
    for rel, text in render(values).items():
        path = tgt.etc / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        # the data folder's copy: owner only like the rest (the root unit renders its own for /etc)
        atomicfile.write_text(path, text, mode=0o600)
        written.append(path)
    localtime = tgt.etc / "localtime"
    tmp = tgt.etc / ".localtime.burnstation"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(ZONEINFO / values["timezone"], tmp)
    os.replace(tmp, localtime)
    written.append(localtime)
    return written


def read_status(path: Path | None = None) -> dict[str, Any] | None:
    """The root unit's last outcome (None when it has not run since boot, or outside the image)."""
    try:
        status = json.loads((path or APPLY_STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def apply_summary(status: dict[str, Any] | None) -> str:
    """One line on what the image's apply unit did last (for `network show` and the web page)."""
    if not status:
        return "the apply unit has not run since boot (the image's defaults: DHCP)"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(status.get("time") or 0)))
    if status.get("errors"):
        return f"last apply {when}: " + "; ".join(str(e) for e in status["errors"])
    if status.get("values") is None:
        return f"last apply {when}: no settings made yet, the image's defaults (DHCP on every wired interface)"
    what = "rolled back to the previous settings" if status.get("rolled_back") else "applied"
    return f"last apply {when}: {what} ({', '.join(status.get('changed') or []) or 'nothing changed'})"


def confirm_refusal(host: str | None, pending: dict[str, Any] | None) -> str | None:
    """Why a web confirmation reached at `host` (the address the browser used) does not count, or None.

    A confirmation proves the new settings work, so it must come in on the new static address; a
    host name (which address it stands for is not known here), the box itself (loopback) and a
    change to DHCP (the new address is not known in advance) are taken.
    """
    if not pending or not host:
        return None
    try:
        used = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    new = pending.get("new") or {}
    if used.is_loopback or new.get("mode") != "static" or not new.get("address"):
        return None
    wanted = ipaddress.ip_interface(new["address"]).ip
    if used != wanted:
        return f"reached at {used}, not at the new address {wanted}: open this page at {wanted} to confirm"
    return None


# --------------------------------------------------------------------------- state, rollback


class Network:
    """The network settings of one data folder, their files, and a pending change's rollback."""

    def __init__(self, data_dir: str | os.PathLike[str], clock: Callable[[], float] = time.time,
                 tgt: Target | None = None, status_path: Path | None = None,
                 apply_wait: float = APPLY_WAIT_SECONDS) -> None:
        self.data_dir = Path(data_dir)
        self.dir = self.data_dir / "system"
        self.clock = clock
        self.target = tgt or target(self.data_dir)
        self.status_path = status_path or APPLY_STATUS
        self.apply_wait = apply_wait

    @property
    def settings_path(self) -> Path:
        return self.dir / "network.json"

    @property
    def pending_path(self) -> Path:
        return self.dir / "pending.json"

    def current(self) -> dict[str, Any]:
        try:
            stored = json.loads(self.settings_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            stored = {}
        return {**DEFAULTS, **stored}

    def pending(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.pending_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    @property
    def request_path(self) -> Path:
        return self.dir / REQUEST_FILE

    def _store(self, values: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomicfile.write_text(self.settings_path, json.dumps(values, indent=1, sort_keys=True), mode=0o600)
        write_files(values, self.target)

    def _request(self) -> str | None:
        """In the image: ask the root unit to apply network.json (and pending.json); returns the token."""
        if not self.target.apply:
            return None
        token = os.urandom(8).hex()
        atomicfile.write_text(self.request_path, token + "\n", mode=0o600)
        return token

    def _wait_applied(self, token: str | None) -> list[str]:
        """What the root unit could not do for request `token` (it answers in APPLY_STATUS)."""
        if token is None:
            return []
        deadline = time.monotonic() + self.apply_wait
        while time.monotonic() < deadline:
            status = read_status(self.status_path)
            if status and status.get("token") == token:
                return [str(e) for e in status.get("errors") or []]
            time.sleep(0.1)
        return [f"the apply unit (burnstation-network-apply) did not answer within {self.apply_wait:g} s; "
                f"see `journalctl -u burnstation-network-apply`"]

    def set(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate the whole result, write and apply it; a change of address arms the rollback."""
        self.check_rollback()
        before = self.current()
        after = validate({**before, **changes})
        address_change = any(after[k] != before[k] for k in ADDRESS_KEYS)
        pending = self.pending()
        self.dir.mkdir(parents=True, exist_ok=True)
        if address_change:
            previous = pending["previous"] if pending else before  # a second change still rolls back to the first
            deadline = self.clock() + ROLLBACK_SECONDS
            atomicfile.write_text(self.pending_path, json.dumps(
                {"previous": previous, "new": after, "deadline": deadline}, indent=1, sort_keys=True), mode=0o600)
        elif pending:
            pending["new"] = after
            atomicfile.write_text(self.pending_path, json.dumps(pending, indent=1, sort_keys=True), mode=0o600)
        self._store(after)
        failed = self._wait_applied(self._request())
        trail.record("network.set", after["hostname"], {"changes": changes, "rollback_armed": address_change,
                                                         "applied": self.target.apply, "failed": failed},
                     self.data_dir, actor="admin")
        return {"values": after, "rollback_at": self.pending()["deadline"] if self.pending() else None,
                "applied": self.target.apply, "failed": failed, "files": str(self.target.etc)}

    def confirm(self) -> bool:
        """Keep the pending change (False when none was pending)."""
        self.check_rollback()
        if self.pending() is None:
            return False
        self.pending_path.unlink()
        self._request()  # the root unit drops its rollback timer
        LOG.info("network change confirmed")
        trail.record("network.confirmed", self.current()["hostname"], {}, self.data_dir, actor="admin")
        return True

    def check_rollback(self) -> bool:
        """Put the previous settings back when a pending change's deadline passed; True when it did."""
        pending = self.pending()
        if pending is None or self.clock() < float(pending["deadline"]):
            return False
        LOG.warning("network change not confirmed within %d s: previous settings restored", ROLLBACK_SECONDS)
        self._store(validate(pending["previous"]))
        self.pending_path.unlink()
        self._request()  # not waited for: the burner calls this every pass
        trail.record("network.rolled_back", pending["previous"]["hostname"],
                     {"restored": pending["previous"], "unconfirmed": pending["new"]}, self.data_dir)
        return True

    def seconds_left(self) -> int | None:
        pending = self.pending()
        return None if pending is None else max(0, int(float(pending["deadline"]) - self.clock()))

    def show(self) -> dict[str, Any]:
        self.check_rollback()
        return {"values": self.current(), "pending_seconds": self.seconds_left(), "applied": self.target.apply,
                "files": str(self.target.etc), "apply_status": read_status(self.status_path) if self.target.apply else None}
