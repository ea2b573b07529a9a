"""Builds TD Bridge job files (.JDF) and their REPLACE_FIELD merge files.

A JDF is `KEY=value` lines; the value runs to the end of the line, so a value holding a line break
would add a key. Every value here comes from `clean_value` / `checked_path` (drivers/common.py), and
the finished text is parsed back and compared with what was meant before anyone writes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from drivers.common import checked_id, checked_path, clean_key, clean_value, yes_no

MAX_JOB_ID = 40
MAX_PUBLISHER = 64
MAX_VOLUME_LABEL = 32
MAX_COPIES = 1000
MAX_MERGE_ITEMS = 255
MAX_MERGE_LINE = 1024

DISC_TYPES = ("CD", "DVD", "DVD-DL", "BD", "BD-DL")
VALID_FORMATS: dict[str, tuple[str, ...]] = {
    "CD": ("ISO9660L2", "JOLIET", "UDF102"),
    "DVD": ("UDF102", "UDF102_BRIDGE", "UDF150"),
    "BD": ("UDF102", "UDF260"),
}
# names a DATA source may not end in (TD Bridge's own job-file extensions)
RESERVED_ENDINGS = ("CDN", "CER", "DON", "ERR", "INP", "JCF", "JDF", "RJD")


def disc_family(disc_type: str) -> str:
    return {"DVD-DL": "DVD", "BD-DL": "BD"}.get(disc_type, disc_type)


def validate_format(disc_type: str, fmt: str) -> None:
    """Refuse a DISC_TYPE/FORMAT pair TD Bridge would reject (JDF1400-1402)."""
    if disc_type not in DISC_TYPES:
        raise ValueError(f"DISC_TYPE {disc_type!r}: must be one of {', '.join(DISC_TYPES)}")
    allowed = VALID_FORMATS[disc_family(disc_type)]
    if fmt not in allowed:
        raise ValueError(f"FORMAT {fmt!r} is not valid for DISC_TYPE {disc_type} (allowed: {', '.join(allowed)})")


def choose_format(disc_type: str, filesystem: str, override: str = "") -> str:
    """The FORMAT value for a disc: the robot's configured one, else from the image's file system."""
    if override:
        return override.strip().upper()
    fs = (filesystem or "").upper()
    family = disc_family(disc_type)
    if family == "CD":
        if "UDF" in fs and "ISO" not in fs:
            return "UDF102"
        return "JOLIET" if ("JOLIET" in fs or not fs) else "ISO9660L2"
    if family == "DVD":
        return "UDF102_BRIDGE" if ("ISO" in fs or "JOLIET" in fs) else "UDF102"
    if family == "BD":
        return "UDF260" if "260" in fs or "2.6" in fs else "UDF102"
    return "UDF102"


@dataclass
class JdfJob:
    """One TD Bridge job; paths are already as the engine sees them."""

    job_id: str
    disc_type: str
    format: str
    copies: int = 1
    publisher: str = ""
    compare: bool = True
    close_disc: bool = True
    image: str = ""  # image mode
    data: list[tuple[str, str]] = field(default_factory=list)  # data mode: (source, destination)
    volume_label: str = ""
    label: str = ""  # .tdd design
    replace_field: str = ""  # merge file
    high_priority: bool = False


def jdf_lines(job: JdfJob) -> list[tuple[str, str]]:
    """The (key, value) pairs of the job, every value made safe; raises ValueError on a bad job."""
    checked_id(job.job_id, MAX_JOB_ID, "JOB_ID")
    validate_format(job.disc_type, job.format)
    if not 1 <= int(job.copies) <= MAX_COPIES:
        raise ValueError(f"COPIES {job.copies}: must be 1-{MAX_COPIES}")
    if bool(job.image) == bool(job.data):
        raise ValueError("a JDF needs either IMAGE or DATA lines (exactly one of them)")
    lines: list[tuple[str, str]] = [("JOB_ID", job.job_id)]
    publisher = clean_value(job.publisher, MAX_PUBLISHER)
    if publisher:
        lines.append(("PUBLISHER", publisher))
    lines += [
        ("COPIES", str(int(job.copies))),
        ("DISC_TYPE", job.disc_type),
        ("FORMAT", job.format),
        ("COMPARE", yes_no(job.compare)),
        ("CLOSE_DISC", yes_no(job.close_disc)),
    ]
    if job.image:
        lines.append(("IMAGE", checked_path(job.image, "IMAGE")))
    for source, dest in job.data:
        checked_path(source, "DATA source")
        checked_path(dest, "DATA destination")
        if source.rstrip("\\/").upper().endswith(RESERVED_ENDINGS):
            raise ValueError(f"DATA source {source!r}: TD Bridge refuses names ending in "
                             f"{', '.join(RESERVED_ENDINGS)}")
        # the disc root: the source alone, without the TAB and the destination (TD Bridge manual)
        lines.append(("DATA", f"{source}\t{dest}" if dest else source))
    volume = clean_value(job.volume_label, MAX_VOLUME_LABEL)
    if volume:
        lines.append(("VOLUME_LABEL", volume))
    if job.label:
        lines.append(("LABEL", checked_path(job.label, "LABEL")))
    if job.replace_field:
        lines.append(("REPLACE_FIELD", checked_path(job.replace_field, "REPLACE_FIELD")))
    if job.high_priority:
        lines.append(("PRIORITY", "HIGH"))
    return lines


def build_jdf(job: JdfJob) -> str:
    """The .JDF text (CRLF line ends, as the Windows engine writes its own files)."""
    lines = jdf_lines(job)
    text = "".join(f"{key}={value}\r\n" for key, value in lines)
    if parse_jdf(text) != lines:  # belt and braces: nothing may have added or split a line
        raise ValueError("JDF self-check failed: a value changed the file's structure")
    return text


def parse_jdf(text: str) -> list[tuple[str, str]]:
    """Read a JDF the way TD Bridge does: `KEY=value` per line, `#` comments, no spaces around the key."""
    pairs: list[tuple[str, str]] = []
    for line in re.split(r"\r\n|\n|\r", text):
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_]+", key):
            raise ValueError(f"invalid JDF line {line!r}")
        pairs.append((key, value))
    return pairs


def build_merge_file(fields: Mapping[str, object]) -> str:
    """REPLACE_FIELD merge file: `field=value` lines, at most 255, each at most 1024 characters."""
    out: list[str] = []
    for name, value in list(fields.items())[:MAX_MERGE_ITEMS]:
        key = clean_key(name)
        room = MAX_MERGE_LINE - len(key) - 1
        out.append(f"{key}={clean_value(value, max(room, 0))}")
    return "".join(line + "\r\n" for line in out)


def build_cancel(job_id: str) -> str:
    """The .JCF text that asks TD Bridge to cancel a job."""
    checked_id(job_id, MAX_JOB_ID, "JOB_ID")
    return f"[CANCEL]\r\nJOB_ID={job_id}\r\n"
