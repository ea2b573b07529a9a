"""The supervisor loop behind `burnstation run`: one child process per service, kept alive.

Every 0.2 s it reaps children, follows discovery (robots and the LCD coming and going) and
settings changes (the robots table), starts and stops processes to match what should run, and
writes its state atomically to `<data>/run/supervisor.json` for `burnstation status` and the web
UI. SIGTERM/SIGINT stop the children in reverse start order (SIGTERM, then SIGKILL after a
timeout) within 10 s. Children run `burnstation service NAME` (see `appliance.supervisor.child`).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

from appliance import atomicfile
from appliance.config import Settings
from appliance.discovery import Discovery, make_discovery
from appliance.supervisor import requests
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


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def parse_sim_robots(text: str) -> list[tuple[str, str]]:
    """`epson,primera:p2` → [("epson", "epson"), ("primera", "p2")] (kind, name)."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        kind, _, name = item.partition(":")
        out.append((kind.strip(), (name or kind).strip()))
    return out


# --------------------------------------------------------------------------- robots table helpers


def list_robots(settings: Settings) -> list[dict[str, Any]]:
    """The robots table (B2's API when present, else the table itself)."""
    try:
        from appliance.burn.robots import list_robots as api_list
    except ImportError:
        return settings.table_all("robots")
    return api_list(settings)


def ensure_robot(settings: Settings, doc: dict[str, Any], replace: bool = False) -> None:
    """Add a discovered/simulated robot to the robots table unless it is there already."""
    existing = {r.get("name"): r for r in settings.table_all("robots")}
    old = existing.get(doc["name"])
    if old is not None and (not replace or all(old.get(k) == v for k, v in doc.items())):
        return
    Path(doc["spool"]).mkdir(parents=True, exist_ok=True)
    try:
        from appliance.burn import robots as api
    except ImportError:
        api = None
    if api is not None and hasattr(api, "add_robot"):
        if old is not None and hasattr(api, "delete_robot"):
            api.delete_robot(settings, doc["name"])
        api.add_robot(settings, doc)
    else:
        from tinydb import Query

        with settings.table("robots") as table:
            table.remove(Query().name == doc["name"])
            table.insert(doc)
    LOG.info("robot %s registered (driver %s, source %s, spool %s)", doc["name"], doc["driver"],
             doc["source"], doc["spool"])


