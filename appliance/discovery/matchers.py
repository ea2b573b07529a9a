"""USB matchers as data: each driver (and the front panel) declares which devices are its own.

The one USB matcher of the station (discovery, the udev rules and the tests all use this one).
A driver package `drivers/<name>/usb.py` holds a list of dicts (Home Assistant's manifest style):
`{"vid": "04b8", "pid": "0007", "vendor": "*Epson*", "model": "*PP-100*"}` — every key optional,
ids exact as 4 hex digits (also spelled vendor_id/product_id), strings case-insensitive, `_` and
space alike, matched as substrings (or as shell patterns when they contain `*`/`?`/`[`). A device
matches when every key given matches; among matches the most specific one wins (ids count more than
strings, longer strings more than shorter), so a technician's narrow entry beats a broad one.
A technician adds matchers without a code change in `<data>/usb-matchers.json`
(`{"epson": [{"vendor_id": "04b8", "model": "PP-150"}]}`); a broken file is logged and ignored.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import logging
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG = logging.getLogger("burnstation.discovery")

LCD_TARGET = "lcd"
USB_MATCHERS_FILE = "usb-matchers.json"  # in the data folder: a technician's additions

# accepted spellings of each field (drivers' data may use udev or Home Assistant names)
_ALIASES = {
    "vid": ("vid", "vendor_id", "idVendor", "ID_VENDOR_ID"),
    "pid": ("pid", "product_id", "idProduct", "ID_MODEL_ID"),
    "vendor": ("vendor", "manufacturer", "ID_VENDOR"),
    "model": ("model", "description", "product", "ID_MODEL"),
}


def _field(doc: dict[str, Any], key: str) -> str:
    for alias in _ALIASES[key]:
        value = doc.get(alias)
        if value not in (None, ""):
            return str(value)
    return ""


def norm_id(value: Any) -> str:
    """'0x04B8', '04b8', 1208 → '04b8'."""
    if isinstance(value, int):
        return f"{value:04x}"
    text = str(value).strip().lower()
    text = text.removeprefix("0x")
    return text.zfill(4) if text else ""


@dataclass(frozen=True)
class Matcher:
    """One matcher entry of one target (a driver name, or "lcd")."""

    target: str
    vid: str = ""
    pid: str = ""
    vendor: str = ""
    model: str = ""

    @classmethod
    def from_doc(cls, target: str, doc: dict[str, Any]) -> Matcher:
        return cls(target, norm_id(_field(doc, "vid")), norm_id(_field(doc, "pid")),
                   _field(doc, "vendor"), _field(doc, "model"))

    def specificity(self) -> tuple[int, int]:
        return (4 * bool(self.vid) + 4 * bool(self.pid) + bool(self.vendor) + bool(self.model),
                len(self.vendor) + len(self.model))

    def matches(self, device: dict[str, Any]) -> bool:
        if self.specificity()[0] == 0:
            return False
        if self.vid and norm_id(_field(device, "vid")) != self.vid:
            return False
        if self.pid and norm_id(_field(device, "pid")) != self.pid:
            return False
        for key, pattern in (("vendor", self.vendor), ("model", self.model)):
            if pattern:
                value = _field(device, key).replace("_", " ").strip().lower()
                want = pattern.replace("_", " ").strip().lower()
                if not any(c in want for c in "*?["):
                    want = f"*{want}*"
                if not fnmatch.fnmatchcase(value, want):
                    return False
        return True

    def udev_match(self) -> dict[str, str]:
        """The ATTRS{} keys of a udev rule for this matcher (ids only; patterns stay in Python)."""
        out = {}
        if self.vid:
            out["idVendor"] = self.vid
        if self.pid:
            out["idProduct"] = self.pid
        return out


def best_match(device: dict[str, Any], matchers: list[Matcher]) -> str | None:
    """The target of the most specific matcher that matches `device`, or None."""
    found = [m for m in matchers if m.matches(device)]
    if not found:
        return None
    found.sort(key=lambda m: m.specificity(), reverse=True)
    return found[0].target


def _matcher_list(module: Any) -> list[dict[str, Any]]:
    for attr in ("USB_MATCHERS", "MATCHERS", "USB_IDS"):
        value = getattr(module, attr, None)
        if isinstance(value, list | tuple):
            return [dict(m) for m in value if isinstance(m, dict)]
    return []


def technician_matchers(data_dir: Path | None, targets: set[str]) -> list[Matcher]:
    """The matchers of `<data>/usb-matchers.json` for the given targets (driver names).

    A broken file is logged and ignored (discovery keeps the built-in matchers); an entry that is
    not an object, or sets no field, is skipped with a warning.
    """
    if data_dir is None:
        return []
    path = Path(data_dir) / USB_MATCHERS_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        LOG.warning("%s: ignored (%s)", path, exc)
        return []
    if not isinstance(doc, dict):
        LOG.warning("%s: ignored (not a JSON object of driver name → list of matchers)", path)
        return []
    out: list[Matcher] = []
    for target, entries in doc.items():
        if target not in targets or not isinstance(entries, list):
            LOG.warning("%s: %r ignored (drivers: %s; each a list of matchers)", path, target,
                        ", ".join(sorted(targets)))
            continue
        for entry in entries:
            matcher = Matcher.from_doc(target, entry) if isinstance(entry, dict) else None
            if matcher is None or matcher.specificity()[0] == 0:
                LOG.warning("%s: %s entry %r ignored (no vid, pid, vendor or model)", path, target, entry)
                continue
            out.append(matcher)
    return out


def driver_matchers(data_dir: Path | None = None) -> list[Matcher]:
    """Matchers from every `drivers/<name>/usb.py` (the driver name is the target), plus the
    technician's from `<data>/usb-matchers.json` when `data_dir` is given."""
    import drivers

    out: list[Matcher] = []
    names: set[str] = set()
    for info in pkgutil.iter_modules(drivers.__path__):
        if not info.ispkg:
            continue
        try:
            module = importlib.import_module(f"drivers.{info.name}.usb")
        except ModuleNotFoundError:
            continue
        except Exception:
            LOG.exception("drivers.%s.usb could not be loaded; its robots are not discovered", info.name)
            continue
        names.add(info.name)
        out.extend(Matcher.from_doc(info.name, doc) for doc in _matcher_list(module))
    return out + technician_matchers(data_dir, names)


def panel_matchers() -> list[Matcher]:
    from appliance.panel.usb import USB_MATCHERS

    return [Matcher.from_doc(LCD_TARGET, doc) for doc in USB_MATCHERS]


def load_matchers(data_dir: Path | None = None) -> list[Matcher]:
    return driver_matchers(data_dir) + panel_matchers()
