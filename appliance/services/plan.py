"""The station's plan for the supervisor: which processes should run now, and the robot upkeep
that goes with it.

- the services of `SERVICES`, in that order;
- with --simulate, the hardware simulator (`burnstation_sim`) announcing the simulated robots;
- one `driver:<robot>` per robot that should be driven: manual ones always, discovered (udev) or
  simulated ones while their device is there;
- the front panel when `panel.device` is set or discovery found an LCD.

Robots found by discovery, and the simulated ones, are registered in the robots table (settings)
from one default document; a robot whose device went away is marked offline in `robot_status`,
with the reason, through `appliance.burn.robots`.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from pathlib import Path
from typing import Any

from appliance import db
from appliance.burn import robots
from appliance.config import Settings
from appliance.discovery import Discovery, make_discovery
from appliance.supervisor.plan import Plan, ProcessSpec

LOG = logging.getLogger("burnstation.supervisor")

# the services `burnstation run` starts, in start order (stopped in reverse)
SERVICES = ["dicom", "hl7", "web", "burner", "transfer"]


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


def default_robot(name: str, driver: str, spool: str | Path, source: str) -> dict[str, Any]:
    """The robot document written for a robot the station found itself (discovered or simulated)."""
    return {"name": name, "driver": driver, "role": driver if driver in ("epson", "primera") else "any",
            "media": ["CD", "DVD"], "spool": str(spool), "engine_path": "", "mode": "image",
            "verify": True, "source": source}


def ensure_robot(settings: Settings, doc: dict[str, Any], replace: bool = False) -> None:
    """Add a robot to the robots table unless it is there already (or, with `replace`, is there
    with other values)."""
    old = robots.get_robot(settings, doc["name"])
    if old is not None and (not replace or all(old.get(k) == v for k, v in doc.items())):
        return
    Path(doc["spool"]).mkdir(parents=True, exist_ok=True)
    robots.add_robot(settings, doc)  # replaces a robot of that name
    LOG.info("robot %s registered (driver %s, source %s, spool %s)", doc["name"], doc["driver"],
             doc["source"], doc["spool"])


def mark_robot_offline(data_dir: Path, name: str, reason: str) -> None:
    """Record in `robot_status` that a robot is gone, and why."""
    conn = db.connect(data_dir)
    try:
        robots.mark_offline(conn, name, reason)
    except sqlite3.Error as exc:
        LOG.warning("could not mark robot %s offline: %s", name, exc)
    finally:
        conn.close()


class StationPlan(Plan):
    """What `burnstation run` runs on a data folder (see the module docstring)."""

    def __init__(self, data_dir: str | Path, *, simulate: bool = False, sim_robots: str = "epson,primera",
                 sim_speed: float = 1.0, services: list[str] | None = None,
                 discovery: Discovery | None = None) -> None:
        super().__init__()
        self.data_dir = Path(data_dir).resolve()
        self.settings = Settings(self.data_dir)
        self.simulate = simulate
        self.sim_robots = parse_sim_robots(sim_robots) if simulate else []
        self.sim_speed = sim_speed
        self.services = list(SERVICES) if services is None else list(services)
        self.sim_root = self.data_dir / "sim"
        self.discovery = discovery or make_discovery(self.data_dir, simulate, self.sim_root)
        self._driving: set[str] = set()      # robots with a driver process listed and not yet stopped
        self._offline_marked: set[str] = set()

    # -- the processes

    def _service(self, name: str, *extra: str, **meta: Any) -> ProcessSpec:
        argv = [sys.executable, "-m", "appliance.cli", "--data", str(self.data_dir), "service", name, *extra]
        return ProcessSpec(name=meta.pop("process", name), argv=argv, meta=meta)

    def active_robots(self) -> list[dict[str, Any]]:
        """Robots that should have a driver process: manual ones always, discovered ones while plugged."""
        plugged = self.discovery.robots()
        return [r for r in robots.list_robots(self.settings)
                if r.get("source", "manual") == "manual" or r.get("name") in plugged]

    def __call__(self) -> list[ProcessSpec]:
        specs: list[ProcessSpec] = []
        if self.simulate:
            names = ",".join(kind if kind == name else f"{kind}:{name}" for kind, name in self.sim_robots)
            argv = [sys.executable, "-m", "burnstation_sim", "--spool", str(self.data_dir / "spool"),
                    "--root", str(self.sim_root), "--robots", names, "--speed", f"{self.sim_speed:g}", "--lcd"]
            specs.append(ProcessSpec("simulator", argv, {"kind": "simulator"}, notify_ready=False))
        for name in self.services:
            specs.append(self._service(name, kind="service"))
            if name == "dicom":  # workers 2..N: `dicom:2` ... (worker 1 is `dicom` itself)
                specs.extend(self._service(name, "--worker", str(k), process=f"dicom:{k}", kind="service",
                                           worker=k) for k in range(2, self.settings.dicom_workers() + 1))
        for robot in self.active_robots():
            name = robot["name"]
            specs.append(self._service("driver", "--robot", name, process=f"driver:{name}", kind="driver",
                                       robot=name))
            self._driving.add(name)
            self._offline_marked.discard(name)
        device = self.settings.get("panel.device") or self.discovery.lcd() or ""
        if device:
            specs.append(self._service("panel", "--device", device, kind="panel", device=device))
        self._mark_absent(specs)
        return specs

    def _mark_absent(self, specs: list[ProcessSpec]) -> None:
        """Robots found by discovery or the simulator whose device is gone and that have no driver
        process: offline in `robot_status`, with the reason."""
        listed = {s.meta["robot"] for s in specs if "robot" in s.meta}
        plugged = self.discovery.robots()
        for robot in robots.list_robots(self.settings):
            name = robot.get("name")
            if not name or name in listed or name in self._driving or name in self._offline_marked:
                continue
            source = robot.get("source", "manual")
            if source in ("udev", "simulated") and name not in plugged:
                reason = "unplugged: its USB device is not connected" if source == "udev" else \
                    "unplugged: the simulator does not announce this robot"
                mark_robot_offline(self.data_dir, name, reason)
                self._offline_marked.add(name)

    # -- the supervisor's hooks

    def start(self) -> None:
        if self.simulate:
            self.register_simulated()
        self.register_discovered()

    def changed(self) -> bool:
        if self.discovery.poll():
            self.register_discovered()
            return True
        return False

    def stopped(self, spec: ProcessSpec) -> None:
        robot = spec.meta.get("robot")
        if not robot:
            return
        self._driving.discard(robot)
        if robot not in self.discovery.robots() and self._source(robot) != "manual":
            mark_robot_offline(self.data_dir, robot, "unplugged: driver stopped because the device went away")
            self._offline_marked.add(robot)

    def status(self) -> dict[str, Any]:
        return {"simulate": self.simulate, "sim_root": str(self.sim_root) if self.simulate else None,
                "discovery": self.discovery.status()}

    def close(self) -> None:
        self.discovery.close()

    # -- robot registration

    def _source(self, name: str) -> str:
        robot = robots.get_robot(self.settings, name)
        return robot.get("source", "manual") if robot else "manual"

    def register_discovered(self) -> None:
        """Put newly plugged robots into the robots table (source udev/simulated)."""
        source = "simulated" if self.simulate else "udev"
        known = {r.get("name") for r in robots.list_robots(self.settings)}
        for name, device in self.discovery.robots().items():
            if name in known:
                continue
            spool = device.get("spool") or self.data_dir / "spool" / name
            try:
                ensure_robot(self.settings, default_robot(name, device["driver"], spool, source))
            except Exception as exc:  # one bad device must not keep the others (or the station) from running
                LOG.error("could not register discovered robot %s: %s", name, exc)

    def register_simulated(self) -> None:
        for kind, name in self.sim_robots:
            ensure_robot(self.settings, default_robot(name, kind, self.data_dir / "spool" / name, "simulated"),
                         replace=True)
