"""Epson TD Bridge, as seen from its watched "Order" folder: `.JDF` jobs renamed through
`.RJD` → `.INP` → `.DON` / `.ERR` (`.STP` while paused), `.JCF` cancel requests renamed to `.CDN` /
`.CER`, and `TDBStatus.txt` rewritten in place every tick. Written from robots.md only."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from . import files
from .discs import MEDIA_CAPACITY, check_image, check_tree, stage_data
from .engine import Engine
from .robot import ACCEPT_SECONDS, Job, Robot, Stacker

log = logging.getLogger("burnstation_sim.epson")

VENDOR_ID = "04b8"  # Seiko Epson (usb.ids)
PRODUCT_ID = "0b1d"  # made up: the Discproducer product ids are not public
MODEL = "PP-100II"

# The key ranges of the JDF error codes. Known from robots.md: JOB_ID 01, PUBLISHER 02, DISC_TYPE 05,
# DATA 09, FORMAT 14, LABEL 15, REPLACE_FIELD 16; the other numbers are the simulator's own assignment.
# These are the keys the manual documents: any of them is accepted, any other refused.
KEY_RANGE = {
    "JOB_ID": 1, "PUBLISHER": 2, "COPIES": 3, "IN_STACKER": 4, "DISC_TYPE": 5, "OUT_STACKER": 6,
    "WRITING_SPEED": 7, "COMPARE": 8, "DATA": 9, "CLOSE_DISC": 10, "IMAGE": 11, "VOLUME_LABEL": 12,
    "DATA_LIST": 13, "FORMAT": 14, "LABEL": 15, "REPLACE_FIELD": 16, "PRIORITY": 17, "LABEL_TYPE": 18,
    "PRINT_MODE": 19,
}
REPEATABLE = {"DATA"}
FORMATS = {
    "CD": ("ISO9660L2", "JOLIET", "UDF102"),
    "DVD": ("UDF102", "UDF102_BRIDGE", "UDF150"),
    "DVD-DL": ("UDF102", "UDF102_BRIDGE", "UDF150"),
    "BD": ("UDF102", "UDF260"),
    "BD-DL": ("UDF102", "UDF260"),
}
FORMAT_ERROR = {"CD": "JDF1400", "DVD": "JDF1401", "DVD-DL": "JDF1401", "BD": "JDF1402", "BD-DL": "JDF1402"}
STACKER_SETTING = {"CD": 1, "DVD": 4, "DVD-DL": 7, "BD": 8, "BD-DL": 9}
FORBIDDEN_ENDINGS = ("CDN", "CER", "DON", "ERR", "INP", "JCF", "JDF", "RJD")
JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,40}")

ERROR_TEXT = {
    "JDF0001": "line is not KEY=value (space around the key, lower case or no '=')",
    "JDF0002": "unknown key",
    "JDF0003": "key given more than once",
    "JDF0100": "JOB_ID already used",
    "JDF0101": "JOB_ID invalid",
    "JDF0200": "the PUBLISHER named is not registered",
    "JDF0201": "PUBLISHER invalid",
    "JDF0203": "no publisher registered at all",
    "JDF0301": "COPIES out of range (1-1000)",
    "JDF0401": "IN_STACKER invalid",
    "JDF0501": "DISC_TYPE missing (it is required)",
    "JDF0502": "DISC_TYPE invalid",
    "JDF0601": "OUT_STACKER invalid",
    "JDF0701": "WRITING_SPEED invalid",
    "JDF0801": "COMPARE invalid",
    "JDF0901": "DATA source not found or line invalid",
    "JDF0902": "no DATA or IMAGE given",
    "JDF0903": "data too large for the disc",
    "JDF0904": "DATA file name has a reserved extension",
    "JDF1001": "CLOSE_DISC invalid",
    "JDF1101": "IMAGE file not found",
    "JDF1102": "IMAGE and DATA both given",
    "JDF1103": "IMAGE is not a valid disc image with a DICOMDIR",
    "JDF1201": "VOLUME_LABEL invalid",
    "JDF1301": "DATA_LIST file not found or invalid",
    "JDF1400": "FORMAT not valid for CD",
    "JDF1401": "FORMAT not valid for DVD",
    "JDF1402": "FORMAT not valid for BD",
    "JDF1501": "LABEL file not found",
    "JDF1600": "REPLACE_FIELD file not found",
    "JDF1601": "REPLACE_FIELD file invalid (over 255 items or 1024 characters)",
    "JDF1701": "PRIORITY invalid",
    "JDF1801": "LABEL_TYPE invalid",
    "JDF1901": "PRINT_MODE invalid",
    "CAN006": "write error: disc rejected, job cancelled",
    "RTN000": "input stacker empty",
    "RTN001": "output stacker full",
    "RTN002": "disc cover open",
    "RTN004": "ink low",
}

# DETAIL_STATUS (unconfirmed even in robots.md: 1, 9, 12, 13, 14; the steps between are the simulator's)
DETAIL = {"accepting": 1, "standby": 2, "load": 3, "write": 4, "verify": 5, "print": 6, "unload": 7,
          "paused": 8, "done": 9, "cancelled": 12, "error": 13, "rejected": 14}
STATUS = {"queued": 1, "running": 2, "paused": 3, "done": 4, "failed": 5, "cancelled": 5, "rejected": 6}


class JdfError(Exception):
    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code} {ERROR_TEXT.get(code, '')}: {detail}".strip(": "))
        self.code = code


def parse_jdf(text: str) -> list[tuple[str, str]]:
    """`KEY=value` lines; raises JdfError for a malformed line. Comments start with `#`."""
    items: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            raise JdfError("JDF0001", f"line {number}: {line[:60]!r}")
        if key not in KEY_RANGE:
            raise JdfError("JDF0002", key)
        items.append((key, value))
    return items


def make_robot(name: str, speed: float) -> Robot:
    stackers = [
        Stacker(1, "input", "CD", 50, 50),
        Stacker(2, "input", "DVD", 50, 50),
        Stacker(3, "output", "", 0, 50),
        Stacker(4, "output", "", 0, 50),
    ]
    inks = {"C": 100, "M": 100, "Y": 100, "LC": 100, "LM": 100, "B": 100}
    return Robot(name, "epson", stackers, inks, drives=2, speed=speed)


class EpsonEngine(Engine):
    """TD Bridge for one publisher, watching `folder` (its "Order" folder)."""

    kind = "epson"
    vendor = "Seiko Epson Corp."
    vendor_id = VENDOR_ID
    product_id = PRODUCT_ID
    model = MODEL
    paused_ext = "STP"
    default_encoding = "cp1252"  # "ANSI text" in the engine host's code page (a Western host here)
    job_ext = "JDF"
    queued_ext = "RJD"
    in_progress_exts = ("RJD", "INP", "STP")

    def __init__(self, robot: Robot, folder: Path, bin_root: Path,
                 path_maps: list[tuple[str, Path]] | None = None) -> None:
        super().__init__(robot, folder, bin_root, path_maps)
        self.status_path = folder / "TDBStatus.txt"
        self.extra_sections: dict[str, Job] = {}  # rejected jobs whose JOB_ID belongs to another job

    def tick(self, dt: float) -> None:
        super().tick(dt)
        if self.robot.running:
            self.archive_old()

    def state_doc(self) -> dict:
        doc = super().state_doc()
        doc["extra_sections"] = {stem: job.to_dict() for stem, job in self.extra_sections.items()}
        return doc

    def load_extra(self, doc: dict) -> None:
        for stem, item in doc.get("extra_sections", {}).items():
            self.extra_sections[stem] = Job.from_dict(item)

    def scan(self) -> None:
        for path in self.arrivals("*.JDF"):
            self.accept(path)
        for path in self.arrivals("*.JCF"):
            self.cancel(path)

    # -- accepting a job -------------------------------------------------------------------------
    def accept(self, path: Path) -> None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)[:40] or "JOB"
        job = Job(job_id=stem, path=path, received_name=path.name)
        try:
            try:
                text = self.decode(raw)
            except UnicodeDecodeError as exc:  # the code the real engine gives here is not documented
                raise JdfError("JDF0001", f"byte {raw[exc.start:exc.end]!r} is not {self.encoding} text") from None
            self.validate(text, job)
        except JdfError as exc:
            log.info("%s: %s rejected: %s", self.robot.name, path.name, exc)
            job.state, job.error, job.error_text = "rejected", exc.code, ERROR_TEXT.get(exc.code, str(exc))
            job.completed = time.time()
            job.path = files.rename_ext(path, "ERR")
            if job.job_id in self.jobs:  # the original keeps its section; this one goes under its file name
                if stem not in self.jobs:
                    self.extra_sections[stem] = job
                return
            self.jobs[job.job_id] = job
            return
        job.path = files.rename_ext(path, "RJD")
        job.accept_left = ACCEPT_SECONDS * self.robot.speed
        self.save_received(job, raw)
        self.jobs[job.job_id] = job
        log.info("%s: accepted %s as job %s", self.robot.name, path.name, job.job_id)

    def validate(self, text: str, job: Job) -> None:
        items = parse_jdf(text)
        keys: dict[str, str] = {}
        data_lines: list[str] = []
        for key, value in items:
            if key in REPEATABLE:
                data_lines.append(value)
            elif key in keys:
                raise JdfError("JDF0003", key)
            else:
                keys[key] = value

        def bad(key: str) -> JdfError:
            return JdfError(f"JDF{KEY_RANGE[key]:02d}01", f"{key}={keys.get(key, '')[:60]}")

        if "JOB_ID" in keys:
            if not JOB_ID_RE.fullmatch(keys["JOB_ID"]):
                raise bad("JOB_ID")
            job.job_id = keys["JOB_ID"]
        if job.job_id in self.jobs:
            raise JdfError("JDF0100", job.job_id)
        if "PUBLISHER" in keys:
            if len(keys["PUBLISHER"]) > 64:
                raise bad("PUBLISHER")
            if keys["PUBLISHER"] != self.robot.name:  # one robot registered here: never JDF0203
                raise JdfError("JDF0200", keys["PUBLISHER"])
        if "COPIES" in keys:
            if not re.fullmatch(r"[0-9]{1,4}", keys["COPIES"]) or not 1 <= int(keys["COPIES"]) <= 1000:
                raise bad("COPIES")
            job.copies = int(keys["COPIES"])
        if "IN_STACKER" in keys:
            if keys["IN_STACKER"] not in ("1", "2", "AUTO"):
                raise bad("IN_STACKER")
            job.in_stacker = None if keys["IN_STACKER"] == "AUTO" else int(keys["IN_STACKER"])
        if "OUT_STACKER" in keys and keys["OUT_STACKER"] not in ("2", "3", "4"):  # sources differ: 2-4 or 2/4
            raise bad("OUT_STACKER")
        if "DISC_TYPE" not in keys:
            raise JdfError("JDF0501")
        disc_type = keys["DISC_TYPE"]
        if disc_type not in FORMATS:
            raise JdfError("JDF0502", disc_type[:20])
        job.media = disc_type
        if "WRITING_SPEED" in keys and not re.fullmatch(r"[0-9]{1,3}", keys["WRITING_SPEED"]):
            raise bad("WRITING_SPEED")
        for key in ("COMPARE", "CLOSE_DISC"):
            if key in keys and keys[key] not in ("YES", "NO"):
                raise bad(key)
        job.compare = keys.get("COMPARE") == "YES"
        if "DATA_LIST" in keys:
            listing = self.resolve(keys["DATA_LIST"])
            if not listing.is_file():
                raise bad("DATA_LIST")
            try:
                listing_text = self.decode(listing.read_bytes())
            except UnicodeDecodeError:
                raise bad("DATA_LIST") from None
            for line in listing_text.splitlines():
                if line.startswith("DATA="):
                    data_lines.append(line[5:])
                elif line.strip() and not line.startswith("#"):
                    raise bad("DATA_LIST")
        if "IMAGE" in keys and data_lines:
            raise JdfError("JDF1102")
        if "FORMAT" in keys and keys["FORMAT"] not in FORMATS[disc_type]:
            raise JdfError(FORMAT_ERROR[disc_type], f"FORMAT={keys['FORMAT'][:40]} DISC_TYPE={disc_type}")
        if "IMAGE" in keys:
            image = self.resolve(keys["IMAGE"])
            if not image.is_file():
                raise JdfError("JDF1101", str(image))
            problem = check_image(image)
            if problem:
                raise JdfError("JDF1103", problem)
            job.image, job.size = image, image.stat().st_size
        elif data_lines:
            for line in data_lines:
                source_text, tab, destination = line.partition("\t")
                if tab and not destination:  # the disc root is `DATA=<source>`, without the TAB
                    raise JdfError("JDF0901", f"TAB without a destination: {line[:80]!r}")
                source = self.resolve(source_text)
                if not source_text or not source.exists():
                    raise JdfError("JDF0901", line[:80])
                if ".." in destination.replace("\\", "/").split("/") or destination.startswith(("/", "\\")) \
                        or re.match(r"[A-Za-z]:", destination):
                    raise JdfError("JDF0901", f"destination must be relative to the disc root: {line[:80]}")
                names = [source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]
                if any(p.name.upper().endswith(FORBIDDEN_ENDINGS) for p in names):
                    raise JdfError("JDF0904", line[:80])
                job.data.append((source, destination))
            job.size = sum(files.tree_size(s) for s, _ in job.data)
        else:
            raise JdfError("JDF0902")
        if job.size > MEDIA_CAPACITY[disc_type]:
            raise JdfError("JDF0903", f"{job.size} bytes on {disc_type}")
        if "VOLUME_LABEL" in keys and len(keys["VOLUME_LABEL"]) > 32:
            raise bad("VOLUME_LABEL")
        if "LABEL" in keys:
            label = self.resolve(keys["LABEL"])
            if not label.is_file():
                raise JdfError("JDF1501", str(label))
            job.label_files.append(label)
        if "REPLACE_FIELD" in keys:
            merge = self.resolve(keys["REPLACE_FIELD"])
            if not merge.is_file():
                raise JdfError("JDF1600", str(merge))
            try:
                lines = self.decode(merge.read_bytes()).splitlines()
            except UnicodeDecodeError:
                raise JdfError("JDF1601", f"{merge} is not {self.encoding} text") from None
            if len(lines) > 255 or any(len(line) > 1024 for line in lines):
                raise JdfError("JDF1601", str(merge))
            job.label_files.append(merge)
        if "PRIORITY" in keys:
            if keys["PRIORITY"] != "HIGH":
                raise bad("PRIORITY")
            job.priority = 1
        for key in ("LABEL_TYPE", "PRINT_MODE"):
            if key in keys and keys[key] not in ("1", "2", "3"):
                raise bad(key)

    # -- cancel ----------------------------------------------------------------------------------
    def cancel(self, path: Path) -> None:
        try:
            text = path.read_bytes().decode(self.encoding, "replace")  # only ASCII matters in a .JCF
        except FileNotFoundError:
            return
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        job_id = ""
        if lines and lines[0] == "[CANCEL]":
            for line in lines[1:]:
                if line.startswith("JOB_ID="):
                    job_id = line[len("JOB_ID="):]
        job = self.jobs.get(job_id)
        if job is None or not job.active:
            log.info("%s: cannot cancel %r", self.robot.name, job_id)
            files.rename_ext(path, "CER")
            return
        self.abort(job)  # the job file then ends .ERR, STATUS 5: a guess, the manual names only .CDN for the .JCF
        files.rename_ext(path, "CDN")
        log.info("%s: cancelled %s", self.robot.name, job_id)

    def cancelled_at_robot(self, job: Job) -> None:
        """Cancelled at the robot or in the engine's monitor: the job ends as `.DON` with STATUS 4
        even when no disc was made (TD Bridge manual); only the disc counts tell."""
        if job.state in ("running", "paused"):
            self.robot.drive_state, self.robot.drive_percent = "idle", 0
        job.state = "cancelled"
        job.error, job.error_text = "", ""
        self.finish(job, "DON")
        log.info("%s: job %s cancelled at the robot after %d of %d discs", self.robot.name, job.job_id,
                 job.good, job.copies)

    # -- running jobs ----------------------------------------------------------------------------
    def fail_write(self, job: Job) -> None:
        job.error, job.error_text = "CAN006", ERROR_TEXT["CAN006"]

    def deliver(self, job: Job) -> None:
        """The first disc is written: keep what it holds (image or data tree) and its label."""
        bin_dir = self.bin_dir(job)
        if job.image is not None:
            files.copy_into(job.image, bin_dir)
        else:
            stage_data(job.data, bin_dir / "disc")
            problem = check_tree(bin_dir / "disc")
            if problem:
                log.warning("%s: job %s: %s", self.robot.name, job.job_id, problem)
        for label in job.label_files:
            files.copy_into(label, bin_dir / "label")
        job.delivered = True

    def archive_old(self) -> None:
        """Finished job files move to log/YYYYMMDD/HHMM/ after an hour (scaled by --speed; never at
        --speed 0, so tests can look at them)."""
        if self.robot.speed <= 0:
            return
        limit = time.time() - 3600 * self.robot.speed
        for job in list(self.jobs.values()):
            if job.active or not job.completed or job.completed > limit or not job.path.exists():
                continue
            stamp = time.localtime(job.completed)
            target = self.folder / "log" / time.strftime("%Y%m%d", stamp) / time.strftime("%H%M", stamp)
            target.mkdir(parents=True, exist_ok=True)
            job.path = job.path.rename(target / job.path.name)

    # -- TDBStatus.txt ---------------------------------------------------------------------------
    def robot_error(self) -> str:
        robot = self.robot
        if robot.faults["cover_open"]:
            return "RTN002"
        current = self.current()
        if current is not None and current.waiting == "input_empty":
            return "RTN000"
        if current is not None and current.waiting == "output_full" or robot.faults["output_full"]:
            return "RTN001"
        if robot.ink_low():
            return "RTN004"
        return ""

    def job_error(self, job: Job) -> str:
        if job.state in ("running", "paused"):
            return {"input_empty": "RTN000", "output_full": "RTN001", "cover_open": "RTN002"}.get(
                job.waiting, "RTN004" if self.robot.ink_low() else "")
        return job.error

    def job_section(self, job: Job) -> list[tuple[str, object]]:
        if job.state == "running":
            detail = DETAIL["paused" if job.waiting == "cover_open" else (job.phase or "load")]
        elif job.state == "queued":
            detail = DETAIL["accepting" if job.accept_left > 0 else "standby"]
        else:
            detail = DETAIL[{"done": "done", "failed": "error", "cancelled": "cancelled",
                             "rejected": "rejected", "paused": "paused"}[job.state]]
        unknown = job.state == "rejected"
        status = STATUS[job.state]
        if job.state == "cancelled" and job.path.suffix == ".DON":  # cancelled at the robot
            status = STATUS["done"]
        return [
            ("PUBLISHER", self.robot.name),
            ("STATUS", status),
            ("PUBLICATION_NUMBER", -1 if unknown else job.copies),
            ("COMPLETION_NUMBER", -1 if unknown else job.good),
            ("ERRORDISC_NUMBER", -1 if unknown else job.bad),
            ("ESTIMATION_TIME_REMAIN", 0 if not job.active else self.robot.remaining_seconds(job)),
            ("ERROR", self.job_error(job)),
            ("DETAIL_STATUS", detail),
        ]

    def status_text(self) -> str:
        robot = self.robot
        active = [j for j in self.jobs.values() if j.active]
        complete = [j for j in self.jobs.values() if not j.active]
        sections: list[files.Section] = [
            ("TDB_INFO", [("TDB_ID", f"SIM-{robot.name}"), ("VERSION", "3.00 (burnstation-sim)")]),
            ("ACTIVE_JOB", [(f"JOB{i}", j.job_id) for i, j in enumerate(active, 1)]),
            ("COMPLETE_JOB", [(f"JOB{i}", j.job_id) for i, j in enumerate(complete, 1)]),
        ]
        sections += [(j.job_id, self.job_section(j)) for j in self.jobs.values()]
        sections += [(stem, self.job_section(j)) for stem, j in self.extra_sections.items()]
        publisher: list[tuple[str, object]] = [("NAME", robot.name), ("ID", f"SIM-{robot.name}")]
        for stacker in robot.stackers:
            publisher.append((f"STACKER{stacker.number}", stacker.count if stacker.role != "unused" else -1))
        for stacker in robot.stackers:
            setting = {"input": STACKER_SETTING.get(stacker.media, 99), "output": 0}.get(stacker.role, 99)
            publisher.append((f"STACKER{stacker.number}_SETTING", setting))
        for colour, level in robot.inks.items():
            publisher.append((f"INK_{colour}", level))
        publisher.append(("ERROR", self.robot_error()))
        sections.append(("PUBLISHER1", publisher))
        return files.render_ini(sections)

    def write_status(self) -> None:
        files.rewrite_in_place(self.status_path, self.status_text())
