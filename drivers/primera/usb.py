"""USB matchers for Primera Bravo robots, as data for discovery (udev).

Primera's USB vendor id is NOT confirmed (it is not in the public usb.ids list and the SDK does not
give it), so these matchers use udev's vendor and model strings only. Once the id of a real unit is
known, a technician adds it in `<data>/usb-matchers.json`, e.g.
`{"primera": [{"vendor_id": "0f25", "model": "Bravo"}]}` (that id is an example, not a fact).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drivers.common import usb_match, usb_matchers

VENDOR_ID = ""  # unconfirmed: see the module docstring

MATCHERS: list[dict[str, str]] = [
    {"vendor": "Primera"},
    {"model": "Bravo"},
    {"model": "Disc Publisher"},
]


def matchers(data_dir: Path | None = None) -> list[dict[str, Any]]:
    """The built-in matchers plus the technician's (each with "kind": "primera")."""
    return usb_matchers("primera", MATCHERS, data_dir)


def matches(device: dict[str, Any], data_dir: Path | None = None) -> bool:
    return any(usb_match(m, device) for m in matchers(data_dir))
