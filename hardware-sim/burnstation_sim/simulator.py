"""The simulator's main loop: ticks every robot's engine, consumes operator commands from
`ROOT/control/`, keeps device announcements in `ROOT/devices/`. Single-threaded: each tick every
engine looks at its folder, moves its job one step, rewrites its status files."""

from __future__ import annotations

import codecs
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import control, devices, epson, primera
from .engine import Engine

log = logging.getLogger("burnstation_sim")

KINDS = {"epson": (epson.make_robot, epson.EpsonEngine), "primera": (primera.make_robot, primera.PrimeraEngine)}


class Component(Protocol):
    """Something else the simulator runs in its loop (for example the virtual LCD)."""

    def tick(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class RobotSpec:
    kind: str
    name: str


def parse_robots(text: str) -> list[RobotSpec]:
    """`kind[:name],...` (kind epson|primera; name defaults to the kind, [A-Za-z0-9_-] ≤ 32)."""
    specs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, name = item.partition(":")
        name = name or kind
        if kind not in KINDS:
            raise ValueError(f"--robots: unknown kind {kind!r} (epson or primera)")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", name):
            raise ValueError(f"--robots: robot name {name!r} must be 1-32 of A-Z a-z 0-9 _ -")
        if any(s.name == name for s in specs):
            raise ValueError(f"--robots: robot name {name!r} used twice")
        specs.append(RobotSpec(kind, name))
    if not specs:
        raise ValueError("--robots: no robot")
    return specs


def parse_path_maps(items: list[str]) -> list[tuple[str, Path]]:
    """`--path-map PREFIX=LOCAL_DIR` (repeatable): job files name paths as the engine's host sees
    them (e.g. `Z:\\spool\\epson\\disc.iso`); the prefix is replaced by the local folder."""
    maps = []
    for item in items:
        prefix, sep, local = item.rpartition("=")
        if not sep or not prefix or not local:
            raise ValueError(f"--path-map {item!r}: expected PREFIX=LOCAL_DIR")
        maps.append((prefix, Path(local).resolve()))
    return sorted(maps, key=lambda m: -len(m[0]))  # the longest prefix wins


def parse_encodings(items: list[str], robots: list[RobotSpec]) -> dict[str, str]:
    """`--encoding ROBOT=CODEPAGE` (repeatable): the code page the robot's engine reads job files in."""
    out = {}
    names = {s.name for s in robots}
    for item in items:
        name, sep, codepage = item.partition("=")
        if not sep or name not in names:
            raise ValueError(f"--encoding {item!r}: expected ROBOT=CODEPAGE with a robot of --robots")
        try:
            out[name] = codecs.lookup(codepage).name
        except LookupError:
            raise ValueError(f"--encoding {item!r}: unknown code page {codepage!r}") from None
    return out


def tick_seconds(speed: float) -> float:
    """How often the engines run: every second at realistic speed, faster when time is scaled
    down, 50 ms at --speed 0. (The real TD Bridge rewrites its status about every 5 s.)"""
    return max(0.05, min(1.0, speed))


class Simulator:
    def __init__(self, spool: Path, root: Path, robots: list[RobotSpec], speed: float = 1.0,
                 path_maps: list[tuple[str, Path]] | None = None, encodings: dict[str, str] | None = None) -> None:
        self.spool = spool.resolve()
        self.root = root.resolve()
        self.speed = speed
        self.engines: dict[str, Engine] = {}
        self.components: list[Component] = []
        self.control_dir = self.root / "control"
        for spec in robots:
            make_robot, engine_class = KINDS[spec.kind]
            robot = make_robot(spec.name, speed)
            engine = engine_class(robot, self.spool / spec.name, self.root / "bin" / spec.name, path_maps)
            engine.encoding = (encodings or {}).get(spec.name, engine.encoding)
            engine.load_state(self.root / "state" / f"{spec.name}.json")  # before --faults are applied
            self.engines[spec.name] = engine

    # -- operator commands -----------------------------------------------------------------------
    def apply(self, robot_name: str, words: list[str]) -> dict:
        """Apply one command; returns the reply document."""
        engine = self.engines.get(robot_name)
        if engine is None:
            raise control.CommandError(f"no robot named {robot_name!r} (have: {', '.join(self.engines)})")
        command, args = control.parse_command(words)
        robot = engine.robot
        if command == "fault":
            on = args[-1] == "on"
            number = int(args[1]) if args[0] == "write_error" and on else None
            robot.set_fault(args[0], on, number)
            message = f"{robot_name}: fault {' '.join(args)}"
        elif command == "refill":
            robot.refill(int(args[0]) if args else None)
            message = f"{robot_name}: refilled"
        elif command == "cancel":
            try:
                job_id = engine.operator_cancel(args[0] if args else "")
            except ValueError as exc:
                raise control.CommandError(f"{robot_name}: {exc}") from None
            message = f"{robot_name}: job {job_id} cancelled by the operator"
        elif command == "plug":
            robot.plugged = True
            self.announce(robot_name)
            message = f"{robot_name}: plugged in"
        elif command == "unplug":
            robot.plugged = False
            devices.withdraw(self.root, robot_name)
            message = f"{robot_name}: unplugged"
        else:
            return {"ok": True, "status": self.status(robot_name)}
        log.info("%s", message)
        return {"ok": True, "message": message}

    def status(self, robot_name: str) -> dict:
        engine = self.engines[robot_name]
        doc = engine.robot.snapshot()
        doc["spool"] = str(engine.folder)
        doc["bin"] = str(engine.bin_root)
        doc["jobs"] = engine.snapshot()
        return doc

    def consume_commands(self) -> None:
        for path in sorted(self.control_dir.glob("*.cmd")):
            try:
                robot_name, words = control.read_request(path)
                reply = self.apply(robot_name, words)
            except (control.CommandError, ValueError) as exc:
                reply = {"ok": False, "error": str(exc)}
            except FileNotFoundError:
                continue
            control.write_reply(path, reply)
            path.unlink(missing_ok=True)

    # -- devices ---------------------------------------------------------------------------------
    def announce(self, name: str) -> None:
        engine = self.engines[name]
        devices.announce(self.root, name, engine.kind, engine, engine.folder)

    # -- the loop --------------------------------------------------------------------------------
    def setup(self) -> None:
        self.control_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "devices").mkdir(parents=True, exist_ok=True)
        for name, engine in self.engines.items():
            engine.bin_root.mkdir(parents=True, exist_ok=True)
            if engine.robot.plugged:
                self.announce(name)
            engine.write_status()

    def tick(self, dt: float) -> None:
        self.consume_commands()
        for name, engine in self.engines.items():
            try:
                engine.tick(dt)
            except Exception:  # a bug in one engine must not stop the others; it shows in the log
                log.exception("%s: engine tick failed", name)
            engine.save_state()
        for component in self.components:
            component.tick()

    def run(self, stop: threading.Event) -> None:
        self.setup()
        period = tick_seconds(self.speed)
        last = time.monotonic()
        try:
            while not stop.is_set():
                now = time.monotonic()
                self.tick(now - last)
                last = now
                stop.wait(period)
        finally:
            for component in self.components:
                component.close()
            for name in self.engines:
                devices.withdraw(self.root, name)  # the simulator is gone: so are its devices
