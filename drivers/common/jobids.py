"""Robot job ids (one per disc and attempt), found again from the files alone; the ledger of ours;
one job state from the discs' states; an unexplained failure held back."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from appliance import publish
from drivers.common.values import checked_id


def robot_job_id(job_id: str, disc: int, disc_count: int, attempt: int, max_len: int) -> str:
    """The robot's job id for one disc and attempt: `<job>`, `<job>-D2of3`, `<job>-R2`, `<job>-D2of3-R2`.

    The base is cut when the protocol's limit requires it, so the result always fits `max_len`.
    """
    suffix = (f"-D{disc}of{disc_count}" if disc_count > 1 else "") + (f"-R{attempt}" if attempt > 1 else "")
    return job_id[: max_len - len(suffix)] + suffix


@dataclass(frozen=True)
class RobotJobRef:
    stem: str
    disc: int
    disc_count: int
    attempt: int


def match_robot_job(stem: str, job_id: str, max_len: int) -> RobotJobRef | None:
    """Whether `stem` (a job file name without extension, or a status section) is a robot job of `job_id`."""
    splits: list[tuple[str, int]] = [(stem, 1)]
    m = re.fullmatch(r"(.+)-R(\d{1,4})", stem)
    if m:
        splits.append((m.group(1), int(m.group(2))))
    for head, attempt in splits:
        options: list[tuple[int, int]] = [(1, 1)]
        d = re.fullmatch(r"(.+)-D(\d{1,3})of(\d{1,3})", head)
        if d:
            options.append((int(d.group(2)), int(d.group(3))))
        for disc, count in options:
            if attempt < 1 or disc < 1 or count < 1 or disc > count:
                continue
            canonical = robot_job_id(job_id, disc, count, attempt, max_len)
            if canonical.lower() == stem.lower():  # status sections come lower-cased
                return RobotJobRef(canonical, disc, count, attempt)
    return None


@dataclass
class FoundJobFile:
    ref: RobotJobRef
    ext: str  # upper case, no dot
    path: Path


def find_job_files(folders: Iterable[Path], job_id: str, extensions: Iterable[str],
                   max_len: int) -> list[FoundJobFile]:
    """Every job file of `job_id` (all discs and attempts) in the given folders."""
    wanted = {e.upper() for e in extensions}
    found: list[FoundJobFile] = []
    prefix = job_id[: max(1, max_len - 16)].lower()  # what survives the longest suffix's cut
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            stem, dot, ext = name.rpartition(".")
            if not dot or ext.upper() not in wanted or not stem.lower().startswith(prefix):
                continue
            ref = match_robot_job(stem, job_id, max_len)
            if ref is not None:
                found.append(FoundJobFile(ref, ext.upper(), Path(entry.path)))
    return found


def latest_per_disc(refs: Iterable[RobotJobRef]) -> dict[int, RobotJobRef]:
    """For each disc, the robot job of its highest attempt."""
    best: dict[int, RobotJobRef] = {}
    for ref in refs:
        cur = best.get(ref.disc)
        if cur is None or ref.attempt > cur.attempt:
            best[ref.disc] = ref
    return best


@dataclass
class DiscState:
    ref: RobotJobRef
    progress: publish.JobProgress


def aggregate(discs: list[DiscState], disc_count: int) -> publish.JobProgress:
    """The job's state from its discs' states (every disc must be known)."""
    if not discs:
        return publish.JobProgress(publish.UNKNOWN, message="the robot does not know this job")
    if len(discs) < disc_count:
        return publish.JobProgress(publish.UNKNOWN, message="not every disc of the job reached the robot")
    progs = [d.progress for d in discs]
    total = publish.JobProgress(
        publish.BURNING,
        progress=sum(p.progress for p in progs) / disc_count,
        discs_done=sum(p.discs_done for p in progs),
        discs_failed=sum(p.discs_failed for p in progs),
    )

    def label(d: DiscState, text: str) -> str:
        return f"disc {d.ref.disc} of {disc_count}: {text}" if disc_count > 1 else text

    for wanted in (publish.FAILED, publish.CANCELLED, publish.WAITING, publish.BURNING):
        hits = [d for d in discs if d.progress.state == wanted]
        if hits:
            if wanted == publish.WAITING and any(d.progress.state == publish.BURNING for d in discs) \
                    and not any(d.progress.error_code for d in hits):
                continue  # a disc burning beats one merely queued behind it
            total.state = wanted
            total.message = label(hits[0], hits[0].progress.message)
            total.error_code = hits[0].progress.error_code
            return total
    total.state = publish.DONE
    total.progress = 1.0
    total.message = "done"
    return total


class SubmittedLedger:
    """The robot job ids this station wrote into a spool, kept in the data folder.

    Job ids repeat when a station's state is reset (a re-initialised box numbers its jobs from 1
    again) while the engine still keeps the old job files and status entries for days. A job file
    the ledger does not list is someone else's: `poll` ignores it and `submit` burns under a new
    attempt id instead of taking that old ".DON" for this job's. Each id is written (fsync'd)
    before its job file, so a crash in between never makes our own job look foreign.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known: set[str] = set()
        self._size = -1

    def _load(self) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            size = 0
        if size != self._size:
            try:
                text = self.path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            self._known = {line.strip().lower() for line in text.splitlines() if line.strip()}
            self._size = size

    def known(self, stem: str) -> bool:
        self._load()
        return stem.lower() in self._known

    def add(self, stems: Iterable[str]) -> None:
        stems = [s for s in stems if not self.known(s)]
        if not stems:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(f"{s}\n" for s in stems))
            fh.flush()
            os.fsync(fh.fileno())
        self._size = -1


def ledger_for(data_dir: Path | None, robot_name: str) -> SubmittedLedger | None:
    if data_dir is None:
        return None
    return SubmittedLedger(Path(data_dir) / "drivers" / checked_id(robot_name, 64, "robot name") / "submitted.txt")


@dataclass
class ErrorReportWait:
    """Holds back a failure the engine has not explained yet.

    An engine renames a job file to .ERR and rewrites its status file (with the error) a moment
    later; a poll in between would fail the job with no reason, or call a cancelled job failed. So a
    failure without an error code, or one with a cancel request still unanswered, is reported as
    still running until the status file has been rewritten after we first saw it, for at most
    `grace` seconds.
    """

    grace: float = 20.0
    first_seen: dict[str, float] = field(default_factory=dict)

    def settle(self, stem: str, progress: publish.JobProgress, cancel_pending: bool,
               status_mtime: float) -> publish.JobProgress:
        if progress.state != publish.FAILED or (progress.error_code and not cancel_pending):
            self.first_seen.pop(stem, None)
            return progress
        now = time.time()
        first = self.first_seen.setdefault(stem, now)
        if now - first < self.grace and (status_mtime <= first or cancel_pending):
            return publish.JobProgress(publish.BURNING, progress.progress,
                                       "finishing: waiting for the engine's report", "",
                                       progress.discs_done, progress.discs_failed)
        return progress
