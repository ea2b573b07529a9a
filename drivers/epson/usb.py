"""USB matchers for Epson Discproducer robots, as data for discovery (udev).

Epson's USB vendor id 04b8 is public (usb.ids); the Discproducer product ids are not, so a matcher
is the vendor id plus a model substring of udev's ID_MODEL. A technician adds models without a
code change in `<data>/usb-matchers.json`, e.g. `{"epson": [{"vendor_id": "04b8", "model": "PP-150"}]}`
(fields: vendor_id, product_id — exact hex; vendor, model — case-insensitive substrings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drivers.common import usb_match, usb_matchers

VENDOR_ID = "04b8"  # Seiko Epson Corp.

MATCHERS: list[dict[str, str]] = [
    {"vendor_id": VENDOR_ID, "model": "PP-100II"},
    {"vendor_id": VENDOR_ID, "model": "PP-100N"},
    {"vendor_id": VENDOR_ID, "model": "PP-100"},
    {"vendor_id": VENDOR_ID, "model": "PP-50"},
    {"vendor_id": VENDOR_ID, "model": "Discproducer"},
]


def matchers(data_dir: Path | None = None) -> list[dict[str, Any]]:
    """The built-in matchers plus the technician's (each with "kind": "epson")."""
    return usb_matchers("epson", MATCHERS, data_dir)


def matches(device: dict[str, Any], data_dir: Path | None = None) -> bool:
    return any(usb_match(m, device) for m in matchers(data_dir))
