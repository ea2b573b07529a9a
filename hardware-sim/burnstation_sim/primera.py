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

# every key the PTBurn SDK documents: PTBurn must not reject one it knows
KEYS = {k.lower(): k for k in (
    "JobID", "ClientID", "Importance", "Data", "ImageFile", "ImageType", "DataImageType", "DeleteFiles",
    "PreMasterData", "CloseDisc", "VerifyDisc", "RejectIfNotBlank", "TestRecord", "Copies", "PrintLabel",
    "MergeField", "VolumeName", "BurnSpeed", "RobotName", "BinID", "DriveID", "PrintQuality", "PrintReject",
    "NotifyClient", "PrintInnerDiam", "PrintOuterMargin", "CDTextDiscTitle", "CDTextDiscPerformer")}
REPEATABLE = {"Data", "MergeField", "DriveID"}
YES_NO_KEYS = ("CloseDisc", "VerifyDisc", "RejectIfNotBlank", "TestRecord", "DeleteFiles", "PreMasterData",
               "PrintReject", "NotifyClient")  # (DeleteFiles .. NotifyClient as YES/NO: unconfirmed)
IMPORTANCE_DEFAULT = 4
FILE_SYSTEMS = ("ISOLEVEL1", "ISOLEVEL2", "ISOLEVEL3", "JOLIET", "ISOLEVEL1+JOLIET", "ISOLEVEL2+JOLIET",
                "ISOLEVEL3+JOLIET", "UDF", "UDF201", "UDF250", "UDF260")
FS_OPTIONS = ("SETNOW", "MODE2", "SAO")
LABEL_EXTENSIONS = (".jpg", ".jpeg", ".bmp", ".png", ".std", ".prn")

ERRORS = {
    0: "No error", 1: "Engine error", 2: "Job processor error", 3: "Robotics error", 4: "Invalid files",
    5: "Too many files", 6: "No burn file", 7: "Invalid print file", 8: "Invalid JRQ",
    9: "Status file corrupt", 10: "Bad media", 11: "Insufficient space", 12: "Disc not blank",
    13: "Drive open/close failed", 14: "Drive not ready", 15: "Drive not robotic", 16: "Aborted",
    17: "DVD structure invalid", 18: "Record error", 19: "Verify error", 20: "Too many rejects",
    21: "Bad multisession", 22: "Client not authorized", 25: "Critical key or value invalid",
    38: "Invalid Job ID", 39: "String too long",
}
# SysErrorNumber, from the SDK's table. The SDK has no code for a full output bin: it shows only in
# the job's CurrentStatus here (a guess). 14 (unit offline) is never written: an offline robot's
# simulated engine writes nothing at all.
SYS_ERRORS = {"input_empty": (3, "Input bin empty"), "ink_low_color": (5, "Color ink low"),
              "ink_low_black": (6, "Black ink low"), "ink_low_both": (7, "Both inks low"),
              "offline": (14, "Unit offline"), "cover_open": (15, "Cover open too long")}
CARTRIDGE_TYPE = {"Color": 1, "Black": 2}  # 0 none, 3 yellow, 4 cyan, 5 magenta
# CurrentStatusState
STATE = {"recording": 0, "verifying": 2, "printing": 3, "loading": 4, "unloading": 5,
         "waiting_recorder": 7, "complete": 10, "paused": 11, "aborted": 13, "initializing": 14,
         "failed": 15}
PHASE_STATE = {"load": ("loading", "Loading disc"), "write": ("recording", "Recording"),
               "verify": ("verifying", "Verifying"), "print": ("printing", "Printing"),
               "unload": ("unloading", "Unloading disc")}
