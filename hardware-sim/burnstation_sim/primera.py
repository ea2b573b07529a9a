"""Primera PTBurn, as seen from its job request folder (PTBurnJobs): `.JRQ` jobs renamed through
`.QRJ` → `.INP` → `.DON` / `.ERR`, `.PTM` commands (ABORT, IGNORE_INKLOW), and the status files
`Status/SystemStatus.txt` and `Status/<RobotName>.txt` rewritten in place. From robots.md only."""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

from PIL import Image

from . import files
from .discs import MEDIA_CAPACITY, check_image, check_tree, stage_data
from .engine import Engine
from .robot import ACCEPT_SECONDS, Job, Robot, Stacker

log = logging.getLogger("burnstation_sim.primera")

VENDOR_ID = "0f25"  # unconfirmed: Primera's USB vendor id is not in the public usb.ids list
PRODUCT_ID = "0041"  # made up
MODEL = "Bravo 4100"
ROBOT_TYPE = 8  # 4100

KEYS = {k.lower(): k for k in (
    "JobID", "ClientID", "Importance", "Data", "ImageFile", "ImageType", "DataImageType", "CloseDisc",
    "VerifyDisc", "RejectIfNotBlank", "Copies", "PrintLabel", "MergeField", "VolumeName", "BurnSpeed",
    "RobotName", "BinID", "DriveID", "PrintQuality")}
REPEATABLE = {"Data", "MergeField"}
LABEL_EXTENSIONS = (".jpg", ".jpeg", ".bmp", ".png", ".std", ".prn")

ERRORS = {
    0: "No error", 1: "Engine error", 2: "Job processor error", 3: "Robotics error", 4: "Invalid files",
    5: "Too many files", 6: "No burn file", 7: "Invalid print file", 8: "Invalid JRQ",
    9: "Status file corrupt", 10: "Bad media", 11: "Insufficient space", 12: "Disc not blank",
    13: "Drive open/close failed", 14: "Drive not ready", 15: "Drive not robotic", 16: "Aborted",
    17: "DVD structure invalid", 18: "Record error", 19: "Verify error", 20: "Too many rejects",
    21: "Bad multisession", 22: "Client not authorized",
}
# System errors: robots.md names them (ink low, ...) without numbers; these numbers are made up.
SYS_ERRORS = {"ink_low": (101, "Ink low"), "cover_open": (102, "Cover open"),
              "input_empty": (103, "Input bin empty"), "output_full": (104, "Output bin full")}
# CurrentStatusState
STATE = {"recording": 0, "verifying": 2, "printing": 3, "loading": 4, "unloading": 5,
         "waiting_recorder": 7, "complete": 10, "paused": 11, "aborted": 13, "initializing": 14,
         "failed": 15}
PHASE_STATE = {"load": ("loading", "Loading disc"), "write": ("recording", "Recording"),
               "verify": ("verifying", "Verifying"), "print": ("printing", "Printing"),
               "unload": ("unloading", "Unloading disc")}
# DriveStateX (numbers made up): 0 empty, 1 disc loaded, 2 recording, 3 verifying
DRIVE_STATE = {"idle": 0, "loaded": 1, "writing": 2, "verifying": 3}
JOB_STATE = {"queued": 0, "running": 1, "paused": 1, "done": 2, "failed": 3, "cancelled": 3, "rejected": 3}


class JrqError(Exception):
    def __init__(self, number: int, detail: str = "") -> None:
        super().__init__(f"{number} {ERRORS[number]}: {detail}".strip(": "))
        self.number = number
        self.detail = detail


def parse_keyvalues(text: str) -> list[tuple[str, str]]:
    """`Key=value` lines, spaces around `=` allowed; keys case-insensitive (canonical spelling
    returned). Raises JrqError(8) for a line that is not Key=value or an unknown key."""
    items = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith((";", "#")):
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not key:
            raise JrqError(8, f"not Key=value: {stripped[:60]!r}")
        canonical = KEYS.get(key.lower())
        if canonical is None:
            raise JrqError(8, f"unknown key {key[:40]!r}")
        items.append((canonical, value.strip()))
    return items


def make_robot(name: str, speed: float) -> Robot:
    stackers = [
        Stacker(1, "input", "CD", 50, 50),  # left bin
        Stacker(2, "input", "DVD", 50, 50),  # right bin
        Stacker(3, "output", "", 0, 50),  # the exit tray
    ]
    return Robot(name, "primera", stackers, {"Color": 100, "Black": 100}, drives=1, speed=speed)


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


