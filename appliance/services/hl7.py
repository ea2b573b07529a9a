"""The hl7 process: the MLLP listener for orders and the worklist's background work.

The listener runs on `hl7.port` on all interfaces (0 = no listener) and is rebound when the port
changes. Besides it, every `TICK` seconds: images that arrived mark their items done, finished
discs are reported, done items past their retention leave the worklist; a thread of its own sends
the queued status messages to the RIS (`hl7.destination_host/port`). This runs even with the port
closed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from appliance import db
from appliance.config import Settings
from appliance.hl7 import logfile, outbox
from appliance.hl7.mllp import MLLPServer
from appliance.services import stop_event
from appliance.worklist import items, link
from appliance.worklist.orders import OrderReceiver

LOG = logging.getLogger("burnstation.hl7")

TICK = 1.0


class HL7Service:
    """The listener and the periodic worklist work of one data directory."""

    def __init__(self, data_dir: Path, settings: Settings | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.settings = settings or Settings(data_dir)
        self.receiver = OrderReceiver(self.data_dir, self.settings)
        self.server: MLLPServer | None = None
        self.port: int | None = None
        self.conn = db.connect(self.data_dir)

    def start_listener(self) -> None:
        port = int(self.settings.get("hl7.port"))
        if port == self.port and (self.server is not None or port == 0):
            return
        self.stop_listener()
        if port == 0:
            self.port = port
            LOG.info("HL7 port is 0: no listener (the worklist still answers C-FIND)")
            return
        self.server = MLLPServer(("", port), self.receiver.on_frame)
        self.port = port
        self.server.start()
        LOG.info("HL7 MLLP listening on *:%d", port)

    def stop_listener(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def tick(self) -> None:
        """Link images and discs to items, purge old done items."""
        settings = self.settings
        try:
            link.link_images(self.conn, settings)
            link.link_discs(self.conn, settings)
            items.purge_done(self.conn, float(settings.get("worklist.done_retention_hours")))
        except Exception:
            LOG.exception("worklist maintenance failed")

    def deliver_loop(self, stop: threading.Event) -> None:
        """Send queued status messages to the RIS; its own thread, so a slow RIS delays nothing else."""
        conn = db.connect(self.data_dir)
        while not stop.wait(TICK):
            host, port = self.settings.get("hl7.destination_host"), int(self.settings.get("hl7.destination_port"))
            if not (host and port):
                continue
            try:
                outbox.deliver(conn, host, port, timeout=float(self.settings.get("dicom.timeout")))
            except Exception:
                LOG.exception("sending to the RIS failed")
        conn.close()


def serve(data_dir: str | os.PathLike[str], stop: threading.Event | None = None,
          ready: threading.Event | None = None) -> None:
    """Run the hl7 service until `stop` is set (or SIGTERM/SIGINT when run in the main thread)."""
    stop = stop_event(stop)
    log_handler = logfile.attach(data_dir)  # <data>/logs/hl7.log, read by the web UI's HL7 log page
    service = HL7Service(Path(data_dir))
    service.start_listener()
    sender = threading.Thread(target=service.deliver_loop, args=(stop,), name="hl7-outbox", daemon=True)
    sender.start()
    if ready is not None:
        ready.set()
    try:
        failed_at = 0.0
        while not stop.wait(TICK):
            # compare the port itself (another thread may already have reloaded the settings)
            if int(service.settings.get("hl7.port")) != service.port and time.monotonic() - failed_at > 30:
                try:
                    service.start_listener()
                except OSError:
                    failed_at = time.monotonic()
                    LOG.exception("could not open the HL7 port %s; trying again in 30 s",
                                  service.settings.get("hl7.port"))
            service.tick()
    finally:
        service.stop_listener()
        sender.join(2.5)  # well inside the supervisor's 5 s before SIGKILL (the outbox resumes at start)
        logfile.detach(log_handler)
