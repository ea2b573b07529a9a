"""USB ids of serial character LCDs that speak the Matrix Orbital command set (data, extendable).

Matrix Orbital's own vendor id 1b3d (FTDI-based, product ids 0100-01ff) and the FTDI product ids
fa00-fa06 that older Matrix Orbital USB displays carry (both from Linux's ftdi_sio_ids.h).
"""

from __future__ import annotations

USB_MATCHERS: list[dict[str, str]] = [
    {"vid": "1b3d"},
    *({"vid": "0403", "pid": f"fa0{n}"} for n in range(7)),
    {"vid": "0403", "model": "*LCD*"},
]
