"""Device announcements: what discovery would learn from udev about a plugged-in robot, written as
`ROOT/devices/<name>.json` (atomically) while the simulated robot is plugged in."""

from __future__ import annotations

import json
from pathlib import Path

from . import files


def announce(root: Path, name: str, kind: str, engine: object, spool: Path) -> Path:
    path = root / "devices" / f"{name}.json"
    doc = {
        "name": name,
        "kind": kind,
        "vendor_id": engine.vendor_id,
        "product_id": engine.product_id,
        "vendor": engine.vendor,
        "model": engine.model,
        "serial": f"SIM-{kind.upper()}-{name}",
        "spool": str(spool),
    }
    files.write_atomic(path, (json.dumps(doc, indent=1) + "\n").encode())
    return path


def withdraw(root: Path, name: str) -> None:
    (root / "devices" / f"{name}.json").unlink(missing_ok=True)
