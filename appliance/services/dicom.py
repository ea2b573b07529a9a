"""The dicom process: runs the SCP until SIGTERM, applying settings changes as they come."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from appliance import index
from appliance.config import Settings
from appliance.dicom.server import DicomServer
from appliance.services import stop_event

LOG = logging.getLogger("burnstation.dicom")


def serve(data_dir: str | os.PathLike[str], stop: threading.Event | None = None,
          ready: threading.Event | None = None, worker: int = 1) -> None:
    """Run the DICOM service until `stop` is set (or SIGTERM/SIGINT when run in the main thread).

    `worker`: which of the `dicom.workers` processes this is (the supervisor runs `dicom` as
    worker 1 and `dicom:K` as worker K; they share the ports, each association is one worker's).
    """
    stop = stop_event(stop)
    settings = Settings(data_dir)
    server = DicomServer(Path(data_dir), settings, worker)
    server.ctx.store.remove_stale_temp_files()
    since = index.interrupted_since(server.ctx.conn(), worker, settings.dicom_workers())
    interrupted = index.close_interrupted_associations(server.ctx.conn(), worker, settings.dicom_workers())
    if interrupted:
        LOG.warning("%d association(s) were interrupted by the last stop", interrupted)
    # A Settings of its own for the watch: `changed()` compares with the last read, and the
    # handler threads read `settings` all the time, which would swallow the change. Read BEFORE the
    # listeners are opened: a change made while they open (a test that configures as soon as the
    # port answers, a second worker still starting) is then seen and applied, not taken as the base.
    watcher = Settings(data_dir)
    watcher.all()
    retry = False  # a listener could not be opened (port taken, bad certificate): try again
    try:
        server.start()
    except OSError as exc:
        LOG.error("%s (retrying every second)", exc)
        retry = True
    if ready is not None:
        ready.set()
    if since is not None:  # files it wrote whose commit never ran: found while the listeners already serve
        index.start_removing_unacknowledged(Path(data_dir), server.ctx.store, since)
    try:
        while not stop.wait(1.0):
            server.publish_load()  # a missed update of the shared connection count heals here
            if watcher.changed() or retry:
                watcher.all()
                try:
                    if server.reload(force=retry):
                        LOG.info("DICOM listeners (re)opened after a settings change")
                    retry = False
                except Exception as exc:
                    if not retry:
                        LOG.error("could not apply the DICOM settings (retrying every second): %s", exc)
                    retry = True
    finally:
        server.stop()
