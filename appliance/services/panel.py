"""The panel process: drives the front-panel LCD over its serial line (Matrix Orbital commands).

The device comes from the supervisor (found by its USB ids) or the `panel.device` setting; the
baud rate from `panel.baud`. The screen is refreshed every second (only changed pages are sent),
and the page advances every `panel.page_seconds`. If the line goes away the process keeps trying
to reopen it rather than dying, so an unplugged display does not mark the station failed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from appliance import db
from appliance.config import Settings
from appliance.panel import protocol, screen

LOG = logging.getLogger("burnstation.panel")
REFRESH_SECONDS = 1.0
REOPEN_SECONDS = 5.0


def _open(device: str, baud: int):  # noqa: ANN202 - a serial.Serial
    import serial

    port = serial.Serial(device, baudrate=baud, timeout=1, write_timeout=2)
    port.write(protocol.clear() + protocol.backlight(True))
    port.flush()
    return port


def serve(data_dir: str | os.PathLike[str], stop: threading.Event | None = None,
          ready: threading.Event | None = None, device: str | None = None) -> None:
    """Show the station's pages on the LCD until `stop` is set."""
    data_dir = Path(data_dir)
    stop = stop or threading.Event()
    settings = Settings(data_dir)
    port = None
    page = -1
    shown: bytes | None = None
    next_page = 0.0
    try:
        while not stop.is_set():
            dev = device or settings.get("panel.device")
            if port is None:
                try:
                    port = _open(dev, int(settings.get("panel.baud")))
                    LOG.info("front panel on %s", dev)
                    shown = None
                except Exception as exc:
                    LOG.warning("front panel %s not usable: %s; retrying", dev or "(no device)", exc)
                    if ready is not None:
                        ready.set()
                    stop.wait(REOPEN_SECONDS)
                    continue
            if ready is not None:
                ready.set()
            try:
                content = screen.pages(data_dir, settings)
            except sqlite3.Error as exc:  # state.db locked or damaged: say so on the panel and in the log
                LOG.warning("front panel: cannot read state.db: %s", exc)
                if db.is_damage(exc):
                    db.note_damage(data_dir, exc)  # the station restores it (appliance.dbguard)
                content = [[str(settings.get("dicom.aet")), "State: DB ERROR", str(exc)[:20], str(exc)[20:40]]]
            try:
                now = time.monotonic()
                if now >= next_page:
                    page += 1
                    next_page = now + float(settings.get("panel.page_seconds"))
                frame = protocol.frame(content[page % len(content)])
                if frame != shown:
                    port.write(frame)
                    port.flush()
                    shown = frame
            except Exception as exc:
                LOG.warning("front panel write failed: %s; reopening", exc)
                try:
                    port.close()
                except Exception:
                    pass
                port = None
                continue
            stop.wait(REFRESH_SECONDS)
    finally:
        if port is not None:
            try:
                port.write(protocol.clear() + protocol.text("BurnStation stopped"))
                port.flush()
                port.close()
            except Exception:
                pass
