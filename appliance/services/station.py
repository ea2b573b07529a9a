"""`burnstation run`: the station in the foreground until SIGTERM or Ctrl-C.

For now the services run as threads of one process; the supervisor (issue 5) replaces this
with one process per service.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from appliance.services import dicom

LOG = logging.getLogger("burnstation")


def run(data_dir: str | os.PathLike[str], simulate: bool = False, robots: str = "epson,primera") -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ready = threading.Event()
    worker = threading.Thread(target=dicom.serve, args=(Path(data_dir), stop, ready), name="dicom", daemon=True)
    worker.start()
    ready.wait(30)
    LOG.info("BurnStation running (data: %s); Ctrl-C stops it", data_dir)
    while not stop.wait(0.5):
        if not worker.is_alive():
            LOG.error("the DICOM service stopped")
            return 1
    worker.join(10)
    LOG.info("BurnStation stopped")
    return 0
