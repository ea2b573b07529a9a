"""USB matchers for Primera Bravo robots, as data for discovery (udev).

Primera's USB vendor id is NOT confirmed (it is not in the public usb.ids list and the SDK does not
give it), so these matchers use udev's vendor and model strings only. Once the id of a real unit is
known, a technician adds it in `<data>/usb-matchers.json`, e.g.
`{"primera": [{"vendor_id": "0f25", "model": "Bravo"}]}` (that id is an example, not a fact).
How matchers match: `appliance/discovery/matchers.py` (the one USB matcher).
"""

from __future__ import annotations

VENDOR_ID = ""  # unconfirmed: see the module docstring

MATCHERS: list[dict[str, str]] = [
    {"vendor": "Primera"},
    {"model": "Bravo"},
    {"model": "Disc Publisher"},
]
