"""What the disc builder knows about each instance, from the index row and a few headers.

The index rows (index.instances) already say which file, instance, series and study, in which
transfer syntax and how big. Names, dates and descriptions are the same for every instance of a
series, so only the first header of each series is read (parsing 2000 headers would cost more than
writing the disc image). Headers are also read where the row cannot answer: rows without the UIDs,
files that may be transcoded (their decompressed size), and objects that are not plain images (their
DICOMDIR record needs more keys). Text values are decoded with the file's own Specific Character
Set by pydicom and made safe (`text.display_text`) before anyone sees them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from appliance.burn.text import display_text, person_name

try:  # pydicom's own SOP class → DICOMDIR record type map; without it everything is an IMAGE
    from pydicom.fileset import _four_level_record_type as _record_type
except ImportError:  # pragma: no cover
    def _record_type(ds: Dataset) -> str:
        return "IMAGE"

ELE = "1.2.840.10008.1.2.1"
ROW_KEYS = ("sop_uid", "series_uid", "study_uid", "sop_class", "transfer_syntax")


class BuildError(Exception):
    """A job cannot become a disc; the message says why (shown to the technician)."""


@dataclass(slots=True)
class InstanceInfo:
    path: Path
    size: int
    sop_uid: str
    sop_class: str
    transfer_syntax: str
    study_uid: str
    series_uid: str
    patient_id: str = ""
    patient_name: str = ""  # readable, safe ("Family, Given")
    birth_date: str = ""
    sex: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    accession: str = ""
    institution: str = ""
    modality: str = ""
    series_number: int = 0
    series_description: str = ""
    instance_number: int = 0
    rows: int = 0
    columns: int = 0
    frames: int = 1
    samples: int = 1
    bits_allocated: int = 0
    instance_number_text: str = ""  # as in the file (IS), for the DICOMDIR record
    record_type: str = "IMAGE"  # DICOMDIR leaf record type

    @property
    def patient_key(self) -> str:
        """Who the instance belongs to on the disc: the Patient ID, or for objects without one the
        name and birth date (two patients without ID must not become one patient)."""
        return self.patient_id or f"\0{self.patient_name}\0{self.birth_date}"

    @property
    def pixel_bytes(self) -> int:
        """Uncompressed pixel data size (0 for objects without pixels)."""
        return self.rows * self.columns * self.frames * self.samples * ((self.bits_allocated + 7) // 8)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(str(value).strip() or default)
    except (TypeError, ValueError):
        return default


def read_header(path: Path) -> Dataset:
    """The dataset up to (not including) the pixel data."""
    return dcmread(path, stop_before_pixels=True)


def info_from_header(ds: Dataset, path: Path, size: int, row: Mapping[str, Any] | None = None) -> InstanceInfo:
    row = row or {}
    meta = getattr(ds, "file_meta", None)
    ts = str(getattr(meta, "TransferSyntaxUID", "") or row.get("transfer_syntax") or ELE)
    number = ds.get("InstanceNumber", row.get("instance_number"))
    sop_uid = str(ds.get("SOPInstanceUID") or getattr(meta, "MediaStorageSOPInstanceUID", "") or row.get("sop_uid", ""))
    if not sop_uid:
        raise BuildError(f"{path.name}: no SOP Instance UID")
    return InstanceInfo(
        path=path,
        size=size,
        sop_uid=sop_uid,
        sop_class=str(ds.get("SOPClassUID") or getattr(meta, "MediaStorageSOPClassUID", "") or row.get("sop_class", "")),
        transfer_syntax=ts,
        study_uid=str(ds.get("StudyInstanceUID") or row.get("study_uid", "")),
        series_uid=str(ds.get("SeriesInstanceUID") or row.get("series_uid", "")),
        patient_id=display_text(ds.get("PatientID", ""), 64),
        patient_name=person_name(ds.get("PatientName", "")),
        birth_date=display_text(ds.get("PatientBirthDate", ""), 16),
        sex=display_text(ds.get("PatientSex", ""), 16),
        study_date=display_text(ds.get("StudyDate", ""), 16),
        study_time=display_text(ds.get("StudyTime", ""), 16),
        study_description=display_text(ds.get("StudyDescription", "")),
        accession=display_text(ds.get("AccessionNumber", ""), 64),
        institution=display_text(ds.get("InstitutionName", "")),
        modality=display_text(ds.get("Modality", ""), 16),
        series_number=_int(ds.get("SeriesNumber")),
        series_description=display_text(ds.get("SeriesDescription", "")),
        instance_number=_int(number),
        instance_number_text=str(number if number is not None else "").strip(),
        record_type=_record_type(ds),
        rows=_int(ds.get("Rows")),
        columns=_int(ds.get("Columns")),
        frames=max(1, _int(ds.get("NumberOfFrames"), 1)),
        samples=_int(ds.get("SamplesPerPixel"), 1),
        bits_allocated=_int(ds.get("BitsAllocated")),
    )


@functools.lru_cache(maxsize=256)
def _leaf_type(sop_class: str, modality: str) -> str:
    probe = Dataset()
    probe.SOPClassUID = sop_class
    probe.Modality = modality
    return _record_type(probe)


def _from_row(template: InstanceInfo, row: Mapping[str, Any], path: Path, size: int) -> InstanceInfo | None:
    """The info of an instance whose series we know, from its index row alone (None: read the header)."""
    if not all(row.get(k) for k in ROW_KEYS) or row["transfer_syntax"] != ELE:
        return None
    if _leaf_type(str(row["sop_class"]), template.modality) != "IMAGE":
        return None
    number = str(row.get("instance_number") or "").strip()
    return dataclasses.replace(template, path=path, size=size, sop_uid=str(row["sop_uid"]),
                               sop_class=str(row["sop_class"]), transfer_syntax=ELE,
                               study_uid=str(row["study_uid"]), series_uid=str(row["series_uid"]),
                               instance_number=_int(number), instance_number_text=number, record_type="IMAGE")


def catalog(instances: Sequence[Mapping[str, Any]]) -> list[InstanceInfo]:
    """Facts of every instance of a job, sorted patient → study → series → instance number.

    Duplicated SOP Instance UIDs are kept once. A missing or unreadable file is a BuildError that
    names it (a job never silently burns less than it was given).
    """
    infos: dict[str, InstanceInfo] = {}
    templates: dict[str, InstanceInfo] = {}
    for row in instances:
        row = dict(row)  # sqlite3.Row or any mapping
        path = Path(str(row["path"]))
        try:
            size = os.stat(path).st_size
        except FileNotFoundError as exc:
            raise BuildError(f"instance file missing: {path}") from exc
        template = templates.get(str(row.get("series_uid") or ""))
        info = _from_row(template, row, path, size) if template else None
        if info is None:
            try:
                ds = read_header(path)
            except Exception as exc:  # pydicom raises many kinds on a broken file
                raise BuildError(f"cannot read DICOM file {path}: {exc}") from exc
            info = info_from_header(ds, path, size, row)
            templates.setdefault(info.series_uid, info)
        infos.setdefault(info.sop_uid, info)
    return sorted(infos.values(), key=sort_key)


def sort_key(info: InstanceInfo) -> tuple:
    return (info.patient_key, info.study_date, info.study_time, info.study_uid, info.series_number,
            info.series_uid, info.instance_number, info.sop_uid)