class PrimeraEngine(Engine):
    """PTBurn with one robot, watching `folder` (its PTBurnJobs folder)."""

    kind = "primera"
    vendor = "Primera Technology, Inc."
    vendor_id = VENDOR_ID
    product_id = PRODUCT_ID
    model = MODEL
    paused_ext = None
    job_ext = "JRQ"
    queued_ext = "QRJ"
    in_progress_exts = ("QRJ", "INP")

    def __init__(self, robot: Robot, folder: Path, bin_root: Path,
                 path_maps: list[tuple[str, Path]] | None = None) -> None:
        super().__init__(robot, folder, bin_root, path_maps)
        self.status_dir = folder / "Status"
        self.status_dir.mkdir(exist_ok=True)
        self.ink_low_ignored = False

    def scan(self) -> None:
        for path in self.arrivals("*.JRQ"):
            self.accept(path)
        for path in self.arrivals("*.PTM"):
            self.command(path)

    # -- accepting a job -------------------------------------------------------------------------
    def accept(self, path: Path) -> None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)[:32] or "JOB"
        job = Job(job_id=stem, path=path, received_name=path.name)
        try:
            self.validate(raw.decode("utf-8-sig", "replace"), job)
        except JrqError as exc:
            log.info("%s: %s rejected: %s", self.robot.name, path.name, exc)
            job.state, job.error = "rejected", str(exc.number)
            job.error_text = ERRORS[exc.number] + (f": {exc.detail}" if exc.detail else "")
            job.completed = time.time()
            job.path = files.rename_ext(path, "ERR")
            if job.job_id not in self.jobs:
                self.jobs[job.job_id] = job
            return
        job.path = files.rename_ext(path, "QRJ")
        job.accept_left = ACCEPT_SECONDS * self.robot.speed
        self.save_received(job, raw)
        self.jobs[job.job_id] = job
        log.info("%s: accepted %s as job %s", self.robot.name, path.name, job.job_id)

    def validate(self, text: str, job: Job) -> None:
        keys: dict[str, str] = {}
        data: list[str] = []
        for key, value in parse_keyvalues(text):
            if key == "Data":
                data.append(value)
            elif key == "MergeField":
                job.merge_fields.append(value)
            elif key in keys:
                raise JrqError(8, f"{key} given twice")
            else:
                keys[key] = value

        def number(key: str, low: int, high: int) -> int | None:
            if key not in keys:
                return None
            if not re.fullmatch(r"[0-9]{1,6}", keys[key]) or not low <= int(keys[key]) <= high:
                raise JrqError(8, f"{key}={keys[key][:20]} (allowed {low}-{high})")
            return int(keys[key])

        for key in ("JobID", "ClientID"):
            if key in keys and not 1 <= len(keys[key]) <= 32:
                raise JrqError(8, f"{key} must be 1-32 characters")
        if "JobID" in keys:
            # stricter than PTBurn: the id names a section of the status file and the output bin folder
            if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,31}", keys["JobID"]):
                raise JrqError(8, f"JobID {keys['JobID'][:32]!r}: only A-Z a-z 0-9 _ - . allowed here")
            job.job_id = keys["JobID"]
        if job.job_id in self.jobs:
            raise JrqError(8, f"JobID {job.job_id} already used")
        job.client_id = keys.get("ClientID", "")
        job.priority = number("Importance", 0, 400) or 0
        job.copies = number("Copies", 1, 10000) or 1
        number("BurnSpeed", 0, 100)
        number("PrintQuality", 0, 4)
        number("DriveID", 0, self.robot.drives - 1)
        bin_id = number("BinID", 1, len(self.robot.inputs()))
        for key in ("CloseDisc", "VerifyDisc", "RejectIfNotBlank"):
            if key in keys and keys[key].upper() not in ("YES", "NO"):
                raise JrqError(8, f"{key} must be YES or NO")
        job.compare = keys.get("VerifyDisc", "NO").upper() == "YES"
        if "ImageType" in keys and not re.fullmatch(r"MODE_[12]_(2048|2336|2352)", keys["ImageType"]):
            raise JrqError(8, f"ImageType {keys['ImageType'][:20]!r}")
        if "DataImageType" in keys and keys["DataImageType"].upper() not in (
                "ISOLEVEL1", "ISOLEVEL2", "ISOLEVEL3", "JOLIET", "UDF", "UDF201"):
            raise JrqError(8, f"DataImageType {keys['DataImageType'][:20]!r}")
        if "VolumeName" in keys and len(keys["VolumeName"]) > 32:
            raise JrqError(8, "VolumeName longer than 32")
        if "RobotName" in keys and keys["RobotName"] != self.robot.name:
            raise JrqError(8, f"no robot named {keys['RobotName'][:40]!r}")
        if "ImageFile" in keys and data:
            raise JrqError(8, "both ImageFile and Data given")
        if "ImageFile" in keys:
            image = self.resolve(keys["ImageFile"])
            if not image.is_file():
                raise JrqError(6, f"ImageFile not found: {image}")
            problem = check_image(image)
            if problem:
                raise JrqError(4, problem)
            job.image, job.size = image, image.stat().st_size
        elif data:
            for value in data:
                source = self.resolve(value)
                if not value or not source.exists():
                    raise JrqError(6, f"Data not found: {value[:80]}")
                job.data.append((source, ""))
            job.size = sum(files.tree_size(s) for s, _ in job.data)
        else:
            raise JrqError(6, "no ImageFile or Data")
        # media: the chosen bin's, else the smallest loaded media that holds the data
        inputs = self.robot.inputs()
        if bin_id is not None:
            job.in_stacker, job.media = bin_id, inputs[bin_id - 1].media
        else:
            fitting = [m for m in MEDIA_CAPACITY if m in {s.media for s in inputs} and job.size <= MEDIA_CAPACITY[m]]
            job.media = fitting[0] if fitting else inputs[-1].media
        if job.size > MEDIA_CAPACITY[job.media]:
            raise JrqError(11, f"{job.size} bytes on {job.media}")
        if "PrintLabel" in keys:
            label = self.resolve(keys["PrintLabel"])
            if not label.is_file() or label.suffix.lower() not in LABEL_EXTENSIONS:
                raise JrqError(7, f"PrintLabel {str(label)[:80]}")
            if label.suffix.lower() in (".jpg", ".jpeg", ".bmp", ".png"):
                try:
                    with Image.open(label) as img:
                        img.verify()
                except Exception as exc:
                    raise JrqError(7, f"PrintLabel unreadable: {exc}") from exc
            job.label_files.append(label)

    # -- commands --------------------------------------------------------------------------------
    def command(self, path: Path) -> None:
        """`.PTM`: Message=ABORT with ClientID (the job's own, or Administrator) and optionally
        JobID (else every job of that client); Message=IGNORE_INKLOW. Deleted once read."""
        try:
            items = dict(self._ptm_items(path.read_text("utf-8", "replace")))
        except FileNotFoundError:
            return
        path.unlink(missing_ok=True)
        message = items.get("message", "").upper()
        client = items.get("clientid", "")
        if message == "ABORT":
            wanted = items.get("jobid")
            for job in list(self.jobs.values()):
                if not job.active or (wanted is not None and job.job_id != wanted):
                    continue
                if wanted is None and client != job.client_id:
                    continue
                if client != "Administrator" and client != job.client_id:
                    log.info("%s: ABORT of %s refused: client %r not authorized", self.robot.name, job.job_id, client)
                    continue
                job.error, job.error_text = "16", ERRORS[16]
                self.abort(job)
        elif message == "IGNORE_INKLOW":
            self.ink_low_ignored = True
        else:
            log.info("%s: PTM message %r ignored", self.robot.name, message)

    @staticmethod
    def _ptm_items(text: str) -> list[tuple[str, str]]:
        items = []
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                items.append((key.strip().lower(), value.strip()))
        return items

    # -- burning ---------------------------------------------------------------------------------
    def fail_write(self, job: Job) -> None:
        job.error, job.error_text = "18", ERRORS[18]

    def deliver(self, job: Job) -> None:
        bin_dir = self.bin_dir(job)
        if job.image is not None:
            files.copy_into(job.image, bin_dir)
        else:
            for source, _ in job.data:
                stage_data([(source, "")], bin_dir / "disc")
            problem = check_tree(bin_dir / "disc")
            if problem:
                log.warning("%s: job %s: %s", self.robot.name, job.job_id, problem)
        label_dir = bin_dir / "label"
        for label in job.label_files:
            files.copy_into(label, label_dir)
        if job.merge_fields:
            label_dir.mkdir(exist_ok=True)
            files.write_atomic(label_dir / "MergeFields.txt",
                               "".join(f"{value}\n" for value in job.merge_fields).encode("utf-8"))
        job.delivered = True

    # -- status files ----------------------------------------------------------------------------
    def system_error(self) -> tuple[int, str]:
        robot = self.robot
        current = self.current()
        if robot.faults["cover_open"]:
            return SYS_ERRORS["cover_open"]
        if current is not None and current.waiting in ("input_empty", "output_full"):
            return SYS_ERRORS[current.waiting]
        if robot.ink_low() and not self.ink_low_ignored:
            return SYS_ERRORS["ink_low"]
        return 0, ""

    def job_status(self, job: Job) -> tuple[int, str]:
        if job.state == "queued":
            return (STATE["initializing"], "Pre-processing") if job.accept_left > 0 else (
                STATE["waiting_recorder"], "Waiting to start")
        if job.state == "paused" or job.waiting == "cover_open":
            return STATE["paused"], "Paused - cover open"
        if job.waiting == "input_empty":
            return STATE["loading"], "Input bin empty - please load blank discs"
        if job.waiting == "output_full":
            return STATE["unloading"], "Output bin full - please remove discs"
        if job.state == "running":
            state, text = PHASE_STATE.get(job.phase, ("loading", "Loading disc"))
            return STATE[state], f"{text} (disc {max(job.disc, 1)} of {job.copies})"
        if job.state == "done":
            return STATE["complete"], "Job completed"
        if job.state == "cancelled":
            return STATE["aborted"], "Job aborted"
        return STATE["failed"], f"Job failed: {job.error_text}"

    def job_section(self, job: Job, ahead: list[Job]) -> list[tuple[str, object]]:
        state, text = self.job_status(job)
        items: list[tuple[str, object]] = [
            ("JobsAhead", len(ahead)),
            ("DiscsAhead", sum(j.copies - j.good - j.bad for j in ahead)),
            ("CurrentStatus", text),
            ("CurrentStatusState", state),
            ("GoodDiscs", job.good),
            ("BadDiscs", job.bad),
            ("DiscsRemaining", 0 if not job.active else job.copies - job.good - job.bad),
            ("TimeCreated", _stamp(job.created)),
            ("TimeStarted", _stamp(job.started)),
            ("TimeCompleted", _stamp(job.completed)),
            ("JobState", JOB_STATE[job.state]),
            ("JobErrorNumber", job.error or 0),
            ("JobErrorString", job.error_text),
        ]
        if job.failed_disc:
            items += [("DiscErrorIndex0", job.failed_disc), ("DiscErrorNumber0", job.error),
                      ("DiscErrorString0", job.error_text)]
        return items

    def write_status(self) -> None:
        robot = self.robot
        name = robot.name
        active = [j for j in self.jobs.values() if j.active]
        order = [j for j in active if j.state != "queued"] + [j for j in active if j.state == "queued"]
        complete = [j for j in self.jobs.values() if not j.active]
        sections: list[files.Section] = [
            ("JobList", [(f"Job{i}", j.job_id) for i, j in enumerate(active)]),
            ("CompletedJobs", [(f"Job{i}", j.job_id) for i, j in enumerate(complete)]),
        ]
        for job in self.jobs.values():
            ahead = order[: order.index(job)] if job in order else []
            sections.append((job.job_id, self.job_section(job, ahead)))
        sys_number, sys_text = self.system_error()
        system: list[tuple[str, object]] = [("SystemStatus", sys_text or ("Busy" if self.current() else "Idle"))]
        for drive in range(robot.drives):
            system += [(f"DriveState{drive}", DRIVE_STATE[robot.drive_state]),
                       (f"DrivePercent{drive}", robot.drive_percent)]
        sections.append(("System", system))
        self.status_dir.mkdir(exist_ok=True)
        files.rewrite_in_place(self.status_dir / f"{name}.txt", files.render_ini(sections))

        bins = {s.number: s.count for s in robot.inputs()}
        cartridges = list(robot.inks.items())
        robot_items: list[tuple[str, object]] = [
            ("RobotType", ROBOT_TYPE), ("NumJobs", len(active)),
            ("Status", sys_text or ("Busy" if self.current() else "Idle")),
            ("DiscsInLeftBin", bins.get(1, -1)), ("DiscsInRightBin", bins.get(2, -1)),
        ]
        for i, (colour, level) in enumerate(cartridges):
            robot_items += [(f"CartridgeType{i}", colour), (f"CartridgeFill{i}", level)]
        free_mb = shutil.disk_usage(self.folder).free // (1024 * 1024)
        system_file = [
            ("RobotList", [("Robot0", name)]),
            ("System", [("SysErrorNumber", sys_number), ("SysErrorString", sys_text),
                        ("ServerTickCount", int((time.monotonic() - self.started) * 1000)),
                        ("ServerTime", _stamp(time.time())), ("DriveSpace", free_mb)]),
            (name, robot_items),
        ]
        files.rewrite_in_place(self.status_dir / "SystemStatus.txt", files.render_ini(system_file))
