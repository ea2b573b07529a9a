"""Simulated discovery: the hardware simulator announces devices as `ROOT/devices/<name>.json`.

A file appearing is a plug-in, a file disappearing an unplug (see the simulator's interface in
interfaces.md). The folder is polled (a listdir and a few small reads, twice a second), so no
inotify is needed and the same code works on any filesystem.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

LOG = logging.getLogger("burnstation.discovery")


class SimulatedBackend:
    name = "simulated"

    def __init__(self, root: Path, interval: float = 0.5) -> None:
        self.root = Path(root)
        self.devices_dir = self.root / "devices"
        self.interval = interval
        self._last_check = 0.0
        self._seen: dict[str, float] = {}

    def available(self) -> tuple[bool, str]:
        return True, f"simulated devices announced in {self.devices_dir}"

    def _stamps(self) -> dict[str, float]:
        stamps = {}
        try:
            entries = list(self.devices_dir.glob("*.json"))
        except OSError:
            return {}
        for path in entries:
            try:
                stamps[path.name] = path.stat().st_mtime
            except FileNotFoundError:
                continue
        return stamps

    def scan(self) -> list[dict[str, Any]]:
        self._seen = self._stamps()
        devices = []
        for name in sorted(self._seen):
            path = self.devices_dir / name
            try:
                doc = json.loads(path.read_text())
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                LOG.warning("ignoring unreadable device announcement %s: %s", path, exc)
                continue
            if not isinstance(doc, dict):
                continue
            doc.setdefault("name", path.stem)
            doc["path"] = str(path)
            devices.append(doc)
        return devices

    def poll(self) -> bool:
        now = time.monotonic()
        if now - self._last_check < self.interval:
            return False
        self._last_check = now
        return self._stamps() != self._seen

    def close(self) -> None:
        pass
