"""One supervised child process: spawn, notice its exit, restart with backoff, stop it in order.

The timing rules follow supervisord: a child is RUNNING once it has lived `startsecs`; dying
before that is a failed start, retried with a growing delay until `startretries` is used up,
then the child is FATAL ("failed") and left alone. A child that dies after running restarts
after a delay that doubles with each crash in a row (reset after `stable_secs` of life).
The clock and the spawner are injectable so tests drive the rules without real processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.supervisor.states import ProcessState, check_transition

LOG = logging.getLogger("burnstation.supervisor")

READY_FD_ENV = "BURNSTATION_READY_FD"


@dataclass
class ProcessConfig:
    """What to run and the timing rules for it."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    startsecs: float = 3.0        # alive this long = started
    startretries: int = 3         # failed starts allowed before FATAL
    stopwaitsecs: float = 5.0     # SIGTERM, then SIGKILL after this long
    backoff_base: float = 0.5     # first restart delay after a crash
    backoff_max: float = 30.0
    stable_secs: float = 60.0     # alive this long = the crash streak is over
    order: int = 0                # start order; stopped in reverse
    notify_ready: bool = True     # the child reports readiness on the pipe; else RUNNING = ready
    meta: dict[str, Any] = field(default_factory=dict)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class Process:
    """A child under supervision; all methods are called from the supervisor's loop."""

    def __init__(self, config: ProcessConfig, *, clock: Callable[[], float] = time.monotonic,
                 spawner: Callable[..., Any] = subprocess.Popen) -> None:
        self.config = config
        self.clock = clock
        self.spawner = spawner
        self.state = ProcessState.STOPPED
        self.popen: Any = None
        self.pid: int | None = None
        self.starts = 0
        self.failed_starts = 0      # failed starts in a row (reset once RUNNING)
        self.crash_streak = 0       # crashes after running, in a row
        self.last_exit: str | None = None
        self.since = time.time()    # wall clock of the last state change, for people
        self.started_at = 0.0       # monotonic, of the last spawn
        self.delay_until = 0.0      # BACKOFF: next try
        self.kill_at = 0.0          # STOPPING: SIGKILL deadline
        self.ready = False
        self.message = ""
        self.wanted = True          # False once asked to stop for good
        self._ready_fd: int | None = None

    @property
    def name(self) -> str:
        return self.config.name

    # -- state

    def _set(self, new: ProcessState, message: str | None = None) -> None:
        check_transition(self.state, new)
        if new is not self.state:
            LOG.info("%s: %s -> %s%s", self.name, self.state, new, f" ({message})" if message else "")
        self.state = new
        self.since = time.time()
        if message is not None:
            self.message = message

    def alive(self) -> bool:
        return self.popen is not None

    # -- actions

    def spawn(self) -> None:
        """Start the child (STOPPED/BACKOFF/FATAL -> STARTING)."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        env = dict(os.environ if self.config.env is None else self.config.env)
        env[READY_FD_ENV] = str(write_fd)
        try:
            self.popen = self.spawner(self.config.argv, env=env, pass_fds=(write_fd,), close_fds=True)
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            self.popen = None
            self.starts += 1
            self._failed_start(self.clock(), f"could not start: {exc}")
            return
        os.close(write_fd)
        self._close_ready()
        self._ready_fd = read_fd
        self.pid = self.popen.pid
        self.starts += 1
        self.started_at = self.clock()
        self.ready = False
        self._set(ProcessState.STARTING, f"pid {self.pid}")

    def stop(self) -> None:
        """Ask the child to go (SIGTERM); `tick` sends SIGKILL after `stopwaitsecs`."""
        self.wanted = False
        if self.state in (ProcessState.STARTING, ProcessState.RUNNING) and self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            self.kill_at = self.clock() + self.config.stopwaitsecs
            self._set(ProcessState.STOPPING, "SIGTERM sent")
        elif self.state in (ProcessState.BACKOFF, ProcessState.EXITED, ProcessState.FATAL):
            self._set(ProcessState.STOPPED, "stopped")

    def reset(self) -> None:
        """Forget failures so a FATAL process may be started again (an operator's retry)."""
        self.failed_starts = 0
        self.crash_streak = 0
        self.wanted = True

    # -- the loop's view

    def poll(self) -> bool:
        """Notice readiness and exit of the child; True when something changed."""
        changed = self._read_ready()
        if self.popen is None:
            return changed
        code = self.popen.poll()
        if code is None:
            return changed
        self._exited(code)
        return True

    def tick(self) -> bool:
        """Time-driven moves; True when something changed."""
        now = self.clock()
        if self.state is ProcessState.STARTING and now - self.started_at >= self.config.startsecs:
            self.failed_starts = 0
            if not self.config.notify_ready:
                self.ready = True
            self._set(ProcessState.RUNNING, f"pid {self.pid}")
            return True
        if self.state is ProcessState.BACKOFF and self.wanted and now >= self.delay_until:
            self.spawn()
            return True
        if self.state is ProcessState.STOPPING and now >= self.kill_at and self.popen is not None:
            LOG.warning("%s: did not stop within %.0f s; SIGKILL", self.name, self.config.stopwaitsecs)
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.kill_at = now + 3600
            return True
        return False

    # -- internals

    def _read_ready(self) -> bool:
        if self._ready_fd is None or self.ready:
            return False
        try:
            data = os.read(self._ready_fd, 64)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if data:
            self.ready = True
            return True
        self._close_ready()  # EOF: the child closed it (or died) without saying ready
        return False

    def _close_ready(self) -> None:
        if self._ready_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._ready_fd)
            self._ready_fd = None

    def _exited(self, code: int) -> None:
        now = self.clock()
        self.popen = None
        self.pid = None
        self.ready = False
        self._close_ready()
        self.last_exit = describe_exit(code)
        if self.state is ProcessState.STOPPING or not self.wanted:
            self._set(ProcessState.STOPPED, f"stopped ({self.last_exit})")
            return
        if self.state is ProcessState.STARTING:
            self._failed_start(now, f"{self.last_exit} within {self.config.startsecs:g} s of starting")
            return
        # RUNNING: a crash after a good start
        lived = now - self.started_at
        self.crash_streak = 1 if lived >= self.config.stable_secs else self.crash_streak + 1
        delay = min(self.config.backoff_base * 2 ** (self.crash_streak - 1), self.config.backoff_max)
        self.delay_until = now + delay
        self._set(ProcessState.BACKOFF, f"{self.last_exit}; restart in {delay:g} s")

    def _failed_start(self, now: float, why: str) -> None:
        self.failed_starts += 1
        if self.failed_starts > self.config.startretries:
            self._set(ProcessState.FATAL, f"failed {self.failed_starts} starts in a row, giving up: {why}")
            LOG.error("%s: gave up after %d failed starts (%s)", self.name, self.failed_starts, why)
            return
        delay = min(float(self.failed_starts), self.config.backoff_max)
        self.delay_until = now + delay
        self._set(ProcessState.BACKOFF, f"{why}; try {self.failed_starts + 1} in {delay:g} s")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "state": str(self.state), "pid": self.pid, "starts": self.starts,
            "last_exit": self.last_exit, "since": self.since, "ready": self.ready, "message": self.message,
            "order": self.config.order, **self.config.meta,
        }
