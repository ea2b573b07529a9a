"""The station-wide cap on outgoing associations (`dicom.max_connections`), across processes.

Why: the `transfer` process opens the station's own outgoing associations, but the `dicom`
process's C-MOVE SCP opens sub-associations to move destinations too (and may run as several
worker processes). Both take a slot here before they connect: slot i is an exclusive `flock` on
`<data>/run/outgoing/slot-i.lock`, for i below the limit read at every acquire (a change applies
to the next association). A flock belongs to its open file, so threads of one process exclude
each other too, and a process that dies (even by SIGKILL) lets go of its slots with its files.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

POLL_SECONDS = 0.02  # how often a waiter tries the lock files again


def slot_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "run" / "outgoing"


class Slot:
    """One held slot; `release()` (or the end of the process) frees it."""

    def __init__(self, fd: int, index: int, on_release: Callable[[], None]) -> None:
        self.fd = fd
        self.index = index
        self._on_release = on_release

    def release(self) -> None:
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            self._on_release()

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class OutgoingSlots:
    """Take and give back slots of the cap; `limit` says how many there are right now."""

    def __init__(self, data_dir: str | os.PathLike[str], limit: Callable[[], int]) -> None:
        self.folder = slot_dir(data_dir)
        self.limit = limit
        self.lock = threading.Lock()
        self.used = 0  # held by this process (for tests and status)
        self.peak = 0

    def _released(self) -> None:
        with self.lock:
            self.used -= 1

    def try_acquire(self) -> Slot | None:
        """A free slot at once, or None when all `limit()` slots are held (by any process)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for index in range(max(0, int(self.limit()))):
            fd = os.open(self.folder / f"slot-{index}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            with self.lock:
                self.used += 1
                self.peak = max(self.peak, self.used)
            return Slot(fd, index, self._released)
        return None

    def acquire(self, timeout: float) -> Slot | None:
        """A slot, waiting at most `timeout` seconds for one; None when none came free in time."""
        deadline = time.monotonic() + timeout
        while True:
            slot = self.try_acquire()
            if slot is not None:
                return slot
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(POLL_SECONDS, left))


class Busy(RuntimeError):
    """Every outgoing slot stayed held for the whole wait; the message says how long."""


def take(data_dir: str | os.PathLike[str], limit: int, timeout: float) -> Slot:
    """One slot (use it as `with take(...):`), else Busy after waiting `timeout` seconds."""
    slot = OutgoingSlots(data_dir, lambda: limit).acquire(timeout)
    if slot is None:
        raise Busy(f"all {limit} outgoing connections (dicom.max_connections) stayed busy for "
                   f"dicom.timeout={timeout:g}s")
    return slot
