"""USB matchers for Epson Discproducer robots, as data for discovery (udev).

Epson's USB vendor id 04b8 is public (usb.ids); the Discproducer product ids are not, so a matcher
is the vendor id plus a model substring of udev's ID_MODEL. A technician adds models without a
code change in `<data>/usb-matchers.json`, e.g. `{"epson": [{"vendor_id": "04b8", "model": "PP-150"}]}`.
How matchers match: `appliance/discovery/matchers.py` (the one USB matcher).
"""

from __future__ import annotations

VENDOR_ID = "04b8"  # Seiko Epson Corp.

MATCHERS: list[dict[str, str]] = [
    {"vendor_id": VENDOR_ID, "model": "PP-100II"},
    {"vendor_id": VENDOR_ID, "model": "PP-100N"},
    {"vendor_id": VENDOR_ID, "model": "PP-100"},
    {"vendor_id": VENDOR_ID, "model": "PP-50"},
    {"vendor_id": VENDOR_ID, "model": "Discproducer"},
]