def mark_robot_offline(data_dir: Path, name: str, reason: str) -> None:
    """Record in `robot_status` (when that table exists) that a robot is gone, and why."""
    try:
        from appliance import db

        conn = db.connect(data_dir)
    except Exception:
        return
    try:
        cols = {row[1] for row in conn.execute("PRAGMA table_info(robot_status)")}
        if not cols:
            return
        now = time.time()
        existing = conn.execute("SELECT 1 FROM robot_status WHERE name=?", (name,)).fetchone()
        sets = {"online": 0, "message": reason}
        if "pid" in cols:
            sets["pid"] = 0
        if existing:
            conn.execute(f"UPDATE robot_status SET {', '.join(f'{k}=?' for k in sets)} WHERE name=?",
                         (*sets.values(), name))
        else:
            row = {"name": name, **sets}
            if "heartbeat_at" in cols:
                row["heartbeat_at"] = now
            conn.execute(f"INSERT INTO robot_status ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                         tuple(row.values()))
    except sqlite3.Error as exc:
        LOG.warning("could not mark robot %s offline: %s", name, exc)
    finally:
        conn.close()


# --------------------------------------------------------------------------- the supervisor


class Supervisor:
    """Runs the station's processes until `stop` is set."""

    def __init__(self, data_dir: str | os.PathLike[str], *, simulate: bool = False,
                 sim_robots: str = "epson,primera", sim_speed: float = 1.0, services: list[str] | None = None,
                 discovery: Discovery | None = None, tick: float = 0.2) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.settings = Settings(self.data_dir)
        self.simulate = simulate
        self.sim_robots = parse_sim_robots(sim_robots) if simulate else []
        self.sim_speed = sim_speed
        self.services = services if services is not None else self._default_services()
        self.sim_root = self.data_dir / "sim"
        self.discovery = discovery or make_discovery(self.data_dir, simulate, self.sim_root)
        self.tick = tick
        self.stop_event = threading.Event()
        self.procs: dict[str, Process] = {}
        self._orders: dict[str, int] = {}
        self._offline_marked: set[str] = set()
        self._state = "starting"
        self._last_write = 0.0
        self._dirty = True
        self.started_at = time.time()

    @staticmethod
    def _default_services() -> list[str]:
        from appliance.services.station import available_services

        return available_services()

    # -- what should run

    def _child_env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        env["BURNSTATION_SUPERVISOR_PID"] = str(os.getpid())
        env["BURNSTATION_PROCESS"] = name
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _service_argv(self, name: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "appliance.cli", "--data", str(self.data_dir), "service", name, *extra]

    def _config(self, name: str, argv: list[str], **meta: Any) -> ProcessConfig:
        values = self.settings.all()
        if name not in self._orders:
            self._orders[name] = len(self._orders)
        return ProcessConfig(name=name, argv=argv, env=self._child_env(name),
                             startsecs=float(values.get("supervisor.start_seconds", 3)),
                             startretries=int(values.get("supervisor.start_retries", 3)),
                             stopwaitsecs=5.0, order=self._orders[name], meta=meta)

    def active_robots(self) -> list[dict[str, Any]]:
        """Robots that should have a driver process: manual ones always, discovered ones while plugged."""
        plugged = self.discovery.robots()
        out = []
        for robot in list_robots(self.settings):
            source = robot.get("source", "manual")
            if source == "manual" or robot.get("name") in plugged:
                out.append(robot)
        return out

    def desired(self) -> dict[str, ProcessConfig]:
        wanted: dict[str, ProcessConfig] = {}
        if self.simulate:
            robots = ",".join(kind if kind == name else f"{kind}:{name}" for kind, name in self.sim_robots)
            argv = [sys.executable, "-m", "burnstation_sim", "--spool", str(self.data_dir / "spool"),
                    "--root", str(self.sim_root), "--robots", robots, "--speed", f"{self.sim_speed:g}", "--lcd"]
            wanted["simulator"] = self._config("simulator", argv, kind="simulator")
            wanted["simulator"].notify_ready = False  # not a `burnstation service`: running = ready
        for name in self.services:
            wanted[name] = self._config(name, self._service_argv(name), kind="service")
        if module_exists("appliance.services.driver"):
            for robot in self.active_robots():
                rname = robot["name"]
                wanted[f"driver:{rname}"] = self._config(
                    f"driver:{rname}", self._service_argv("driver", "--robot", rname), kind="driver", robot=rname)
        device = self.settings.get("panel.device") or self.discovery.lcd() or ""
        if device:
            wanted["panel"] = self._config("panel", self._service_argv("panel", "--device", device),
                                           kind="panel", device=device)
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
            if config.meta.get("robot"):
                self._offline_marked.discard(config.meta["robot"])
        self._mark_absent_robots(wanted)

    def _mark_absent_robots(self, wanted: dict[str, ProcessConfig]) -> None:
        running = {c.meta.get("robot") for c in wanted.values() if c.meta.get("robot")}
        running |= {p.config.meta.get("robot") for p in self.procs.values() if p.alive()}
        plugged = self.discovery.robots()
        for robot in list_robots(self.settings):
            name = robot.get("name")
            if not name or name in running or name in self._offline_marked:
                continue
            source = robot.get("source", "manual")
            if source in ("udev", "simulated") and name not in plugged:
                reason = "unplugged: its USB device is not connected" if source == "udev" else \
                    "unplugged: the simulator does not announce this robot"
                mark_robot_offline(self.data_dir, name, reason)
                self._offline_marked.add(name)

    def register_discovered(self) -> None:
        """Put newly plugged robots into the robots table (source udev/simulated)."""
        source = "simulated" if self.simulate else "udev"
        known = {r.get("name") for r in self.settings.table_all("robots")}
        for name, device in self.discovery.robots().items():
            if name in known:
                continue
            driver = device["driver"]
            spool = device.get("spool") or str(self.data_dir / "spool" / name)
            doc = {"name": name, "driver": driver, "role": driver if driver in ("epson", "primera") else "any",
                   "media": ["CD", "DVD"], "spool": str(spool), "engine_path": "", "mode": "image",
                   "verify": True, "source": source}
            try:
                ensure_robot(self.settings, doc)
            except Exception as exc:
                LOG.error("could not register discovered robot %s: %s", name, exc)

    def register_simulated(self) -> None:
        for kind, name in self.sim_robots:
            doc = {"name": name, "driver": kind, "role": kind, "media": ["CD", "DVD"],
                   "spool": str(self.data_dir / "spool" / name), "engine_path": "", "mode": "image",
                   "verify": True, "source": "simulated"}
            ensure_robot(self.settings, doc, replace=True)

    # -- state for other processes

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "state": self._state, "started_at": self.started_at, "updated_at": time.time(),
            "data_dir": str(self.data_dir), "simulate": self.simulate,
            "sim_root": str(self.sim_root) if self.simulate else None,
            "discovery": self.discovery.status(),
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
        if self.discovery.poll():
            self.register_discovered()
            need = True
            self._dirty = True
        if self.settings.changed():
            self.settings.all()  # reload, so changed() is quiet until the next write
            need = True
        if requests.handle_requests(self):  # "reset" of a failed process (web UI, restart-process)
            self._dirty = True
        gone = [n for n, p in self.procs.items() if not p.wanted and p.state is ProcessState.STOPPED]
        for name in gone:
            robot = self.procs[name].config.meta.get("robot")
            del self.procs[name]
            need = True
            if robot and robot not in self.discovery.robots() and self._robot_source(robot) != "manual":
                mark_robot_offline(self.data_dir, robot, "unplugged: driver stopped because the device went away")
                self._offline_marked.add(robot)
        if need:
            self.reconcile()
        for proc in list(self.procs.values()):
            if proc.tick():
                self._dirty = True
        self.write_state()

    def _robot_source(self, name: str) -> str:
        for robot in self.settings.table_all("robots"):
            if robot.get("name") == name:
                return robot.get("source", "manual")
        return "manual"

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
        if self.simulate:
            self.register_simulated()
        self.register_discovered()
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
        self.discovery.close()
        self._state = "stopped"
        self.write_state(force=True)
        LOG.info("all processes stopped")
