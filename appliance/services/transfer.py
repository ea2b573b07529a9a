"""The transfer process: every outgoing association of the station, within `dicom.max_connections`.

It runs queued transfers (retrieve, send, forwarding), answers the queries the CLI hands it via
state.db and feeds the forwarding rules from the index. Transfers left running by a stop or a
crash are queued again at start (a send resumes with what the peer has not acknowledged).
Queued work wakes it at once (transfer/wake.py); it also polls every POLL_SECONDS.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from appliance.services import stop_event
from appliance.transfer import jobs, wake
from appliance.transfer.loop import Engine

LOG = logging.getLogger("burnstation.transfer")
POLL_SECONDS = 0.2


def _relay_wakeups(data_dir: Path, stop: threading.Event, kick: threading.Event) -> None:
    """`kick` the loop when work is queued (wake.notify) and when `stop` is set; without the FIFO the
    loop still polls every POLL_SECONDS."""
    threading.Thread(target=lambda: (stop.wait(), kick.set()), name="transfer-stop", daemon=True).start()
    try:
        listener = wake.Listener(data_dir)
    except OSError as exc:
        LOG.warning("no wake-up FIFO (%s): queued transfers start within %gs", exc, POLL_SECONDS)
        return

    def relay() -> None:
        try:
            while not stop.is_set():
                if listener.wait(1.0):
                    kick.set()
        finally:
            listener.close()

    threading.Thread(target=relay, name="transfer-wake", daemon=True).start()


def serve(data_dir: str | os.PathLike[str], stop: threading.Event | None = None,
          ready: threading.Event | None = None) -> None:
    """Run the transfer engine until `stop` is set (or SIGTERM/SIGINT when run in the main thread)."""
    stop = stop_event(stop)
    engine = Engine(Path(data_dir))  # pynetdicom is set up when the first transfer or query runs
    engine.recover()
    _relay_wakeups(Path(data_dir), stop, engine.kick)
    if ready is not None:
        ready.set()
    try:
        while not stop.is_set():
            engine.kick.clear()  # before the pass: work queued during it is seen by the next one
            try:
                engine.step()
            except Exception:
                LOG.exception("transfer pass failed")
            engine.kick.wait(POLL_SECONDS)
    finally:
        engine.wait_idle(2.0)
        # what is still running resumes at the next start; say so now rather than "running"
        jobs.recover(engine.conn)
        engine.conn.close()
