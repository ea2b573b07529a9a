"""Discovery: which robots and front-panel LCDs are plugged in right now.

A backend lists USB devices (`udev`: pyudev enumeration plus a monitor; `simulated`: the hardware
simulator's `ROOT/devices/*.json` announcements). `matchers` decides, from the drivers' declared
USB matchers (data, not code), which driver or the panel each device belongs to. `Discovery`
puts the two together for the supervisor: `poll()` says when the picture changed, `robots()` and
`lcd()` say what is there, `status()` says how discovery works here (or why it does not).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Protocol

from appliance.discovery.matchers import LCD_TARGET, Matcher, best_match, load_matchers

LOG = logging.getLogger("burnstation.discovery")


class Backend(Protocol):
    name: str

    def available(self) -> tuple[bool, str]: ...
    def scan(self) -> list[dict[str, Any]]: ...
    def poll(self) -> bool: ...
    def close(self) -> None: ...


_NAME_RE = re.compile(r"[^A-Za-z0-9_-]+")


def robot_name(driver: str, device: dict[str, Any]) -> str:
    """The robot name for a device: the announced name, else driver + serial (stable across replugs)."""
    if device.get("name"):
        name = _NAME_RE.sub("-", str(device["name"])).strip("-")
        if name:
            return name[:32]
    serial = re.sub(r"[^A-Za-z0-9]", "", str(device.get("serial") or ""))
    return f"{driver}-{serial[-8:]}" if serial else driver


def known_targets() -> set[str]:
    """Driver package names plus the panel."""
    import pkgutil

    import drivers

    return {info.name for info in pkgutil.iter_modules(drivers.__path__) if info.ispkg} | {LCD_TARGET}


class Discovery:
    """Matched devices from one backend, refreshed by `poll()`."""

    def __init__(self, backend: Backend, matchers: list[Matcher] | None = None,
                 data_dir: Path | None = None) -> None:
        self.backend = backend
        self.matchers = load_matchers(data_dir) if matchers is None else matchers
        self.ok, self.message = backend.available()
        self._robots: dict[str, dict[str, Any]] = {}
        self._lcd: dict[str, Any] | None = None
        if self.ok:
            LOG.info("discovery: %s", self.message)
            self.rescan()
        else:
            LOG.warning("discovery: %s", self.message)

    def rescan(self) -> None:
        robots: dict[str, dict[str, Any]] = {}
        lcd = None
        try:
            devices = self.backend.scan()
        except Exception as exc:  # a broken backend must not take the station down
            LOG.exception("discovery scan failed")
            self.ok, self.message = False, f"{self.backend.name} scan failed: {exc}"
            return
        for device in devices:
            target = best_match(device, self.matchers)
            if target is None and self.backend.name == "simulated" and device.get("kind") in known_targets():
                # the simulator says what it plays; its ids matching no driver is worth a warning
                target = str(device["kind"])
                LOG.warning("discovery: simulated %s (%s:%s) matches no USB matcher; using its kind %s",
                            device.get("name"), device.get("vendor_id"), device.get("product_id"), target)
            if target is None:
                continue
            if target == LCD_TARGET:
                if device.get("device") and lcd is None:
                    lcd = device
                continue
            name = robot_name(target, device)
            robots[name] = {**device, "driver": target, "name": name}
        for name in robots.keys() - self._robots.keys():
            LOG.info("discovery: robot %s plugged in (%s)", name, robots[name].get("model") or robots[name]["driver"])
        for name in self._robots.keys() - robots.keys():
            LOG.info("discovery: robot %s unplugged", name)
        if (lcd or {}).get("device") != (self._lcd or {}).get("device"):
            LOG.info("discovery: front-panel LCD %s", lcd["device"] if lcd else "gone")
        self._robots, self._lcd = robots, lcd

    def poll(self) -> bool:
        """Rescan when the backend saw an event; True when robots or the LCD changed."""
        if not self.ok:
            return False
        try:
            event = self.backend.poll()
        except Exception as exc:
            LOG.exception("discovery monitor failed")
            self.ok, self.message = False, f"{self.backend.name} monitor failed: {exc}"
            return False
        if not event:
            return False
        before = (dict(self._robots), self._lcd)
        self.rescan()
        return before != (self._robots, self._lcd)

    def robots(self) -> dict[str, dict[str, Any]]:
        return dict(self._robots)

    def lcd(self) -> str | None:
        return self._lcd.get("device") if self._lcd else None

    def status(self) -> dict[str, Any]:
        return {"backend": self.backend.name, "working": self.ok, "message": self.message,
                "robots": sorted(self._robots), "lcd": self.lcd()}

    def close(self) -> None:
        self.backend.close()


def make_discovery(data_dir: Path, simulate: bool, sim_root: Path | None = None) -> Discovery:
    """Simulated announcements in --simulate mode, udev otherwise."""
    if simulate:
        from appliance.discovery.simulated import SimulatedBackend

        return Discovery(SimulatedBackend(sim_root or data_dir / "sim"), data_dir=data_dir)
    from appliance.discovery.udev import UdevBackend

    return Discovery(UdevBackend(), data_dir=data_dir)
