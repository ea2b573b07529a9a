"""Storage retention: which received studies are deleted, when, and the purge that deletes them.

A box that is never looked after must not fill its disk (then every C-STORE is refused, A700):

- age: a study whose every disc job is done (none queued, building, in a robot or failed), and
  whose last disc finished more than `storage.purge_after_days` ago, is deleted (0 = never);
- water marks: when the data disk is fuller than `storage.high_water_percent` (or its free space
  nears twice `dicom.min_free_mb`, whichever comes first), burned studies go oldest disc first
  until the disk is under `storage.low_water_percent` (the same band below the trigger);
- never automatically: a study with an unburned arrival (an instance on no done disc made after
  it arrived: a re-sent instance makes its study unburned again), an instance in a pending
  delayed group, a job not finished, or a valid patient token (`token_protection`); a study
  whose unburned instances all arrived on the plain AE title (archive, not for burning) only after
  `storage.purge_unburned_after_days` (0 = never) since its last arrival.

A deletion removes the study's files, its index rows (so C-FIND no longer finds it) and the built
disc images (with their previews) of its done jobs; the job history stays. Each study is deleted
under the store's purge lock and re-checked inside the index transaction that deletes its rows,
so an instance arriving meanwhile either keeps the study (unburned again) or starts it anew after.
`plan` is what `storage purge --dry-run` lists; `purge` executes exactly that plan (re-checked).
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance import db, index, storage, trail
from appliance.burn import jobs, routing
from appliance.config import Settings
from appliance.portal import tokens

LOG = logging.getLogger("burnstation.retention")
DAY = 86400.0


@dataclass
class Verdict:
    """What retention thinks of one study now."""

    study_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    instances: int
    size: int
    last_received: float
    last_done: float | None
    kind: str  # "burned" | "archive" | "unburned"
    protected: str = ""  # why it is never deleted automatically ('' when it may be)
    due_at: float | None = None  # when the age rule deletes it (None: never by age)
    reason: str = ""  # why a plan deletes it
    done_jobs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def token_protection(conn: sqlite3.Connection, study_uid: str, now: float) -> str:
    """'' or why a valid patient token keeps the study (it goes when the token expires)."""
    until = tokens.valid_until_for_study(conn, study_uid, now)
    if until is None:
        return ""
    return f"a patient link is valid until {time.strftime('%Y-%m-%d %H:%M', time.localtime(until))}"


# --------------------------------------------------------------------------- disk


@dataclass
class Disk:
    total: int
    free: int

    @property
    def used_percent(self) -> float:
        return 100.0 * (self.total - self.free) / self.total if self.total else 0.0


def disk_usage(data_dir: Path) -> Disk:
    usage = shutil.disk_usage(data_dir)
    return Disk(usage.total, usage.free)


def water_marks(settings: Settings, disk: Disk) -> tuple[int, int]:
    """(free bytes below which purging starts, free bytes at which it stops). The start is the high
    mark, or twice `dicom.min_free_mb` when that is more, so purging always begins before C-STORE
    is refused; the stop is the start plus the band between the two marks."""
    high, low = settings.get("storage.high_water_percent"), settings.get("storage.low_water_percent")
    min_free = int(settings.get("dicom.min_free_mb")) * 1024 * 1024
    start = max(int(disk.total * (100 - high) / 100), 2 * min_free)
    return start, start + int(disk.total * (high - low) / 100)


# --------------------------------------------------------------------------- deciding


def _verdict(study: dict[str, Any], facts: dict[str, Any] | None, pending: set[str], burn_aets: set[str],
             settings: Settings, conn: sqlite3.Connection, now: float, older_than_days: int | None) -> Verdict:
    facts = facts or {"unburned": study["instances"], "last_done": None, "active": 0, "failed": 0, "done_jobs": [],
                      "unburned_for_burning": study["instances"] if set(study["called_aets"]) & burn_aets else 0}
    v = Verdict(study["study_uid"], study["patient_id"], study["patient_name"], study["study_date"],
                int(study["instances"]), int(study["size"]), float(study["last_received"] or 0.0),
                facts["last_done"], "burned", done_jobs=list(facts["done_jobs"]))
    if facts["unburned"]:  # unburned instances all received on the plain AE title: an archive study
        v.kind = "unburned" if facts["unburned_for_burning"] else "archive"
    if study["study_uid"] in pending:
        v.protected = "an instance waits in a pending delayed group"
    elif facts["active"]:
        v.protected = f"{facts['active']} disc job(s) not finished"
    elif facts["failed"]:
        v.protected = f"{facts['failed']} failed disc job(s): retry or cancel them"
    elif v.kind == "unburned":
        v.protected = "received for burning and not (or not all) burned yet"
    else:
        v.protected = token_protection(conn, study["study_uid"], now)
    if v.protected:
        return v
    if v.kind == "archive":
        days = settings.get("storage.purge_unburned_after_days")
        if not days:
            v.protected = "archive (received on the plain AE title); storage.purge_unburned_after_days = 0"
        else:
            v.due_at = v.last_received + days * DAY
        return v
    days = settings.get("storage.purge_after_days") if older_than_days is None else older_than_days
    if days or older_than_days is not None:
        v.due_at = (v.last_done or 0.0) + days * DAY
    return v


def assess(conn: sqlite3.Connection, settings: Settings, now: float | None = None,
           older_than_days: int | None = None, study_uid: str | None = None) -> list[Verdict]:
    """A verdict for every indexed study (or one), oldest last disc first."""
    now = time.time() if now is None else now
    studies = index.study_overview(conn, study_uid)
    burn_aets = set(routing.routes(settings))
    facts = jobs.study_burn_facts(conn, study_uid, sorted(burn_aets))
    pending = routing.studies_in_pending_groups(conn)
    verdicts = [_verdict(s, facts.get(s["study_uid"]), pending, burn_aets, settings, conn, now, older_than_days)
                for s in studies]
    verdicts.sort(key=lambda v: (v.last_done or v.last_received, v.last_received, v.study_uid))
    return verdicts


@dataclass
class Plan:
    """What a purge deletes now, in order, and why; and what the disk looks like."""

    disk: Disk
    start_free: int
    stop_free: int
    delete: list[Verdict]
    keep: list[Verdict]

    def to_json(self) -> dict[str, Any]:
        return {"total_bytes": self.disk.total, "free_bytes": self.disk.free,
                "used_percent": round(self.disk.used_percent, 2), "purge_below_free_bytes": self.start_free,
                "purge_until_free_bytes": self.stop_free, "delete": [v.to_json() for v in self.delete],
                "keep": [v.to_json() for v in self.keep]}


def plan(conn: sqlite3.Connection, settings: Settings, data_dir: Path, now: float | None = None,
         older_than_days: int | None = None, disk: Disk | None = None) -> Plan:
    """Due studies (age rules), then, while the disk would still be above the water mark, the
    oldest burned studies; each with its reason. Freed space is counted from the index sizes."""
    now = time.time() if now is None else now
    disk = disk or disk_usage(data_dir)
    start, stop = water_marks(settings, disk)
    verdicts = assess(conn, settings, now, older_than_days)
    delete: list[Verdict] = []
    chosen: set[str] = set()
    free = disk.free
    for v in verdicts:
        if not v.protected and v.due_at is not None and v.due_at <= now:
            age = (now - (v.last_received if v.kind == "archive" else (v.last_done or 0))) / DAY
            v.reason = (f"archive study, last arrival {age:.1f} days ago" if v.kind == "archive"
                        else f"burned, last disc {age:.1f} days ago")
            delete.append(v)
            chosen.add(v.study_uid)
            free += v.size
    if free < start:
        for v in verdicts:
            if free >= stop:
                break
            if v.protected or v.study_uid in chosen or v.kind != "burned":
                continue
            v.reason = f"disk above the high water mark ({disk.used_percent:.1f}% used): oldest burned first"
            delete.append(v)
            chosen.add(v.study_uid)
            free += v.size
    return Plan(disk, start, stop, delete, [v for v in verdicts if v.study_uid not in chosen])


# --------------------------------------------------------------------------- deleting


def purge(conn: sqlite3.Connection, settings: Settings, data_dir: Path, the_plan: Plan,
          now: float | None = None, older_than_days: int | None = None) -> list[dict[str, Any]]:
    """Delete the studies of `the_plan`, each re-checked under the purge lock and inside the index
    transaction (skipped when it may no longer go, e.g. an instance of it just arrived)."""
    now = time.time() if now is None else now
    root = Path(data_dir) / "storage"
    lock = storage.PurgeLock(data_dir)
    done: list[dict[str, Any]] = []
    for planned in the_plan.delete:
        with lock.purge():
            with db.transaction(conn):
                again = assess(conn, settings, now, older_than_days, study_uid=planned.study_uid)
                if not again or again[0].protected or (again[0].kind == "unburned"):
                    why = again[0].protected if again else "no longer in the index"
                    LOG.info("not purging study %s: %s", planned.study_uid, why)
                    continue
                paths = index.delete_study_in(conn, planned.study_uid)
            removed, freed = storage.remove_study_files(root, paths)
        for job_id in planned.done_jobs:
            folder = Path(data_dir) / "discs" / job_id
            if jobs.JOB_ID_RE.match(job_id) and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
        record = {"study_uid": planned.study_uid, "patient_id": planned.patient_id, "study_date": planned.study_date,
                  "instances": len(paths), "files_removed": removed, "bytes_freed": freed,
                  "reason": planned.reason, "jobs": planned.done_jobs}
        trail.record("study.purged", planned.study_uid, record, data_dir, actor="retention")
        done.append(record)
    return done


PASS_LIMIT = 50  # studies one automatic pass deletes at most (the burner's routing waits meanwhile)


def run_once(conn: sqlite3.Connection, settings: Settings, data_dir: Path,
             now: float | None = None) -> list[dict[str, Any]]:
    """One automatic pass (the burner's timer): plan with the settings, delete what is due (the
    first PASS_LIMIT of it; the next pass goes on)."""
    the_plan = plan(conn, settings, data_dir, now)
    the_plan.delete = the_plan.delete[:PASS_LIMIT]
    return purge(conn, settings, data_dir, the_plan, now) if the_plan.delete else []


class Timer:
    """When the burner runs a pass: every `check_seconds` it looks at the disk (one statvfs) and
    purges at once above the water mark; the age rules are applied every `age_seconds`. Above the
    mark with nothing that may go (all unburned, say), it looks again only after `idle_seconds`
    (and says so once), rather than assessing every study every few seconds."""

    def __init__(self, settings: Settings, data_dir: Path, check_seconds: float = 2.0, age_seconds: float = 300.0,
                 idle_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.data_dir = settings, Path(data_dir)
        self.check_seconds, self.age_seconds, self.idle_seconds = check_seconds, age_seconds, idle_seconds
        self.clock = clock
        self._checked = self._aged = self._idle_until = -1e18
        self._warned = False

    def due(self) -> bool:
        now = self.clock()
        if now - self._checked < self.check_seconds:
            return False
        self._checked = now
        if now - self._aged >= self.age_seconds:
            self._aged = now
            return True
        if now < self._idle_until:
            return False
        disk = disk_usage(self.data_dir)
        return disk.free < water_marks(self.settings, disk)[0]

    def done(self, deleted: list[dict[str, Any]]) -> None:
        """After a pass: back off while the disk stays above the mark and nothing could go."""
        disk = disk_usage(self.data_dir)
        if len(deleted) >= PASS_LIMIT:
            self._aged = -1e18  # more may be due: the next tick is a full pass again
        if deleted or disk.free >= water_marks(self.settings, disk)[0]:
            self._idle_until, self._warned = -1e18, False
            return
        self._idle_until = self.clock() + self.idle_seconds
        if not self._warned:
            self._warned = True
            LOG.warning("data disk %.1f%% used, above the high water mark, and no study may be deleted "
                        "(unburned, pending or unfinished): see `burnstation storage status`", disk.used_percent)


def status(conn: sqlite3.Connection, settings: Settings, data_dir: Path, now: float | None = None) -> dict[str, Any]:
    """`burnstation storage status`: usage, what a purge now would delete, and what goes next and when."""
    now = time.time() if now is None else now
    the_plan = plan(conn, settings, data_dir, now)
    upcoming = sorted((v for v in the_plan.keep if not v.protected and v.due_at is not None),
                      key=lambda v: v.due_at or 0.0)
    counts: dict[str, int] = {}
    for v in the_plan.keep + the_plan.delete:
        counts[v.kind] = counts.get(v.kind, 0) + 1
    out = the_plan.to_json()
    out.pop("keep")
    out.update({
        "data_dir": str(data_dir), "studies": counts,
        "settings": {k: settings.get(k) for k in ("storage.purge_after_days", "storage.high_water_percent",
                                                 "storage.low_water_percent", "storage.purge_unburned_after_days",
                                                 "dicom.min_free_mb")},
        "next": [v.to_json() for v in upcoming[:20]],
        "protected": [v.to_json() for v in the_plan.keep if v.protected][:50],
    })
    return out


def _fmt(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def render_status(report: dict[str, Any]) -> str:
    mb = 1024 * 1024
    lines = [f"Data disk: {report['used_percent']:.1f}% used, {report['free_bytes'] // mb} MB free of "
             f"{report['total_bytes'] // mb} MB ({report['data_dir']})",
             f"Purging starts below {report['purge_below_free_bytes'] // mb} MB free and stops at "
             f"{report['purge_until_free_bytes'] // mb} MB free",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items()),
             "Studies: " + (", ".join(f"{n} {k}" for k, n in sorted(report["studies"].items())) or "none")]
    lines.append("A purge now would delete:" if report["delete"] else "A purge now would delete nothing.")
    for v in report["delete"]:
        lines.append(f"  {v['study_uid']}  {v['patient_id']}  {v['size'] // mb} MB  {v['reason']}")
    if report["next"]:
        lines.append("Next by age:")
        for v in report["next"]:
            lines.append(f"  {_fmt(v['due_at'])}  {v['study_uid']}  {v['patient_id']}  ({v['kind']})")
    if report["protected"]:
        lines.append("Kept (never deleted automatically):")
        for v in report["protected"]:
            lines.append(f"  {v['study_uid']}  {v['patient_id']}  {v['protected']}")
    return "\n".join(lines)
