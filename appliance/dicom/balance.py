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
    """`<data>/run/dicom-load`: how many connections each worker serves (slot K-1 for worker K,
    written by worker K alone), and how many were handed to it and are not yet taken out of its
    inbox (slot MAX_WORKERS + K-1: the giver adds one, the taker removes it). A worker's load is
    the sum: a connection on its way is already the receiver's, and the receiver's own exact count,
    written meanwhile, does not hide it (a burst of four landed 3:1 that way)."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        run = Path(data_dir) / "run"
        run.mkdir(parents=True, exist_ok=True)
        self.path = run / "dicom-load"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @contextlib.contextmanager
    def locked(self) -> Any:
        """The table's lock, for several reads and writes as one step (pass locked=True to them)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _step(self, locked: bool) -> Any:
        return contextlib.nullcontext() if locked else self.locked()

    def _slots(self, offset: int, count: int) -> list[int]:
        raw = os.pread(self._fd, _SLOT.size * count, _SLOT.size * offset).ljust(_SLOT.size * count, b"\0")
        return [_SLOT.unpack_from(raw, i * _SLOT.size)[0] for i in range(count)]

    def read(self, workers: int, locked: bool = False) -> list[int]:
        """Each worker's load: connections served plus those on their way to it."""
        with self._step(locked):
            served = self._slots(0, workers)
            pending = self._slots(MAX_WORKERS, workers)
        return [a + max(b, 0) for a, b in zip(served, pending, strict=True)]

    def set(self, worker: int, value: int, locked: bool = False) -> None:
        """Worker `worker`'s own exact count of connections it serves."""
        with self._step(locked):
            os.pwrite(self._fd, _SLOT.pack(value), (worker - 1) * _SLOT.size)

    def add(self, worker: int, delta: int, locked: bool = False) -> None:
        """Connections on their way to `worker` (+1 by the giver, -1 by the taker)."""
        offset = (MAX_WORKERS + worker - 1) * _SLOT.size
        with self._step(locked):
            raw = os.pread(self._fd, _SLOT.size, offset).ljust(_SLOT.size, b"\0")
            os.pwrite(self._fd, _SLOT.pack(_SLOT.unpack(raw)[0] + delta), offset)

    def pending(self, worker: int, locked: bool = False) -> int:
        """Connections on their way to `worker`: handed to it, or kept by it and not yet counted."""
        with self._step(locked):
            return max(self._slots(MAX_WORKERS + worker - 1, 1)[0], 0)

    def reset(self, worker: int) -> None:
        """A (re)starting or stopping worker: nothing served, nothing on its way (its inbox is new or gone)."""
        with self.locked():
            os.pwrite(self._fd, _SLOT.pack(0), (worker - 1) * _SLOT.size)
            os.pwrite(self._fd, _SLOT.pack(0), (MAX_WORKERS + worker - 1) * _SLOT.size)

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
        self._kept = threading.local()  # .reserved: hand_over kept a connection, counted as on its way here

    # -- this worker's count

    def publish(self, taking: bool = False) -> None:
        """Write this worker's exact count into the shared table; `taking`: that count now holds a
        connection that was on its way here (kept by `hand_over`, or handed in), which stops being
        counted as on its way in the same step (else it counts twice for a moment, and a burst sent
        that moment elsewhere)."""
        with self.table.locked():
            self.table.set(self.worker, self.load(), locked=True)
            if taking:
                self.table.add(self.worker, -1, locked=True)

    def claim_kept(self) -> bool:
        """Whether `hand_over` just kept (in this thread) a connection counted as on its way here;
        the caller then counts it with publish(taking=True). Asked once."""
        reserved = getattr(self._kept, "reserved", False)
        self._kept.reserved = False
        return reserved

    # -- giving

    def hand_over(self, kind: str, sock: socket.socket, address: Any) -> bool:
        """Pass `sock` (just accepted, not yet counted here) to the least busy other worker if it
        serves fewer connections than this one does; True when it went (the caller then closes its
        own descriptor, which leaves the connection open). False: it stays, counted as on its way to
        this worker until the caller counts it (`claim_kept`, then publish(taking=True)).

        The choice and its count are made under the table's lock, so the workers decide one at a
        time, each seeing the choices before it: two workers accepting at the same moment used to
        read the same counts and both keep (a burst of four then landed 3:1)."""
        workers = min(self.workers(), MAX_WORKERS)
        if workers < 2:
            return False
        with self.table.locked():
            loads = self.table.read(workers, locked=True)
            mine = self.load() + self.table.pending(self.worker, locked=True)
            candidates = sorted((count, k) for k, count in enumerate(loads, start=1) if k != self.worker and count < mine)
            target = candidates[0][1] if candidates else self.worker
            self.table.add(target, 1, locked=True)  # on its way (before it can arrive), to the target or here
        if target == self.worker:
            self._kept.reserved = True
            return False
        message = json.dumps({"kind": kind, "address": list(address)}).encode()
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [sock.fileno()]))]
        try:
            self._out.sendmsg([message], rights, socket.MSG_DONTWAIT, inbox_address(self.data_dir, target))
        except OSError as exc:  # not running, still starting, or its inbox queue full: served here
            LOG.debug("could not hand a connection to dicom worker %d: %s", target, exc)
            with self.table.locked():
                self.table.add(target, -1, locked=True)
                self.table.add(self.worker, 1, locked=True)
            self._kept.reserved = True
            return False
        return True

    def taken(self) -> None:
        """A connection on its way here that will not be counted here (it could not be served)."""
        self.table.add(self.worker, -1)

    # -- taking

    def start(self) -> None:
        """Zero this worker's count (a restart forgets what it served) and open its inbox."""
        self.table.reset(self.worker)
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
        self.table.reset(self.worker)

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
        if not self.serve(kind, sock, address):  # served: counted here with publish(taking=True)
            self.taken()
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
