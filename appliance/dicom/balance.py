"""Spread incoming associations evenly over the dicom worker processes.

Why: with `dicom.workers` > 1 every worker binds the DICOM ports with SO_REUSEPORT, and the kernel
picks the worker for a new connection by a hash of its addresses and ports. Four senders on two
workers then land 3:1 or 4:0 half of the time, and the busiest worker (its association threads
sharing one interpreter lock) sets the pace of the whole burst. So a worker that accepts a
connection while another worker serves fewer associations hands the connected socket over: the
file descriptor goes over a Unix datagram socket (SCM_RIGHTS) to that worker, which serves it as if
it had accepted it (the TLS handshake, when there is one, happens there).

Each worker publishes how many connections it serves in a small shared file
(`<data>/run/dicom-load`, one count per worker, read and written under flock). A count may be a
moment old; the worst a stale count does is keep a connection where it landed. A worker that
cannot be reached (stopped, still starting) is passed over for the next, and when none can take it
the connection is served where it was accepted, so a hand-over never loses a connection.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOG = logging.getLogger("burnstation.dicom")

MAX_WORKERS = 64  # slots in the load file (dicom.workers is validated far below this)
_SLOT = struct.Struct("<i")
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def inbox_address(data_dir: str | os.PathLike[str], worker: int) -> str:
    """The abstract-namespace name of worker `worker`'s inbox (no file, so no path-length limit;
    the data folder's real path keeps two stations on one machine apart)."""
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:24]
    return f"\0burnstation-dicom-{digest}-{worker}"


class LoadTable:
    """`<data>/run/dicom-load`: how many connections each worker serves (slot K-1 for worker K)."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        run = Path(data_dir) / "run"
        run.mkdir(parents=True, exist_ok=True)
        self.path = run / "dicom-load"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @contextlib.contextmanager
    def _locked(self) -> Any:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def read(self, workers: int) -> list[int]:
        with self._locked():
            raw = os.pread(self._fd, _SLOT.size * workers, 0)
        raw = raw.ljust(_SLOT.size * workers, b"\0")
        return [_SLOT.unpack_from(raw, i * _SLOT.size)[0] for i in range(workers)]

    def set(self, worker: int, value: int) -> None:
        with self._locked():
            os.pwrite(self._fd, _SLOT.pack(value), (worker - 1) * _SLOT.size)

    def add(self, worker: int, delta: int) -> None:
        with self._locked():
            raw = os.pread(self._fd, _SLOT.size, (worker - 1) * _SLOT.size).ljust(_SLOT.size, b"\0")
            os.pwrite(self._fd, _SLOT.pack(_SLOT.unpack(raw)[0] + delta), (worker - 1) * _SLOT.size)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class Balancer:
    """One worker's side: hand accepted connections to a less busy worker, take those handed to it.

    `load()` is this worker's own exact count (connections it serves now); `serve(kind, sock,
    address)` serves a handed-in connection on the listener `kind` ("plain" / "tls") and says
    whether that listener is open; `workers()` is the current number of dicom workers.
    """

    def __init__(self, data_dir: str | os.PathLike[str], worker: int, workers: Callable[[], int],
                 load: Callable[[], int], serve: Callable[[str, socket.socket, Any], bool]) -> None:
        if not 1 <= worker <= MAX_WORKERS:
            raise ValueError(f"dicom worker {worker} is outside 1..{MAX_WORKERS}")
        self.data_dir = Path(data_dir)
        self.worker = worker
        self.workers = workers
        self.load = load
        self.serve = serve
        self.table = LoadTable(data_dir)
        self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._inbox: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- this worker's count

    def publish(self) -> None:
        """Write this worker's exact count into the shared table."""
        self.table.set(self.worker, self.load())

    # -- giving

    def hand_over(self, kind: str, sock: socket.socket, address: Any) -> bool:
        """Pass `sock` (just accepted, not yet counted here) to the least busy other worker if it
        serves fewer connections than this one does; True when it went (the caller then closes its
        own descriptor, which leaves the connection open)."""
        workers = min(self.workers(), MAX_WORKERS)
        if workers < 2:
            return False
        mine = self.load()
        loads = self.table.read(workers)
        candidates = sorted((count, k) for k, count in enumerate(loads, start=1) if k != self.worker and count < mine)
        message = json.dumps({"kind": kind, "address": list(address)}).encode()
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))]
        for _count, target in candidates:  # the least busy first; one that cannot take it: the next
            try:
                self._out.sendmsg([message], rights, socket.MSG_DONTWAIT, inbox_address(self.data_dir, target))
            except OSError as exc:  # not running, still starting, or its inbox queue full for a moment
                LOG.debug("could not hand a connection to dicom worker %d: %s", target, exc)
                continue
            self.table.add(target, 1)  # until the target publishes its own count
            return True
        return False

    # -- taking

    def start(self) -> None:
        """Zero this worker's count (a restart forgets what it served) and open its inbox."""
        self.table.set(self.worker, 0)
        inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        inbox.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        inbox.bind(inbox_address(self.data_dir, self.worker))
        inbox.settimeout(0.5)
        self._inbox = inbox
        self._stopping.clear()
        self._thread = threading.Thread(target=self._receive_loop, name=f"dicom-inbox-{self.worker}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the inbox: from now on every worker serves what it accepts itself."""
        self._stopping.set()
        if self._thread is not None:
            with contextlib.suppress(OSError):  # wake the receiving thread at once
                self._out.sendto(b"", socket.MSG_DONTWAIT, inbox_address(self.data_dir, self.worker))
            self._thread.join(2.0)
            self._thread = None
        if self._inbox is not None:
            self._drain(self._inbox)
            self._inbox.close()
            self._inbox = None
        self.table.set(self.worker, 0)

    def close(self) -> None:
        self.stop()
        self._out.close()
        self.table.close()

    def _receive_loop(self) -> None:
        inbox = self._inbox
        assert inbox is not None
        while not self._stopping.is_set():
            try:
                self._receive_one(inbox)
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                LOG.warning("dicom worker %d inbox: %s", self.worker, exc)
                time.sleep(0.1)

    def _receive_one(self, inbox: socket.socket) -> None:
        ancillary = socket.CMSG_SPACE(4 * 4) + socket.CMSG_SPACE(_CREDS.size)
        message, ancdata, _flags, _addr = inbox.recvmsg(4096, ancillary)
        fds: list[int] = []
        uid = None
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", data[:len(data) - len(data) % 4]))
            elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                _pid, uid, _gid = _CREDS.unpack(data[:_CREDS.size])
        if not message and not fds and self._stopping.is_set():
            return  # the wake-up of stop()
        if uid != os.getuid() or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            LOG.warning("dicom worker %d: dropped a hand-over message from uid %s with %d descriptors",
                        self.worker, uid, len(fds))
            return
        sock = socket.socket(fileno=fds[0])
        try:
            request = json.loads(message)
            kind, address = str(request["kind"]), tuple(request["address"])
        except (ValueError, KeyError, TypeError):
            sock.close()
            LOG.warning("dicom worker %d: dropped a malformed hand-over message", self.worker)
            return
        if not self.serve(kind, sock, address):
            sock.close()
            LOG.warning("dicom worker %d: a %s connection was handed over, but that listener is not open here",
                        self.worker, kind)

    def _drain(self, inbox: socket.socket) -> None:
        """Serve what is still queued (handed over just before the stop) instead of dropping it."""
        inbox.setblocking(False)
        while True:
            try:
                self._receive_one(inbox)
            except (BlockingIOError, OSError):
                return