# DriveStateX (SDK): 0 idle, 1 recording, 2 reading, 3 verifying, 4 disc loaded, 5 verify failed,
# 6 verify complete, 7 record failed, 8 record complete
DRIVE_STATE = {"idle": 0, "writing": 1, "verifying": 3, "loaded": 4}
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
    default_encoding = "ascii"  # the SDK's "ASCII text file"
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
        # the job's name everywhere (status sections, commands) is the JRQ file name, not JobID
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)[:32] or "JOB"
        job = Job(job_id=stem, path=path, received_name=path.name)
        try:
            try:
                text = self.decode(raw)
            except UnicodeDecodeError as exc:
                raise JrqError(8, f"byte {raw[exc.start:exc.end]!r} is not {self.encoding} text") from None
            self.validate(text, job)
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
        drives: list[str] = []
        for key, value in parse_keyvalues(text):
            if key == "Data":
                data.append(value)
            elif key == "MergeField":
                job.merge_fields.append(value)
            elif key == "DriveID":
                drives.append(value)
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
            if key in keys and len(keys[key]) > 32:
                raise JrqError(39, f"{key} longer than 32 characters")
            if key in keys and not keys[key]:
                raise JrqError(38 if key == "JobID" else 8, f"{key} empty")
        if "JobID" in keys and keys["JobID"] != job.job_id:
            # the SDK says keep the two equal; PTBurn goes by the file name (the simulator too)
            log.info("%s: JobID %r differs from the file name %r: the file name counts", self.robot.name,
                     keys["JobID"][:32], job.job_id)
        if job.job_id in self.jobs:
            raise JrqError(38, f"job {job.job_id} already known")
        job.client_id = keys.get("ClientID", "")
        importance = number("Importance", 0, 400)
        job.priority = IMPORTANCE_DEFAULT if importance is None else importance
        job.copies = number("Copies", 1, 10000) or 1
        number("BurnSpeed", 0, 100)
        number("PrintQuality", 0, 4)
        number("PrintInnerDiam", 0, 9999)  # (units and range: unconfirmed)
        number("PrintOuterMargin", 0, 9999)
        for value in drives:
            if not re.fullmatch(r"[0-9]{1,2}", value) or int(value) >= self.robot.drives:
                raise JrqError(8, f"DriveID={value[:10]} (drives 0-{self.robot.drives - 1})")
        # 0 both bins, 1 left, 2 right (kiosk mode); outside kiosk mode the SDK's table of input and
        # output bins is not in our reference (unconfirmed), so the kiosk meaning is played
        bin_id = number("BinID", 0, 2)
        for key in YES_NO_KEYS:
            if key in keys and keys[key].upper() not in ("YES", "NO"):
                raise JrqError(8, f"{key} must be YES or NO")
        job.compare = keys.get("VerifyDisc", "NO").upper() == "YES"
        if "ImageType" in keys and not re.fullmatch(r"MODE_[12]_(2048|2336|2352)", keys["ImageType"]):
            raise JrqError(8, f"ImageType {keys['ImageType'][:20]!r}")
        if "DataImageType" in keys:  # FileSystem[, Option...]
            fs, *options = [part.strip().upper() for part in keys["DataImageType"].split(",")]
            if fs not in FILE_SYSTEMS or any(o not in FS_OPTIONS for o in options):
                raise JrqError(25, f"DataImageType {keys['DataImageType'][:40]!r}")
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
        if bin_id:  # 1 left, 2 right; 0 (both) as absent
            job.in_stacker, job.media = bin_id, inputs[min(bin_id, len(inputs)) - 1].media
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
        if job.merge_fields and not (job.label_files and job.label_files[0].suffix.lower() == ".std"):
            # MergeField fills a SureThing .STD design; with an image it does nothing
            log.info("%s: job %s: MergeField without a .STD design: ignored", self.robot.name, job.job_id)
            job.merge_fields = []

    # -- commands --------------------------------------------------------------------------------
    def command(self, path: Path) -> None:
        """`.PTM`: Message=ABORT, named like the job's JRQ (the file name is the job), with the
        job's ClientID or Administrator (another is refused); Message=IGNORE_INKLOW. Deleted once read."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        path.unlink(missing_ok=True)
        try:
            items = dict(self._ptm_items(self.decode(raw)))
        except UnicodeDecodeError:
            log.info("%s: %s is not %s text: ignored", self.robot.name, path.name, self.encoding)
            return
        message = items.get("message", "").upper()
        client = items.get("clientid", "")
        if message == "ABORT":
            job = self.jobs.get(path.stem)
            if set(items) - {"message", "clientid"}:  # the SDK: Message=ABORT and ClientID only
                log.info("%s: ABORT %s refused: keys %s", self.robot.name, path.name, sorted(set(items)))
            elif job is None or not job.active:
                log.info("%s: ABORT %s: no such active job", self.robot.name, path.stem)
            elif client not in ("Administrator", job.client_id):
                log.info("%s: ABORT of %s refused: ClientID %r is not the job's", self.robot.name, job.job_id, client)
            else:
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
    def queue_key(self, job: Job) -> int:
        """Importance: 0 is the most important, lower numbers go first."""
        return job.priority

    def system_error(self) -> tuple[int, str]:
        robot = self.robot
        current = self.current()
        if robot.faults["cover_open"]:
            return SYS_ERRORS["cover_open"]
        if current is not None and current.waiting == "input_empty":
            return SYS_ERRORS["input_empty"]
        if robot.ink_low() and not self.ink_low_ignored:
            low = {c for c, level in robot.inks.items() if level < 10} or set(robot.inks)
            key = "ink_low_both" if len(low) > 1 else ("ink_low_black" if "Black" in low else "ink_low_color")
            return SYS_ERRORS[key]
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
        order = [j for j in active if j.state != "queued"] + sorted(
            (j for j in active if j.state == "queued"), key=self.queue_key)  # the order they will run in
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
        current = self.current()
        robot_status = sys_text or ("Output bin full" if current is not None and current.waiting == "output_full"
                                    else "Busy" if current else "Idle")
        robot_items: list[tuple[str, object]] = [
            ("RobotType", ROBOT_TYPE), ("NumJobs", len(active)), ("Status", robot_status),
            ("SysErrorNumber", sys_number), ("SysErrorString", sys_text),
            ("DiscsInLeftBin", bins.get(1, -1)), ("DiscsInRightBin", bins.get(2, -1)),
        ]
        for i, (colour, level) in enumerate(cartridges):
            robot_items += [(f"CartridgeType{i}", CARTRIDGE_TYPE.get(colour, 0)), (f"CartridgeFill{i}", level)]
        robot_items.append(("StatusFile", f"{name}.txt"))
        free_mb = shutil.disk_usage(self.folder).free // (1024 * 1024)
        system_file = [
            ("RobotList", [("Robot0", name)]),
            ("System", [("SysErrorNumber", sys_number), ("SysErrorString", sys_text),
                        ("ServerTickCount", int(time.monotonic() - self.started)),  # 1 tick = 1 s
                        ("ServerTime", _stamp(time.time())), ("DriveSpace", free_mb)]),
            (name, robot_items),
        ]
        files.rewrite_in_place(self.status_dir / "SystemStatus.txt", files.render_ini(system_file))
