"""The supervisor loop behind `burnstation run`: one child process per entry of its plan, kept alive.

Every 0.2 s it reaps children, asks its plan (`appliance.supervisor.plan`) what should run when
the plan or the settings changed, starts and stops processes to match, and writes its state
atomically to `<data>/run/supervisor.json` for `burnstation status` and the web UI.
SIGTERM/SIGINT stop the children in reverse start order (SIGTERM, then SIGKILL after a timeout)
within 10 s. It knows nothing of robots, panels or simulators: the station's plan does
(`appliance.services.plan`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance import atomicfile
from appliance.config import Settings
from appliance.supervisor import requests
from appliance.supervisor.plan import Plan, ProcessSpec
from appliance.supervisor.process import Process, ProcessConfig
from appliance.supervisor.states import ProcessState

LOG = logging.getLogger("burnstation.supervisor")

STATE_FILE = "supervisor.json"
SHUTDOWN_BUDGET = 9.0  # seconds from SIGTERM until every child is gone
HEARTBEAT = 2.0        # rewrite the state file at least this often


def state_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "run" / STATE_FILE


def read_state(data_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The supervisor's last written state, with `alive` telling whether that supervisor still runs."""
    try:
        doc = json.loads(state_path(data_dir).read_text())
    except (FileNotFoundError, ValueError):
        return None
    pid = doc.get("pid")
    alive = False
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
    doc["alive"] = alive and doc.get("state") != "stopped"
    return doc


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomicfile.write_text(path, json.dumps(doc, indent=1, sort_keys=True))


# --------------------------------------------------------------------------- the supervisor


