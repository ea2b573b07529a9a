"""What both publishing engines share: taking a job file only once it stopped changing, one job at
a time through the robot's disc cycle, renaming the job file at each step, and the output bin."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from . import files
from .robot import Job, Robot

log = logging.getLogger("burnstation_sim")

MIN_AGE = 0.3  # seconds since a job file was last written before it is read


class Engine:
    """Base of EpsonEngine and PrimeraEngine. Subclasses set the file extensions and codes."""

    kind = ""
    vendor = ""
    vendor_id = ""
    product_id = ""
    model = ""
    paused_ext: str | None = None  # Epson renames a paused job to .STP; PTBurn leaves it .INP
    job_ext = ""  # what a client drops: JDF / JRQ
    queued_ext = ""  # accepted, not started: RJD / QRJ
    in_progress_exts: tuple[str, ...] = ()
    default_encoding = "ascii"  # the job files' code page unless --encoding names another

    def __init__(self, robot: Robot, folder: Path, bin_root: Path,
                 path_maps: list[tuple[str, Path]] | None = None) -> None:
        self.robot = robot
        self.folder = folder
        self.bin_root = bin_root
        self.path_maps = path_maps or []  # (path prefix as the client writes it, local folder)
        self.jobs: dict[str, Job] = {}  # by job id, in order of arrival
        self.seen: dict[Path, tuple[int, int]] = {}
        self.folder.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.state_path: Path | None = None
        self._saved = ""
        self.encoding = self.default_encoding

    def decode(self, raw: bytes) -> str:
        """A job or command file's text, strictly in the configured code page: UnicodeDecodeError
        for a byte it lacks. A byte-order mark is not special: it becomes part of the first key."""
        return raw.decode(self.encoding)

    # -- hooks -----------------------------------------------------------------------------------
    def scan(self) -> None:
        raise NotImplementedError

    def write_status(self) -> None:
        raise NotImplementedError

    def deliver(self, job: Job) -> None:
        raise NotImplementedError

    def fail_write(self, job: Job) -> None:
        """Set the vendor's code for a write error on job.failed_disc."""
        raise NotImplementedError

    # -- the tick --------------------------------------------------------------------------------
    def tick(self, dt: float) -> None:
        """One engine cycle; nothing at all happens while the robot is unplugged or offline (the
        status files go stale)."""
        if not self.robot.running:
            return
        self.scan()
        self.advance(dt)
        self.write_status()

    def stable(self, path: Path) -> bool:
        """A file is taken once its size and mtime held still for one tick and it was last written
        at least MIN_AGE seconds ago (robust against a client that writes in place instead of
        renaming in, as long as it does not pause longer than that)."""
        try:
            st = path.stat()
        except FileNotFoundError:
            self.seen.pop(path, None)
            return False
        sig = (st.st_size, st.st_mtime_ns)
        if self.seen.get(path) != sig or time.time() - st.st_mtime < MIN_AGE:
            self.seen[path] = sig
            return False
        del self.seen[path]
        return True

    def arrivals(self, pattern: str) -> list[Path]:
        found = []
        for path in self.folder.glob(pattern):
            try:
                found.append((path.stat().st_mtime_ns, path.name, path))
            except FileNotFoundError:
                continue
        return [p for _, _, p in sorted(found) if self.stable(p)]

    def resolve(self, value: str) -> Path:
        """A path named in a job file, as this engine sees it: a mapped prefix (for example a
        Windows share `Z:\\spool`) is replaced by its local folder; a relative path is relative to
        the watched folder."""
        for prefix, local in self.path_maps:
            if value.lower().startswith(prefix.lower()):
                rest = value[len(prefix):].replace("\\", "/").lstrip("/")
                return local / rest if rest else local
        path = Path(value)
        return path if path.is_absolute() else self.folder / path

    def bin_dir(self, job: Job) -> Path:
        return self.bin_root / job.job_id

    def current(self) -> Job | None:
        return next((j for j in self.jobs.values() if j.state in ("running", "paused")), None)

    def queue_key(self, job: Job) -> int:
        """Jobs with the smaller key go first (Epson: PRIORITY=HIGH is 1, so -1)."""
        return -job.priority

    def queued(self) -> list[Job]:
        ready = [j for j in self.jobs.values() if j.state == "queued" and j.accept_left <= 0]
        return sorted(ready, key=self.queue_key)  # stable: arrival order among equals

    def operator_cancel(self, job_id: str = "") -> str:
        """The operator cancels a job at the robot (the running one when no id is given); returns
        its id. How the job ends is the engine's (`cancelled_at_robot`)."""
        active = [j for j in self.jobs.values() if j.active]
        job = next((j for j in active if j.job_id == job_id), None) if job_id else (self.current() or (
            active[0] if active else None))
        if job is None:
            raise ValueError(f"no active job {job_id!r}" if job_id else "no active job")
        self.cancelled_at_robot(job)
        return job.job_id

    def cancelled_at_robot(self, job: Job) -> None:
        self.abort(job)

    def advance(self, dt: float) -> None:
        for job in self.jobs.values():
            if job.state == "queued" and job.accept_left > 0:
                job.accept_left -= dt
        job = self.current()
        if job is None:
            ready = self.queued()
            if not ready or self.robot.faults["cover_open"]:
                return
            job = ready[0]
            job.state, job.started = "running", time.time()
            job.path = files.rename_ext(job.path, "INP")
            return
        event = self.robot.step(job, dt)
        if job.phase in ("write", "verify"):
            self.robot.drive_percent = self.robot.progress_percent(job)
        if event == "paused" and self.paused_ext:
            job.path = files.rename_ext(job.path, self.paused_ext)
        elif event == "resumed" and self.paused_ext:
            job.path = files.rename_ext(job.path, "INP")
        elif event == "written" and not job.delivered:
            try:
                self.deliver(job)
            except (OSError, ValueError) as exc:  # e.g. a source vanished: the disc is kept as far as it got
                log.warning("%s: job %s: could not keep the disc content: %s", self.robot.name, job.job_id, exc)
                job.delivered = True
        elif event == "disc_failed":
            job.state = "failed"
            self.fail_write(job)
            self.finish(job, "ERR")
        elif event == "done":
            job.state = "done"
            self.finish(job, "DON")
        if event in ("disc_done", "done", "disc_failed"):
            self.record_disc(job, ok=event != "disc_failed")

    def finish(self, job: Job, ext: str) -> None:
        job.completed = time.time()
        job.phase, job.waiting = "", ""
        job.path = files.rename_ext(job.path, ext)
        log.info("%s: job %s %s%s", self.robot.name, job.job_id, job.state,
                 f" ({job.error} {job.error_text})" if job.error else "")

    def abort(self, job: Job) -> None:
        if job.state in ("running", "paused"):
            self.robot.drive_state, self.robot.drive_percent = "idle", 0
        job.state = "cancelled"
        self.finish(job, "ERR")

    def record_disc(self, job: Job, ok: bool) -> None:
        """`discs.json` in the bin: one entry per disc made (or spoiled)."""
        manifest = self.bin_dir(job) / "discs.json"
        discs = json.loads(manifest.read_text()) if manifest.exists() else []
        discs.append({"disc": job.disc, "result": "ok" if ok else "write error", "media": job.media})
        files.write_atomic(manifest, json.dumps(discs, indent=1).encode())

    def save_received(self, job: Job, raw: bytes) -> None:
        bin_dir = self.bin_dir(job)
        bin_dir.mkdir(parents=True, exist_ok=True)
        files.write_atomic(bin_dir / job.received_name, raw)

    def snapshot(self) -> dict:
        return {j.job_id: {"state": j.state, "file": j.path.name, "copies": j.copies, "good": j.good,
                           "bad": j.bad, "error": j.error, "error_text": j.error_text, "waiting": j.waiting}
                for j in self.jobs.values()}

    # -- surviving a restart of the simulator ----------------------------------------------------
    def state_doc(self) -> dict:
        return {"robot": self.robot.snapshot(), "jobs": [j.to_dict() for j in self.jobs.values()]}

    def save_state(self) -> None:
        """Keep jobs and stacker/ink levels in ROOT/state/<name>.json (when they changed)."""
        if self.state_path is None:
            return
        text = json.dumps(self.state_doc(), sort_keys=True)
        if text != self._saved:
            files.write_atomic(self.state_path, text.encode(), fsync=False)
            self._saved = text

    def load_state(self, state_path: Path) -> None:
        """Pick up where a previous run on the same ROOT and SPOOL stopped: finished jobs stay in
        the status file, jobs that were in the robot start again with the discs not yet made (a
        restarted engine re-queues them); in-progress job files it knows nothing of are taken anew."""
        self.state_path = state_path
        if state_path.exists():
            try:
                doc = json.loads(state_path.read_text())
            except (OSError, ValueError):
                log.warning("%s: state file %s unreadable, starting afresh", self.robot.name, state_path)
                doc = {}
            self.robot.load_counts(doc.get("robot", {}))
            for item in doc.get("jobs", []):
                job = Job.from_dict(item)
                if job.active:
                    self.requeue(job)
                self.jobs[job.job_id] = job
            self.load_extra(doc)
        known = {j.path.name for j in self.jobs.values()}
        for ext in self.in_progress_exts:
            for path in self.folder.glob(f"*.{ext}"):
                if path.name not in known:
                    log.info("%s: %s from an earlier run is taken again", self.robot.name, path.name)
                    files.rename_ext(path, self.job_ext)

    def load_extra(self, doc: dict) -> None:
        """Subclasses restore what else they keep in state_doc."""

    def requeue(self, job: Job) -> None:
        for ext in self.in_progress_exts:
            candidate = job.path.with_suffix("." + ext)
            if candidate.exists():
                job.path = files.rename_ext(candidate, self.queued_ext)
                break
        job.state, job.phase, job.waiting, job.phase_left, job.accept_left = "queued", "", "", 0.0, 0.0
        job.disc = job.good + job.bad
        log.info("%s: job %s re-queued after a restart (%d of %d discs made)", self.robot.name, job.job_id,
                 job.good, job.copies)
