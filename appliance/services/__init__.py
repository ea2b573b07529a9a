"""The station's long-running services (one per supervised process)."""

from __future__ import annotations

import signal
import threading


def stop_event(stop: threading.Event | None) -> threading.Event:
    """The event a service's `serve` runs until: `stop`, or a new one; when the service runs in the
    main thread (its own process), SIGTERM and SIGINT set it so the service can close down cleanly."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    return stop
