"""`burnstation run`: the station in the foreground until SIGTERM or Ctrl-C.

Every service is a module `appliance.services.<name>` with
`serve(data_dir: Path, stop: threading.Event, ready: threading.Event | None) -> None`
that runs until `stop` is set. For now they run as threads of one process; the supervisor
(issue 5) runs each in its own process.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
from pathlib import Path

LOG = logging.getLogger("burnstation")

# the services `run` starts, in start order (stopped in reverse)
SERVICES = ["dicom"]


def run(data_dir: str | os.PathLike[str], simulate: bool = False, robots: str = "epson,primera") -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    workers: list[tuple[str, threading.Thread]] = []
    for name in SERVICES:
        module = importlib.import_module(f"appliance.services.{name}")
        ready = threading.Event()
        worker = threading.Thread(target=module.serve, args=(Path(data_dir), stop, ready), name=name, daemon=True)
        worker.start()
        ready.wait(30)
        workers.append((name, worker))
    LOG.info("BurnStation running (data: %s); Ctrl-C stops it", data_dir)
    code = 0
    while not stop.wait(0.5):
        dead = [name for name, worker in workers if not worker.is_alive()]
        if dead:
            LOG.error("service stopped: %s", ", ".join(dead))
            code = 1
            stop.set()
    for _name, worker in reversed(workers):
        worker.join(10)
    LOG.info("BurnStation stopped")
    return code
