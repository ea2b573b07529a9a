"""Reads PTBurn's status files: `Status/SystemStatus.txt` (engine, robots, bins, cartridges) and
`Status/<RobotName>.txt` (jobs, drives).

PTBurn rewrites them in place; `TolerantIni` (drivers/common.py) keeps the last good parse when it
catches one half-written. The engine is taken to be gone when ServerTickCount (its heartbeat) stops
advancing for a while.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.common import (
    Sections,
    TolerantIni,
    as_int,
    half_written,
    listed_values,
)
from drivers.primera.errors import describe_system

STATUS_DIR = "Status"
SYSTEM_FILE = "SystemStatus.txt"

JOB_STATE = {0: "not started", 1: "running", 2: "succeeded", 3: "failed", 4: "moved"}
STATUS_STATE = {
    0: "recording", 1: "reading", 2: "verifying", 3: "printing", 4: "loading", 5: "unloading",
    6: "waiting for printer", 7: "waiting for recorder", 8: "finishing", 9: "rejecting", 10: "complete",
    11: "paused", 12: "resumed", 13: "aborted", 14: "initializing", 15: "failed", 16: "pre-mastering",
    17: "system OK",
}
ROBOT_TYPE = {0: "Disc Publisher", 1: "Disc Publisher II", 2: "Disc Publisher PRO", 4: "Disc Publisher XR",
              5: "Disc Publisher XRP", 6: "Disc Publisher SE", 7: "Bravo Xi", 8: "Bravo 4100",
              9: "Bravo 4100 XRP"}
DRIVE_STATE = {0: "idle", 1: "recording", 2: "reading", 3: "verifying", 4: "disc loaded", 5: "verify failed",
               6: "verify complete", 7: "record failed", 8: "record complete"}
CARTRIDGE_TYPE = {0: "none", 1: "colour", 2: "black", 3: "yellow", 4: "cyan", 5: "magenta"}
STATE_PAUSED = 11
STATE_ABORTED = 13
STATE_FAILED = 15
INK_LOW_PERCENT = 10


def check_system(new: Sections, old: Sections | None) -> str:
    if "system" not in new:
        return "[System] missing"
    robots = {r.lower() for r in listed_values((old or {}).get("robotlist"))}
    return half_written(new, old, ("robotlist",), lambda name: name in ("system", "robotlist") or name in robots)


def check_robot(new: Sections, old: Sections | None) -> str:
    return half_written(new, old, ("joblist", "completedjobs"), lambda name: name == "system")


def safe_robot_file_name(robot_name: str) -> str:
    """`<RobotName>.txt`, refusing a name that would leave the Status folder."""
    if not robot_name or re.search(r"[\\/\x00-\x1f]", robot_name) or robot_name.strip(". ") == "":
        raise ValueError(f"robot name {robot_name!r} cannot name a status file")
    return f"{robot_name}.txt"


@dataclass
class Heartbeat:
    """ServerTickCount must change within `timeout` seconds of our watching it."""

    timeout: float
    value: str | None = None
    since: float = 0.0

    def alive(self, tick: str | None, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if tick != self.value:
            self.value, self.since = tick, now
            return True
        return not self.timeout or now - self.since <= self.timeout

    def silent_for(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.since


@dataclass
class JobInfo:
    """One job's section of `<RobotName>.txt`."""

    job_state: int | None
    status_state: int | None
    current_status: str
    good: int
    bad: int
    remaining: int | None
    error_number: int | None
    error_string: str
    disc_errors: list[tuple[int, str]] = field(default_factory=list)  # (number, text)
    jobs_ahead: int | None = None

    @property
    def error(self) -> tuple[int | None, str]:
        """The job's error, else the first disc error."""
        if self.error_number:
            return self.error_number, self.error_string
        for number, text in self.disc_errors:
            if number:
                return number, text
        return None, self.error_string

    @property
    def progress(self) -> float:
        total = self.good + self.bad + (self.remaining or 0)
        return (self.good + self.bad) / total if total > 0 else 0.0


def job_info(sections: Sections, robot_job_id: str) -> JobInfo | None:
    sec = sections.get(robot_job_id.lower())
    if sec is None:
        return None
    disc_errors = []
    for key, value in sec.items():
        m = re.fullmatch(r"discerrornumber(\d+)", key)
        if m:
            number = as_int(value, 0) or 0
            disc_errors.append((number, sec.get(f"discerrorstring{m.group(1)}", "")))
    return JobInfo(
        job_state=as_int(sec.get("jobstate")),
        status_state=as_int(sec.get("currentstatusstate")),
        current_status=sec.get("currentstatus", ""),
        good=max(as_int(sec.get("gooddiscs"), 0) or 0, 0),
        bad=max(as_int(sec.get("baddiscs"), 0) or 0, 0),
        remaining=as_int(sec.get("discsremaining")),
        error_number=as_int(sec.get("joberrornumber")),
        error_string=sec.get("joberrorstring", ""),
        disc_errors=disc_errors,
        jobs_ahead=as_int(sec.get("jobsahead")),
    )


