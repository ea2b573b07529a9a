"""The robot itself, shared by both engines: stackers/bins, ink, drives, faults, and the disc cycle
(load → write → verify → print → unload) a job goes through, with realistic timing scaled by
`--speed`. The engines (epson.py, primera.py) wrap this in their own file protocol."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .discs import MEDIA_CAPACITY

FAULTS = ("input_empty", "output_full", "cover_open", "write_error", "ink_low", "offline")

# realistic seconds at --speed 1
ACCEPT_SECONDS = 2.0
LOAD_SECONDS = 8.0
PRINT_SECONDS = 40.0
UNLOAD_SECONDS = 6.0
LEAD_SECONDS = 15.0  # lead-in/lead-out and drive spin-up per write or verify
WRITE_RATE = {"CD": 3.6e6, "DVD": 10.8e6, "DVD-DL": 8.0e6, "BD": 18.0e6, "BD-DL": 18.0e6}  # bytes/s


@dataclass
class Stacker:
    """An Epson stacker or a Primera bin."""

    number: int
    role: str  # "input", "output" or "unused"
    media: str = ""  # input stackers: the blank media loaded
    count: int = 0  # discs in it
    capacity: int = 50


@dataclass
class Job:
    """A job as the robot sees it, whichever engine accepted it."""

    job_id: str
    path: Path  # the job file, under its current name
    received_name: str
    copies: int = 1
    media: str = "CD"
    image: Path | None = None
    data: list[tuple[Path, str]] = field(default_factory=list)
    size: int = 0
    compare: bool = False
    in_stacker: int | None = None  # None: any input stacker with the right media
    priority: int = 0
    client_id: str = ""
    label_files: list[Path] = field(default_factory=list)
    merge_fields: list[str] = field(default_factory=list)
    state: str = "queued"  # queued, running, paused, done, failed, cancelled, rejected
    phase: str = ""  # load, write, verify, print, unload
    phase_left: float = 0.0
    disc: int = 0  # the disc being made, 1-based
    good: int = 0
    bad: int = 0
    failed_disc: int = 0
    waiting: str = ""  # what the robot waits for: input_empty, output_full, cover_open, ""
    error: str = ""  # vendor error code / number
    error_text: str = ""
    delivered: bool = False
    created: float = field(default_factory=time.time)
    started: float = 0.0
    completed: float = 0.0
    accept_left: float = 0.0
    log: list[dict] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running", "paused")

    def to_dict(self) -> dict:
        doc = {k: v for k, v in vars(self).items() if k != "log"}
        doc["path"] = str(self.path)
        doc["image"] = str(self.image) if self.image else None
        doc["data"] = [[str(s), d] for s, d in self.data]
        doc["label_files"] = [str(p) for p in self.label_files]
        return doc

    @classmethod
    def from_dict(cls, doc: dict) -> Job:
        doc = dict(doc)
        doc["path"] = Path(doc["path"])
        doc["image"] = Path(doc["image"]) if doc.get("image") else None
        doc["data"] = [(Path(s), d) for s, d in doc.get("data", [])]
        doc["label_files"] = [Path(p) for p in doc.get("label_files", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})


class Robot:
    """One simulated robot: mechanism state and faults."""

    def __init__(self, name: str, kind: str, stackers: list[Stacker], inks: dict[str, int], drives: int,
                 speed: float) -> None:
        self.name = name
        self.kind = kind
        self.stackers = stackers
        self.inks = dict(inks)
        self.drives = drives
        self.speed = speed
        self.faults: dict[str, bool] = {f: False for f in FAULTS}
        self.write_error_at: int | None = None  # armed write error: the Nth disc of a job fails
        self.plugged = True
        self.drive_state = "idle"  # idle, loaded, writing, verifying
        self.drive_percent = 0
        self.discs_made = 0

    # -- state -----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Plugged in and online: the engine picks up jobs and rewrites its status files."""
        return self.plugged and not self.faults["offline"]

    def inputs(self) -> list[Stacker]:
        return [s for s in self.stackers if s.role == "input"]

    def outputs(self) -> list[Stacker]:
        return [s for s in self.stackers if s.role == "output"]

    def media_loaded(self) -> list[str]:
        return sorted({s.media for s in self.inputs()}, key=list(MEDIA_CAPACITY).index)

    def ink_low(self) -> bool:
        return self.faults["ink_low"] or min(self.inks.values()) < 10

    # -- operator actions ------------------------------------------------------------------------
    def set_fault(self, fault: str, on: bool, arg: int | None = None) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r} (one of {', '.join(FAULTS)})")
        if fault == "write_error":
            if on and (arg is None or arg < 1):
                raise ValueError("write_error needs the disc number N ≥ 1: fault write_error N on")
            self.write_error_at = arg if on else None
            self.faults["write_error"] = on
            return
        self.faults[fault] = on
        if fault == "ink_low":
            for colour in self.inks:
                self.inks[colour] = min(self.inks[colour], 5) if on else 100
        if fault == "output_full" and not on:
            for stacker in self.outputs():
                stacker.count = 0  # the operator took the discs away

    def refill(self, count: int | None = None) -> None:
        """The operator fills every input stacker (to capacity, or `count` discs) and empties the
        output stackers; an input_empty fault is cleared."""
        for stacker in self.inputs():
            stacker.count = stacker.capacity if count is None else max(0, min(count, stacker.capacity))
        for stacker in self.outputs():
            stacker.count = 0
        self.faults["input_empty"] = False
        self.faults["output_full"] = False

    # -- the disc cycle --------------------------------------------------------------------------
    def pick_stacker(self, job: Job) -> Stacker | None:
        if self.faults["input_empty"]:
            return None
        candidates = [s for s in self.inputs() if s.media == job.media and s.count > 0]
        if job.in_stacker is not None:
            candidates = [s for s in candidates if s.number == job.in_stacker]
        return candidates[0] if candidates else None

    def output_space(self) -> Stacker | None:
        if self.faults["output_full"]:
            return None
        for stacker in self.outputs():
            if stacker.count < stacker.capacity:
                return stacker
        return None

    def seconds(self, phase: str, job: Job) -> float:
        if phase in ("write", "verify"):
            real = LEAD_SECONDS + job.size / WRITE_RATE.get(job.media, 3.6e6)
        else:
            real = {"load": LOAD_SECONDS, "print": PRINT_SECONDS, "unload": UNLOAD_SECONDS}[phase]
        return real * self.speed

    def remaining_seconds(self, job: Job) -> int:
        """Seconds (already scaled by --speed) until the job's last disc is out."""
        phases = self.phases(job)
        per_disc = sum(self.seconds(p, job) for p in phases)
        left = 0.0
        if job.phase in phases:  # the rest of the disc in the robot
            rest = phases[phases.index(job.phase) + 1:]
            left = max(job.phase_left, 0.0) + sum(self.seconds(p, job) for p in rest)
        discs_after = max(0, job.copies - max(job.disc, 0))
        return int(left + per_disc * discs_after + 0.5)

    @staticmethod
    def phases(job: Job) -> list[str]:
        return ["load", "write"] + (["verify"] if job.compare else []) + ["print", "unload"]

    def step(self, job: Job, dt: float) -> str:
        """Advance a running (or paused) job by `dt` seconds. Returns what happened:
        "paused", "resumed", "waiting", "progress", "written" (a disc was written), "disc_done",
        "disc_failed" (write error: the job ends), "done"."""
        if self.faults["cover_open"]:
            job.waiting = "cover_open"
            if job.state != "paused":
                job.state = "paused"
                return "paused"
            return "waiting"
        if job.state == "paused":
            job.state = "running"
            job.waiting = ""
            return "resumed"
        if not job.phase:
            job.disc += 1
            job.phase, job.phase_left = "load", 0.0
            return self._enter(job)
        job.phase_left -= dt
        if job.phase_left > 0:
            return "progress"
        return self._finish_phase(job)

    def _enter(self, job: Job) -> str:
        """Start the current phase if the mechanism allows it."""
        if job.phase == "load":
            stacker = self.pick_stacker(job)
            if stacker is None:
                job.waiting = "input_empty"
                return "waiting"
            stacker.count -= 1
            self.drive_state, self.drive_percent = "loaded", 0
        elif job.phase == "unload":
            if self.output_space() is None:
                job.waiting = "output_full"
                return "waiting"
        elif job.phase in ("write", "verify"):
            self.drive_state = "writing" if job.phase == "write" else "verifying"
        job.waiting = ""
        job.phase_left = self.seconds(job.phase, job)
        job.log.append({"disc": job.disc, "phase": job.phase, "at": time.time()})
        return "progress"

    def _finish_phase(self, job: Job) -> str:
        if job.waiting:  # still waiting to enter this phase
            return self._enter(job)
        phases = self.phases(job)
        if job.phase == "write":
            self.drive_percent = 100
            if self.write_error_at is not None and job.disc == self.write_error_at:
                self.write_error_at = None  # one bad disc, then the fault is spent
                self.faults["write_error"] = False
                self.drive_state, self.drive_percent = "idle", 0
                job.bad += 1
                job.failed_disc = job.disc
                job.phase = ""
                return "disc_failed"
            event = "written"
        else:
            event = "progress"
        if job.phase == "print":
            for colour in self.inks:
                self.inks[colour] = max(0, self.inks[colour] - 1)
        if job.phase == "unload":
            stacker = self.output_space()
            if stacker is not None:
                stacker.count += 1
            self.drive_state, self.drive_percent = "idle", 0
            self.discs_made += 1
            job.good += 1
            job.phase = ""
            return "done" if job.disc >= job.copies else "disc_done"
        job.phase = phases[phases.index(job.phase) + 1]
        entered = self._enter(job)
        return event if entered == "progress" else entered

    def progress_percent(self, job: Job) -> int:
        if job.phase in ("write", "verify"):
            total = self.seconds(job.phase, job)
            return 100 if total <= 0 else int(100 * (1 - max(job.phase_left, 0) / total))
        return 0

    def load_counts(self, doc: dict) -> None:
        """Stacker and ink levels kept from a previous run (what a power cycle does not change)."""
        counts = {s.get("number"): s.get("count") for s in doc.get("stackers", [])}
        for stacker in self.stackers:
            if isinstance(counts.get(stacker.number), int):
                stacker.count = counts[stacker.number]
        for colour, level in doc.get("ink", {}).items():
            if colour in self.inks and isinstance(level, int):
                self.inks[colour] = level
        self.discs_made = int(doc.get("discs_made", 0))

    def snapshot(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "plugged": self.plugged,
            "online": self.running,
            "faults": {k: v for k, v in self.faults.items()},
            "write_error_at": self.write_error_at,
            "stackers": [vars(s).copy() for s in self.stackers],
            "ink": dict(self.inks),
            "drive": {"state": self.drive_state, "percent": self.drive_percent},
            "discs_made": self.discs_made,
        }
