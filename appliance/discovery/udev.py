"""udev discovery: pyudev enumeration at start and a monitor for add/remove of USB devices.

Robots are matched on the USB device itself (`subsystem=usb, DEVTYPE=usb_device`); a serial LCD
on the tty it creates (`subsystem=tty` with `ID_BUS=usb`), whose stable name is the
`/dev/serial/by-id/...` link udev makes for it. Any event triggers a full rescan (as Home
Assistant does): simple and never out of step. Without a udev daemon (containers, CI) there is no
event stream and no device database, so discovery switches itself off and says so.
"""

from __future__ import annotations

import logging
import os
from typing import Any

LOG = logging.getLogger("burnstation.discovery")

UDEV_CONTROL = "/run/udev/control"


def _stable_path(device: Any) -> str:
    links = str(device.properties.get("DEVLINKS", "")).split()
    for prefix in ("/dev/serial/by-id/", "/dev/serial/by-path/"):
        for link in links:
            if link.startswith(prefix):
                return link
    return device.device_node or ""


def _attr(device: Any, name: str) -> str:
    try:
        value = device.attributes.get(name)
    except Exception:
        return ""
    if value is None:
        return ""
    return value.decode(errors="replace").strip() if isinstance(value, bytes) else str(value).strip()


def describe(device: Any) -> dict[str, Any]:
    """The fields matchers look at, from a pyudev Device (USB device or its tty)."""
    props = device.properties
    return {
        "vendor_id": props.get("ID_VENDOR_ID") or _attr(device, "idVendor"),
        "product_id": props.get("ID_MODEL_ID") or _attr(device, "idProduct"),
        "vendor": props.get("ID_VENDOR_FROM_DATABASE") or props.get("ID_VENDOR") or _attr(device, "manufacturer"),
        "model": props.get("ID_MODEL_FROM_DATABASE") or props.get("ID_MODEL") or _attr(device, "product"),
        "serial": props.get("ID_SERIAL_SHORT") or _attr(device, "serial"),
        "id_path": props.get("ID_PATH", ""),
        "sys_path": device.sys_path,
        "device": _stable_path(device) if device.subsystem == "tty" else "",
        "subsystem": device.subsystem,
    }


class UdevBackend:
    name = "udev"

    def __init__(self) -> None:
        self._context: Any = None
        self._monitor: Any = None

    def available(self) -> tuple[bool, str]:
        if not os.path.exists(UDEV_CONTROL):
            return False, (f"no udev daemon here ({UDEV_CONTROL} missing): USB robots and LCDs are not "
                           "discovered; configure robots by hand (burnstation robots add) and panel.device")
        try:
            import pyudev

            self._context = pyudev.Context()
            self._monitor = pyudev.Monitor.from_netlink(self._context)
            self._monitor.filter_by("usb")
            self._monitor.filter_by("tty")
            self._monitor.start()
        except Exception as exc:
            self._context = self._monitor = None
            return False, f"udev is not usable here ({exc}); USB discovery is off"
        return True, "watching udev for USB robots and LCDs"

    def scan(self) -> list[dict[str, Any]]:
        if self._context is None:
            return []
        devices = [describe(d) for d in self._context.list_devices(subsystem="usb", DEVTYPE="usb_device")]
        devices += [describe(d) for d in self._context.list_devices(subsystem="tty", ID_BUS="usb")]
        return devices

    def poll(self) -> bool:
        if self._monitor is None:
            return False
        seen = False
        while True:
            device = self._monitor.poll(timeout=0)
            if device is None:
                return seen
            LOG.debug("udev %s %s", device.action, device.sys_path)
            seen = True

    def close(self) -> None:
        self._monitor = None
