"""`burnstation service NAME`: one station service in its own process, as the supervisor runs it.

It dies with the supervisor (PR_SET_PDEATHSIG), stops on SIGTERM/SIGINT, and tells the supervisor
when it is ready through the pipe named by BURNSTATION_READY_FD.

Test hook: `BURNSTATION_CRASH_SERVICE=burner` (comma list; names like `dicom`, `driver`,
`driver:primera`) makes that service exit with status 3 right at start, every time, so tests can
watch the supervisor give up on it ("failed") while the rest keeps working.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from appliance.supervisor.process import READY_FD_ENV

LOG = logging.getLogger("burnstation.service")

CRASH_ENV = "BURNSTATION_CRASH_SERVICE"
CRASH_STATUS = 3
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    parent = os.environ.get("BURNSTATION_SUPERVISOR_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != parent:  # the supervisor died before we asked
        raise SystemExit(1)


def crash_requested(name: str, robot: str | None = None) -> bool:
    wanted = {item.strip() for item in os.environ.get(CRASH_ENV, "").split(",") if item.strip()}
    full = f"{name}:{robot}" if robot else name
    return bool(wanted & {name, full})


def _announce_ready(ready: threading.Event, stop: threading.Event) -> None:
    fd_text = os.environ.pop(READY_FD_ENV, "")
    if not fd_text.isdigit():
        return
    fd = int(fd_text)

    def wait() -> None:
        while not stop.is_set():
            if ready.wait(0.5):
                with contextlib.suppress(OSError):
                    os.write(fd, b"ready\n")
                break
        with contextlib.suppress(OSError):
            os.close(fd)

    threading.Thread(target=wait, name="ready-notify", daemon=True).start()


def run_service(data_dir: Path, name: str, robot: str | None = None, device: str | None = None,
                worker: int = 1) -> int:
    _die_with_parent()
    if crash_requested(name, robot):
        print(f"burnstation service {name}{':' + robot if robot else ''}: crashing at start on purpose "
              f"({CRASH_ENV} test hook)", file=sys.stderr, flush=True)
        return CRASH_STATUS
    stop = threading.Event()
    ready = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    _announce_ready(ready, stop)
    try:
        return _serve(data_dir, name, stop, ready, robot, device, worker)
    finally:
        # a second SIGTERM during interpreter shutdown must not turn a clean exit into a kill
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)


def _serve(data_dir: Path, name: str, stop: threading.Event, ready: threading.Event, robot: str | None,
           device: str | None, worker: int = 1) -> int:
    if name == "driver":
        if not robot:
            print("burnstation service driver: --robot NAME is required", file=sys.stderr)
            return 2
        module = importlib.import_module("appliance.services.driver")
        module.serve_robot(data_dir, stop, ready, robot)
        return 0
    try:
        module = importlib.import_module(f"appliance.services.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"appliance.services.{name}":
            print(f"burnstation service: no service named {name!r}", file=sys.stderr)
            return 2
        raise
    if name == "panel" and device:
        module.serve(data_dir, stop, ready, device=device)
    elif name == "dicom" and worker != 1:
        module.serve(data_dir, stop, ready, worker=worker)
    else:
        module.serve(data_dir, stop, ready)
    return 0
