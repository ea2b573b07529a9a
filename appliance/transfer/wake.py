"""Waking the transfer process when work is queued, instead of leaving it to its next poll.

Why: a send of 1000 small instances to a storage SCP on loopback takes a few tenths of a second;
up to `POLL_SECONDS` (0.2 s) before the transfer process noticed it, and again before the next
queued transfer started, was a large share of that (dcmtk's storescu starts at once). The
transfer process reads a FIFO, `<data>/run/transfer.wake`; whoever queues work (CLI, web, a
retry) writes one byte to it. Writing never blocks and never fails the caller: no FIFO, no
reader (the process is not running), a full pipe or no permission leave the work to the poll,
which stays as it was.
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
from pathlib import Path

_OPEN_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW


def fifo_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "run" / "transfer.wake"


def notify(data_dir: str | os.PathLike[str] | None) -> None:
    """Tell the transfer process there is work (a no-op when it does not listen)."""
    if not data_dir:
        return
    try:
        fd = os.open(fifo_path(data_dir), os.O_WRONLY | _OPEN_FLAGS)  # ENXIO: nobody reads it
    except OSError:
        return
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, b"\0")
    except OSError:  # EAGAIN: a full pipe, so a wake-up is pending anyway
        pass
    finally:
        os.close(fd)


class Listener:
    """The transfer process's end of the FIFO (made, or made again if something else is there)."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        path = fifo_path(data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISFIFO(os.lstat(path).st_mode):
                path.unlink()
        with contextlib.suppress(FileExistsError):
            os.mkfifo(path, 0o600)
        # read and write: the FIFO always has a writer, so an empty one never reads as end of file
        self.fd = os.open(path, os.O_RDWR | _OPEN_FLAGS)
        if not stat.S_ISFIFO(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise OSError(f"{path} is not a FIFO")

    def wait(self, timeout: float) -> bool:
        """Block until someone called `notify` (True; every pending byte is consumed) or `timeout`."""
        readable, _, _ = select.select([self.fd], [], [], timeout)
        if not readable:
            return False
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 4096):
                pass
        return True

    def close(self) -> None:
        os.close(self.fd)
