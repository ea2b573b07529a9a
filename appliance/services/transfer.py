"""The transfer process: every outgoing association of the station, within `dicom.max_connections`.

It runs queued transfers (retrieve, send, forwarding), answers the queries the CLI hands it via
state.db and feeds the forwarding rules from the index. Transfers left running by a stop or a
crash are queued again at start (a send resumes with what the peer has not acknowledged).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from pynetdicom import _config

from appliance.dicom import pnd_tuning
from appliance.services import stop_event
from appliance.transfer import jobs
from appliance.transfer.engine import Engine

LOG = logging.getLogger("burnstation.transfer")
POLL_SECONDS = 0.2


def serve(data_dir: str | os.PathLike[str], stop: threading.Event | None = None,
          ready: threading.Event | None = None) -> None:
    """Run the transfer engine until `stop` is set (or SIGTERM/SIGINT when run in the main thread)."""
    stop = stop_event(stop)
    pnd_tuning.install()  # the event-driven reactors (no 1 ms sleeps per message) for requestors too
    # C-STORE of a file whose stored syntax the peer accepted: its bytes as they are (scu.store_rows)
    _config.STORE_SEND_CHUNKED_DATASET = True
    engine = Engine(Path(data_dir))
    # pynetdicom's per-PDU logging handlers only with dicom.debug (they also keep 3c off)
    pnd_tuning.set_protocol_logging(bool(engine.settings.get("dicom.debug")))
    engine.recover()
    if ready is not None:
        ready.set()
    try:
        while not stop.is_set():
            try:
                engine.step()
            except Exception:
                LOG.exception("transfer pass failed")
            stop.wait(POLL_SECONDS)
    finally:
        engine.wait_idle(2.0)
        # what is still running resumes at the next start; say so now rather than "running"
        jobs.recover(engine.conn)
        engine.conn.close()