class Supervisor:
    """Runs the processes its plan lists until `stop` is set."""

    def __init__(self, data_dir: str | os.PathLike[str], plan: Plan | Callable[[], list[ProcessSpec]], *,
                 tick: float = 0.2) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.settings = Settings(self.data_dir)  # the supervisor's own timing rules (supervisor.*)
        self.plan = plan if isinstance(plan, Plan) else Plan(plan)
        self.tick = tick
        self.stop_event = threading.Event()
        self.procs: dict[str, Process] = {}
        self._specs: dict[str, ProcessSpec] = {}
        self._orders: dict[str, int] = {}
        self._state = "starting"
        self._last_write = 0.0
        self._dirty = True
        self.started_at = time.time()

    # -- what should run

    def _child_env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        env["BURNSTATION_SUPERVISOR_PID"] = str(os.getpid())
        env["BURNSTATION_PROCESS"] = name
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _config(self, spec: ProcessSpec) -> ProcessConfig:
        values = self.settings.all()
        if spec.name not in self._orders:
            self._orders[spec.name] = len(self._orders)
        return ProcessConfig(name=spec.name, argv=list(spec.argv), env=self._child_env(spec.name),
                             startsecs=float(values.get("supervisor.start_seconds", 3)),
                             startretries=int(values.get("supervisor.start_retries", 3)),
                             stopwaitsecs=5.0, order=self._orders[spec.name], notify_ready=spec.notify_ready,
                             meta=dict(spec.meta))

    def desired(self) -> dict[str, ProcessConfig]:
        """The plan's processes now, with the supervisor's timing rules, by name."""
        wanted: dict[str, ProcessConfig] = {}
        for spec in self.plan():
            if spec.name in wanted:
                raise ValueError(f"the plan lists two processes named {spec.name!r}")
            self._specs[spec.name] = spec
            wanted[spec.name] = self._config(spec)
        return wanted

    def reconcile(self) -> None:
        """Start what should run and is not; stop what runs and should not."""
        wanted = self.desired()
        for name, proc in list(self.procs.items()):
            config = wanted.get(name)
            if proc.wanted and (config is None or config.argv != proc.config.argv):
                LOG.info("%s: no longer wanted (%s); stopping", name, "removed" if config is None else "changed")
                proc.stop()
                self._dirty = True
        for name, config in sorted(wanted.items(), key=lambda kv: kv[1].order):
            if name in self.procs:
                # timing rules follow settings; argv changes restart via stop above
                old = self.procs[name].config
                if old.argv == config.argv:
                    self.procs[name].config = config
                continue
            proc = Process(config)
            self.procs[name] = proc
            proc.spawn()
            self._dirty = True

    # -- state for other processes

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "state": self._state, "started_at": self.started_at, "updated_at": time.time(),
            "data_dir": str(self.data_dir), **self.plan.status(),
            "processes": [p.to_dict() for p in sorted(self.procs.values(), key=lambda p: p.config.order)],
        }

    def write_state(self, force: bool = False) -> None:
        now = time.monotonic()
        if not (force or self._dirty or now - self._last_write >= HEARTBEAT):
            return
        try:
            write_json_atomic(state_path(self.data_dir), self.snapshot())
        except OSError as exc:
            LOG.warning("could not write the supervisor state: %s", exc)
        self._last_write = now
        self._dirty = False

    # -- the loop

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def step(self) -> None:
        for proc in list(self.procs.values()):
            if proc.poll():
                self._dirty = True
        need = False
        if self.plan.changed():
            need = True
            self._dirty = True
        if self.settings.changed():
            self.settings.all()  # reload, so changed() is quiet until the next write
            need = True
        if requests.handle_requests(self):  # "reset" of a failed process (web UI, restart-process)
            self._dirty = True
        gone = [n for n, p in self.procs.items() if not p.wanted and p.state is ProcessState.STOPPED]
        for name in gone:
            del self.procs[name]
            need = True
            self.plan.stopped(self._specs[name])
        if need:
            self.reconcile()
        for proc in list(self.procs.values()):
            if proc.tick():
                self._dirty = True
        self.write_state()

    def _lock(self) -> bool:
        """One supervisor per data folder: a second `burnstation run` would fight the first."""
        path = self.data_dir / "run" / "supervisor.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(path, "a+")  # noqa: SIM115 - held for the supervisor's life
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = (read_state(self.data_dir) or {}).get("pid", "?")
            LOG.error("another `burnstation run` (pid %s) already runs on %s; not starting a second one",
                      other, self.data_dir)
            return False
        return True

    def run(self) -> int:
        if not self._lock():
            return 1
        self.write_state(force=True)
        self.plan.start()
        self.reconcile()
        self._state = "running"
        self.write_state(force=True)
        try:
            while not self.stop_event.is_set():
                try:
                    self.step()
                except Exception:  # e.g. a settings file being rewritten by hand: log, keep supervising
                    LOG.exception("supervisor step failed; continuing")
                self.stop_event.wait(self.tick)
        finally:
            self.shutdown()
            self._lock_fh.close()  # released: `burnstation run` may start a new supervisor (state.db restored)
        return 0

    def shutdown(self) -> None:
        """Stop every child in reverse start order; all gone within SHUTDOWN_BUDGET seconds."""
        self._state = "stopping"
        deadline = time.monotonic() + SHUTDOWN_BUDGET
        LOG.info("stopping %d processes", sum(p.alive() for p in self.procs.values()))
        for proc in self.procs.values():
            proc.wanted = False  # a child that exits from now on is stopped, not restarted
            proc.poll()
            if not proc.alive():
                proc.stop()
        self.write_state(force=True)
        for proc in sorted(self.procs.values(), key=lambda p: -p.config.order):
            if not proc.alive():
                continue
            proc.config.stopwaitsecs = max(0.5, min(proc.config.stopwaitsecs, deadline - time.monotonic() - 1.0))
            proc.stop()
            self.write_state(force=True)
            while proc.alive() and time.monotonic() < deadline:
                for other in self.procs.values():
                    other.poll()
                proc.tick()
                time.sleep(0.05)
        for proc in self.procs.values():
            proc.poll()
            if proc.alive() and proc.popen is not None:
                LOG.error("%s: still alive at the end of shutdown; SIGKILL", proc.name)
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.kill()
                with contextlib.suppress(Exception):
                    proc.popen.wait(2)
                proc.poll()
        self.plan.close()
        self._state = "stopped"
        self.write_state(force=True)
        LOG.info("all processes stopped")
