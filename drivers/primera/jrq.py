"""Builds PTBurn job requests (.JRQ) and command files (.PTM).

A JRQ is `Key=value` lines; a value holding a line break would add a key, so every value comes
from `clean_value` / `checked_path` (drivers/common.py) and the finished text is parsed back and
compared with what was meant before anyone writes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from drivers.common import checked_id, checked_path, clean_value, yes_no

MAX_ID = 32  # JobID, ClientID
MAX_VOLUME = 32
MAX_ROBOT_NAME = 64
MAX_MERGE_VALUE = 1024
MAX_COPIES = 10000
IMAGE_TYPE = "MODE_1_2048"  # a plain ISO/UDF data image (2048-byte sectors)
DATA_IMAGE_TYPES = ("ISOLEVEL1", "ISOLEVEL2", "ISOLEVEL3", "JOLIET", "ISOLEVEL1+JOLIET", "ISOLEVEL2+JOLIET",
                    "ISOLEVEL3+JOLIET", "UDF", "UDF201", "UDF250", "UDF260")
DATA_IMAGE_OPTIONS = ("SETNOW", "MODE2", "SAO")  # after the file system: `UDF, SETNOW`
LABEL_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".std", ".prn")
CLIENT_ID = "BurnStation"

# the label design's fields, in its order (MergeField lines are positional); a robot config's
# `merge_fields` list replaces it; fields not named here follow in the order the builder gave them
DEFAULT_MERGE_ORDER = (
    "patient_name", "patient_id", "birth_date", "sex", "study_dates", "modalities", "study_descriptions",
    "accession_numbers", "institution", "department", "creation_date", "disc_of", "content",
)


IMPORTANCE_DEFAULT = 4  # PTBurn's default
IMPORTANCE_HIGH = 0  # the most important: PTBurn serves lower numbers first


def importance_for(priority: int) -> int:
    """Importance 0-400, 0 the most important (PTBurn SDK): high priority 0, normal jobs PTBurn's
    default 4 (which a job that waited long is promoted from)."""
    return IMPORTANCE_HIGH if priority > 0 else IMPORTANCE_DEFAULT


def data_image_type_for(media: str, filesystem: str, override: str = "") -> str:
    if override:
        value = override.strip().upper()
    elif media.upper().startswith("CD"):
        value = "JOLIET"
    elif media.upper().startswith("BD"):
        value = "UDF201"
    else:
        value = "UDF"
    check_data_image_type(value)
    return value


def check_data_image_type(value: str) -> str:
    """`FileSystem[, Option...]` as the SDK documents it; ValueError otherwise."""
    fs, *options = [part.strip().upper() for part in value.split(",")]
    if fs not in DATA_IMAGE_TYPES:
        raise ValueError(f"DataImageType {value!r}: the file system must be one of {', '.join(DATA_IMAGE_TYPES)}")
    for option in options:
        if option not in DATA_IMAGE_OPTIONS:
            raise ValueError(f"DataImageType {value!r}: options are {', '.join(DATA_IMAGE_OPTIONS)}")
    return value


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def ordered_merge_values(fields: Mapping[str, object], order: Sequence[str] = DEFAULT_MERGE_ORDER) -> list[str]:
    """Merge field values in the declared order (missing fields give an empty value, keeping the positions)."""
    by_norm = {_norm(k): k for k in fields}
    used: set[str] = set()
    values: list[str] = []
    for name in order:
        key = by_norm.get(_norm(name))
        if key is not None:
            used.add(key)
        values.append(clean_value(fields.get(key, "") if key is not None else "", MAX_MERGE_VALUE))
    for key, value in fields.items():
        if key not in used:
            values.append(clean_value(value, MAX_MERGE_VALUE))
    while values and not values[-1]:
        values.pop()
    return values


@dataclass
class JrqJob:
    """One PTBurn job; paths are already as the engine sees them."""

    job_id: str
    client_id: str = CLIENT_ID
    importance: int = IMPORTANCE_DEFAULT
    image: str = ""  # image mode
    data: list[str] = field(default_factory=list)  # data mode: files or folders (folder contents are burned)
    data_image_type: str = ""
    close_disc: bool = True
    verify: bool = True
    reject_if_not_blank: bool = True
    copies: int = 1
    print_label: str = ""
    merge_values: list[str] = field(default_factory=list)
    volume_name: str = ""
    robot_name: str = ""


def jrq_lines(job: JrqJob) -> list[tuple[str, str]]:
    checked_id(job.job_id, MAX_ID, "JobID")
    client = clean_value(job.client_id, MAX_ID) or CLIENT_ID
    if not 0 <= int(job.importance) <= 400:
        raise ValueError(f"Importance {job.importance}: must be 0-400")
    if not 1 <= int(job.copies) <= MAX_COPIES:
        raise ValueError(f"Copies {job.copies}: must be 1-{MAX_COPIES}")
    if bool(job.image) == bool(job.data):
        raise ValueError("a JRQ needs either ImageFile or Data lines (exactly one of them)")
    lines: list[tuple[str, str]] = [
        ("JobID", job.job_id),
        ("ClientID", client),
        ("Importance", str(int(job.importance))),
    ]
    if job.image:
        lines += [("ImageFile", checked_path(job.image, "ImageFile")), ("ImageType", IMAGE_TYPE)]
    else:
        for item in job.data:
            lines.append(("Data", checked_path(item, "Data")))
        dtype = check_data_image_type(job.data_image_type or "UDF")
        lines.append(("DataImageType", dtype))
    lines += [
        ("CloseDisc", yes_no(job.close_disc)),
        ("VerifyDisc", yes_no(job.verify)),
        ("RejectIfNotBlank", yes_no(job.reject_if_not_blank)),
        ("Copies", str(int(job.copies))),
    ]
    if job.print_label:
        if not job.print_label.lower().endswith(LABEL_SUFFIXES):
            raise ValueError(f"PrintLabel {job.print_label!r}: must be {', '.join(LABEL_SUFFIXES)}")
        lines.append(("PrintLabel", checked_path(job.print_label, "PrintLabel")))
    if job.merge_values and not job.print_label.lower().endswith(".std"):
        # MergeField fills a SureThing .STD design only; with an image it does nothing (SDK)
        raise ValueError("MergeField lines need a SureThing .STD design as PrintLabel")
    for value in job.merge_values:
        lines.append(("MergeField", clean_value(value, MAX_MERGE_VALUE)))
    volume = clean_value(job.volume_name, MAX_VOLUME)
    if volume:
        lines.append(("VolumeName", volume))
    robot = clean_value(job.robot_name, MAX_ROBOT_NAME)
    if robot:
        lines.append(("RobotName", robot))
    return lines


def build_jrq(job: JrqJob) -> str:
    lines = jrq_lines(job)
    text = "".join(f"{key}={value}\r\n" for key, value in lines)
    if parse_jrq(text) != lines:  # nothing may have added or split a line
        raise ValueError("JRQ self-check failed: a value changed the file's structure")
    return text


def parse_jrq(text: str) -> list[tuple[str, str]]:
    """Read a JRQ/PTM the way PTBurn does: `Key = value` per line (spaces around `=` allowed)."""
    pairs: list[tuple[str, str]] = []
    for line in re.split(r"\r\n|\n|\r", text):
        if not line.strip() or line.lstrip().startswith((";", "#")):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", key.strip()):
            raise ValueError(f"invalid JRQ line {line!r}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def build_abort(client_id: str = CLIENT_ID) -> str:
    """The .PTM command asking PTBurn to abort a job of ours. The job is named by the command
    file's name (the JRQ's, `<stem>.PTM`), not by a key: the file holds Message and ClientID only."""
    client = clean_value(client_id, MAX_ID) or CLIENT_ID
    return f"Message=ABORT\r\nClientID={client}\r\n"
