"""The dicom process: runs the SCP until SIGTERM, applying settings changes as they come."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from appliance.config import Settings
from appliance.dicom.server import DicomServer

LOG = logging.getLogger("burnstation.dicom")


def serve(data_dir: str | os.PathLike[str], stop: threading.Event | None = None,
          ready: threading.Event | None = None) -> None:
    """Run the DICOM service until `stop` is set (or SIGTERM/SIGINT when run in the main thread)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    settings = Settings(data_dir)
    server = DicomServer(Path(data_dir), settings)
    server.ctx.store.remove_stale_temp_files()
    server.start()
    if ready is not None:
        ready.set()
    # A Settings of its own for the watch: `changed()` compares with the last read, and the
    # handler threads read `settings` all the time, which would swallow the change.
    watcher = Settings(data_dir)
    watcher.all()
    try:
        while not stop.wait(1.0):
            if watcher.changed():
                watcher.all()
                try:
                    if server.reload():
                        LOG.info("DICOM listeners rebound after a settings change")
                except Exception:
                    LOG.exception("could not apply the new DICOM settings")
    finally:
        server.stop()
