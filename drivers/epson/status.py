"""Reads TD Bridge's TDBStatus.txt: the robot (stackers, ink, drives) and each job's progress.

TD Bridge rewrites the file in place every few seconds; `TolerantIni` (drivers/common.py) keeps the
last good parse when it catches one half-written. This module only interprets the parsed sections.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance import publish
from drivers.common import (
    Sections,
    TolerantIni,
    as_int,
    half_written,
    listed_values,
)
from drivers.epson import errors

STATUS_FILE = "TDBStatus.txt"
STACKER_MEDIA = {1: "CD", 4: "DVD", 7: "DVD-DL", 8: "BD", 9: "BD-DL"}  # (unconfirmed) 0 output, 99 unused
STACKER_ROLE = {0: "output", 99: "unused"}
JOB_STATUS_TEXT = {
    1: "registered, waiting",
    2: "processing",
    3: "paused",
    4: "completed",
    5: "completed abnormally",
    6: "not accepted",
    99: "unknown",
}
DETAIL_USER_CANCEL = 12  # (unconfirmed) DETAIL_STATUS values
DETAIL_ERROR_ABORT = 13
DETAIL_REJECTED = 14
INK_COLOURS = {"ink_c": "cyan", "ink_m": "magenta", "ink_y": "yellow", "ink_lc": "light cyan",
               "ink_lm": "light magenta", "ink_b": "black"}
INK_LOW_PERCENT = 10


def check_sections(new: Sections, old: Sections | None) -> str:
    """Why a parse of TDBStatus.txt looks half-written ('' when it looks whole)."""
    if "tdb_info" not in new:
        return "[TDB_INFO] missing"
    return half_written(new, old, ("active_job", "complete_job"),
                        lambda name: name == "tdb_info" or bool(re.fullmatch(r"publisher\d+", name)))


def status_reader(spool: Path) -> TolerantIni:
    return TolerantIni(spool / STATUS_FILE, check=check_sections)


@dataclass
class JobInfo:
    """One job's section of TDBStatus.txt."""

    status: int | None
    detail: int | None
    error: str
    publication: int | None  # discs to make (-1 unknown)
    completion: int | None  # discs made
    error_discs: int | None
    remain_seconds: int | None = None

    @property
    def status_text(self) -> str:
        return JOB_STATUS_TEXT.get(self.status or 99, f"status {self.status}")


def job_info(sections: Sections, robot_job_id: str) -> JobInfo | None:
    sec = sections.get(robot_job_id.lower())
    if sec is None:
        return None
    return JobInfo(
        status=as_int(sec.get("status")),
        detail=as_int(sec.get("detail_status")),
        error=(sec.get("error") or "").strip().upper(),
        publication=as_int(sec.get("publication_number")),
        completion=as_int(sec.get("completion_number")),
        error_discs=as_int(sec.get("errordisc_number")),
        remain_seconds=as_int(sec.get("estimation_time_remain")),
    )


def job_sections(sections: Sections) -> list[str]:
    """Job ids the file lists as active or complete."""
    return listed_values(sections.get("active_job")) + listed_values(sections.get("complete_job"))


def publisher_sections(sections: Sections) -> list[dict[str, str]]:
    names = sorted((n for n in sections if re.fullmatch(r"publisher\d+", n)), key=lambda n: int(n[9:]))
    return [sections[n] for n in names]


def pick_publisher(sections: Sections, wanted: str = "") -> dict[str, str] | None:
    pubs = publisher_sections(sections)
    if wanted:
        for pub in pubs:
            if pub.get("name", "").strip().lower() == wanted.strip().lower():
                return pub
        return None
    return pubs[0] if pubs else None


@dataclass
class RobotState:
    """What TDBStatus.txt says about one robot (fields of publish.RobotStatus)."""

    found: bool
    media: list[str] = field(default_factory=list)
    stackers: dict[str, Any] = field(default_factory=dict)
    ink: dict[str, int] = field(default_factory=dict)
    drives: list[dict[str, Any]] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    publisher_name: str = ""


def robot_state(sections: Sections, wanted_publisher: str = "") -> RobotState:
    pub = pick_publisher(sections, wanted_publisher)
    state = RobotState(found=pub is not None)
    if pub is None:
        if wanted_publisher:
            state.faults.append(f"TD Bridge has no robot registered as {wanted_publisher!r}")
        return state
    state.publisher_name = pub.get("name", "")
    media: set[str] = set()
    for i in range(1, 5):
        level = pub.get(f"stacker{i}")
        setting = as_int(pub.get(f"stacker{i}_setting"))
        if level is None and setting is None:
            continue
        kind = STACKER_MEDIA.get(setting) if setting is not None else None
        role = kind or STACKER_ROLE.get(setting if setting is not None else -1, "unknown")
        if kind:
            media.add(kind)
        state.stackers[f"stacker{i}"] = {"level": as_int(level, level), "setting": setting, "holds": role}
    state.media = [m for m in publish.MEDIA_ORDER if m in media] + sorted(m for m in media if m not in publish.MEDIA_ORDER)
    for key, colour in INK_COLOURS.items():
        value = as_int(pub.get(key))
        if value is not None:
            state.ink[colour] = value
            if 0 <= value < INK_LOW_PERCENT:
                state.faults.append(f"ink low: {colour} {value}%")
    drives: dict[str, dict[str, Any]] = {}
    for key, value in pub.items():
        m = re.fullmatch(r"drive(\d+)_?(.*)", key)
        if m:
            drives.setdefault(m.group(1), {"drive": int(m.group(1))})[m.group(2) or "state"] = value
    state.drives = [drives[k] for k in sorted(drives, key=int)]
    code = (pub.get("error") or "").strip().upper()
    if code and code not in ("0", "NONE"):
        state.faults.append(errors.describe(code))
    # recoverable faults the engine reports on active jobs (stacker empty, cover open, …)
    for job in listed_values(sections.get("active_job")):
        info = job_info(sections, job)
        if info and info.error and errors.is_recoverable(info.error):
            text = errors.describe(info.error)
            if text not in state.faults:
                state.faults.append(text)
    return state