def system_error(system: Sections, robot_name: str = "") -> str:
    """The engine's and the robot's system errors in clear text ('' when none): SysErrorNumber of
    [System] and of the robot's own section (SDK table, drivers/primera/errors.py)."""
    texts: list[str] = []
    for sec in (system.get("system", {}), system.get(robot_name.lower(), {}) if robot_name else {}):
        number = as_int(sec.get("syserrornumber"), 0) or 0
        text = describe_system(number, sec.get("syserrorstring", ""))
        if text and text not in texts:
            texts.append(text)
    return "; ".join(texts)


def status_file_name(system: Sections, robot_name: str) -> str:
    """The robot's own status file: its StatusFile= entry, else `<RobotName>.txt`."""
    named = system.get(robot_name.lower(), {}).get("statusfile", "").strip()
    name = named.replace("\\", "/").rsplit("/", 1)[-1] if named else ""  # (a full path is a guess: take its name)
    return safe_robot_file_name(name[:-4]) if name.lower().endswith(".txt") else safe_robot_file_name(robot_name)


def pick_robot(system: Sections, wanted: str = "") -> str:
    robots = listed_values(system.get("robotlist"))
    if wanted:
        return next((r for r in robots if r.lower() == wanted.lower()), "")
    return robots[0] if robots else ""


@dataclass
class RobotState:
    found: bool
    robot_name: str = ""
    robot_type: str = ""
    message: str = ""
    stackers: dict[str, Any] = field(default_factory=dict)
    ink: dict[str, int] = field(default_factory=dict)
    drives: list[dict[str, Any]] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)


def robot_state(system: Sections, robot_file: Sections, robot_name: str) -> RobotState:
    state = RobotState(found=bool(robot_name) and robot_name.lower() in system, robot_name=robot_name)
    err = system_error(system, robot_name)
    if err:
        state.faults += err.split("; ")
    if not state.found:
        return state
    sec = system[robot_name.lower()]
    rtype = as_int(sec.get("robottype"))
    state.robot_type = ROBOT_TYPE.get(rtype, f"type {rtype}") if rtype is not None else ""
    state.message = sec.get("status", "").strip()
    for side in ("left", "right"):
        count = as_int(sec.get(f"discsin{side}bin"))
        if count is not None:
            state.stackers[f"{side} bin"] = {"discs": count if count >= 0 else None}
    for key, value in sec.items():
        m = re.fullmatch(r"cartridgefill(\d+)", key)
        if m:
            fill = as_int(value)
            ctype = as_int(sec.get(f"cartridgetype{m.group(1)}"))
            kind = CARTRIDGE_TYPE.get(ctype, f"type {ctype}") if ctype is not None else ""
            name = f"cartridge {m.group(1)}" + (f" ({kind})" if kind else "")
            if fill is not None:
                state.ink[name] = fill
                if 0 <= fill < INK_LOW_PERCENT:
                    state.faults.append(f"ink low: {name} {fill}%")
    rsys = robot_file.get("system", {})
    drives: dict[str, dict[str, Any]] = {}
    for key, value in rsys.items():
        m = re.fullmatch(r"drive(state|percent)(\d+)", key)
        if m:
            drives.setdefault(m.group(2), {"drive": int(m.group(2))})[m.group(1)] = as_int(value, value)
    for drive in drives.values():
        if isinstance(drive.get("state"), int):
            drive["state_text"] = DRIVE_STATE.get(drive["state"], f"state {drive['state']}")
    state.drives = [drives[k] for k in sorted(drives, key=int)]
    sysstat = rsys.get("systemstatus", "").strip()
    if sysstat and not state.message:
        state.message = sysstat
    return state


def system_reader(spool: Path) -> TolerantIni:
    return TolerantIni(spool / STATUS_DIR / SYSTEM_FILE, check=check_system)


def robot_reader(spool: Path, file_name: str) -> TolerantIni:
    """The robot's own status file, by the name SystemStatus.txt gives (`status_file_name`)."""
    return TolerantIni(spool / STATUS_DIR / file_name, check=check_robot)
