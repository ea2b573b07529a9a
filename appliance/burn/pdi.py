"""The DICOM part of an IHE PDI disc: files under DICOM/ with ISO 9660 names, and the DICOMDIR.

File names are counters (DICOM/PT000000/ST000000/SE000000/IM000000), never derived from anything
inside the files. A file whose transfer syntax the media profile allows is hard-linked (or copied)
byte for byte; anything else is transcoded to Explicit VR Little Endian, one file at a time.

The DICOMDIR is written here rather than by `pydicom.fileset.FileSet.write()`: FileSet re-encodes
every instance into a staging folder and checks each addition against all earlier ones (37 s for
2000 instances), and it cannot put the files under DICOM/. We reuse pydicom's directory record
definitions (`DIRECTORY_RECORDERS`) and compute the record offsets the same way FileSet does.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import DIRECTORY_RECORDERS
from pydicom.filewriter import write_dataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from appliance.burn.catalog import ELE, BuildError, InstanceInfo, read_header
from appliance.burn.media import output_syntax

try:  # the SOP class → record type map is pydicom's own; fall back to IMAGE without it
    from pydicom.fileset import _four_level_record_type as _record_type
except ImportError:  # pragma: no cover
    def _record_type(ds: Dataset) -> str:
        return "IMAGE"

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_NEXT, _LOWER = "OffsetOfTheNextDirectoryRecord", "OffsetOfReferencedLowerLevelDirectoryEntity"


@dataclass
class StagedInstance:
    info: InstanceInfo
    file_id: list[str]  # ["DICOM", "PT000000", ...]
    path: Path
    transfer_syntax: str  # on the disc
    transcoded: bool


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when src and dst share a file system (stored files are never rewritten in place:
    storage replaces them by rename), else a plain copy. Either way dst is byte-identical."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
        shutil.copyfile(src, dst)


def transcode(src: Path, dst: Path, transfer_syntax: str) -> None:
    """Write src as `transfer_syntax` (only ELE is ever asked for); lossless data stays pixel-identical."""
    if transfer_syntax != ELE:
        raise BuildError(f"transcoding to {transfer_syntax} is not supported")
    ds = dcmread(src)
    if ds.file_meta.TransferSyntaxUID.is_compressed and "PixelData" in ds:
        try:
            ds.decompress()
        except Exception as exc:
            raise BuildError(f"cannot decompress {src.name} ({ds.file_meta.TransferSyntaxUID.name}): {exc}") from exc
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    tmp = dst.with_name(dst.name + ".tmp")
    ds.save_as(tmp, implicit_vr=False, little_endian=True, enforce_file_format=True)
    os.replace(tmp, dst)


def _fill_required(ds: Dataset, info: InstanceInfo, series_index: int, instance_index: int) -> None:
    """Invent type 1 DICOMDIR keys the file lacks (as dcmmkdir +I does); only the record changes."""
    def empty(keyword: str) -> bool:
        return not str(ds.get(keyword, "") or "").strip()

    if empty("PatientID"):
        ds.PatientID = "UNKNOWN"
    if empty("StudyDate"):
        ds.StudyDate = next((str(ds.get(k)) for k in ("SeriesDate", "AcquisitionDate", "ContentDate")
                             if not empty(k)), dt.date.today().strftime("%Y%m%d"))
    if empty("StudyTime"):
        ds.StudyTime = next((str(ds.get(k)) for k in ("SeriesTime", "AcquisitionTime", "ContentTime")
                             if not empty(k)), "000000")
    if empty("StudyID"):
        ds.StudyID = "1"
    if empty("Modality"):
        ds.Modality = "OT"
    if empty("SeriesNumber"):
        ds.SeriesNumber = series_index + 1
    if empty("InstanceNumber"):
        ds.InstanceNumber = instance_index + 1
    if empty("StudyInstanceUID"):
        ds.StudyInstanceUID = info.study_uid
    if empty("SeriesInstanceUID"):
        ds.SeriesInstanceUID = info.series_uid


class _Node:
    __slots__ = ("record", "children", "offset")

    def __init__(self, record: Dataset) -> None:
        self.record = record
        self.children: list[_Node] = []
        self.offset = 0


def _record(kind: str, ds: Dataset, charset: object) -> Dataset:
    try:
        record = DIRECTORY_RECORDERS[kind](ds)
    except (KeyError, ValueError, AttributeError):  # a leaf lacking its type 1 keys: keep it findable
        record = Dataset()
        if "InstanceNumber" in ds:
            record.InstanceNumber = ds.InstanceNumber
    out = Dataset()
    out.OffsetOfTheNextDirectoryRecord = 0
    out.RecordInUseFlag = 0xFFFF
    out.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    out.DirectoryRecordType = kind
    if charset:
        out.SpecificCharacterSet = charset
    for element in record:
        out.add(element)
    return out


def _preorder(nodes: Iterable[_Node]) -> Iterable[_Node]:
    for node in nodes:
        yield node
        yield from _preorder(node.children)


def write_dicomdir(path: Path, patients: list[_Node], fileset_id: str) -> None:
    """Encode the DICOMDIR: records in pre-order, offsets are byte positions in the file."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MEDIA_STORAGE_DIRECTORY
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.FileSetID = fileset_id[:16]
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = []
    head = DicomBytesIO()
    ds.save_as(head, implicit_vr=False, little_endian=True, enforce_file_format=True)
    offset = len(head.getvalue())  # the file ends with the empty sequence's header: items start here

    nodes = list(_preorder(patients))
    for node in nodes:  # UL offsets have a fixed size, so each record's length is known up front
        node.offset = offset
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        write_dataset(buf, node.record)
        offset += 8 + len(buf.getvalue())  # item tag + length, then the record

    def link(siblings: list[_Node]) -> None:
        for i, node in enumerate(siblings):
            node.record[_NEXT].value = siblings[i + 1].offset if i + 1 < len(siblings) else 0
            node.record[_LOWER].value = node.children[0].offset if node.children else 0
            link(node.children)

    link(patients)
    if patients:
        ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = patients[0].offset
        ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = patients[-1].offset
    ds.DirectoryRecordSequence = [node.record for node in nodes]
    tmp = path.with_name(path.name + ".tmp")
    ds.save_as(tmp, implicit_vr=False, little_endian=True, enforce_file_format=True)
    if tmp.stat().st_size != offset:
        raise BuildError(f"DICOMDIR encoding mismatch ({tmp.stat().st_size} != {offset} bytes)")
    os.replace(tmp, path)


def stage_dicom(infos: Sequence[InstanceInfo], tree: Path, media: str, fileset_id: str) -> list[StagedInstance]:
    """Put every instance under tree/DICOM/ and write tree/DICOMDIR; `infos` are in catalog order."""
    staged: list[StagedInstance] = []
    patients: list[_Node] = []
    patient_nodes: dict[str, tuple[_Node, int]] = {}
    study_nodes: dict[tuple[str, str], tuple[_Node, int]] = {}
    series_nodes: dict[str, tuple[_Node, int]] = {}
    instance_counts: dict[str, int] = {}

    (tree / "DICOM").mkdir(parents=True, exist_ok=True)
    for info in infos:
        ds = read_header(info.path)
        charset = ds.get("SpecificCharacterSet")
        out_ts = output_syntax(info.transfer_syntax, media)
        p_node, p_index = patient_nodes.get(info.patient_id, (None, len(patients)))
        s_key = (info.patient_id, info.study_uid)
        s_node, s_index = study_nodes.get(s_key, (None, len(p_node.children) if p_node else 0))
        e_node, e_index = series_nodes.get(info.series_uid, (None, len(s_node.children) if s_node else 0))
        i_index = instance_counts.get(info.series_uid, 0)
        instance_counts[info.series_uid] = i_index + 1
        _fill_required(ds, info, e_index, i_index)
        if p_node is None:
            p_node = _Node(_record("PATIENT", ds, charset))
            patients.append(p_node)
            patient_nodes[info.patient_id] = (p_node, p_index)
        if s_node is None:
            s_node = _Node(_record("STUDY", ds, charset))
            p_node.children.append(s_node)
            study_nodes[s_key] = (s_node, s_index)
        if e_node is None:
            e_node = _Node(_record("SERIES", ds, charset))
            s_node.children.append(e_node)
            series_nodes[info.series_uid] = (e_node, e_index)
        file_id = ["DICOM", f"PT{p_index:06d}", f"ST{s_index:06d}", f"SE{e_index:06d}", f"IM{i_index:06d}"]
        dest = tree.joinpath(*file_id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if out_ts == info.transfer_syntax:
            link_or_copy(info.path, dest)
        else:
            transcode(info.path, dest, out_ts)
        leaf = _record(_record_type(ds), ds, charset)
        leaf.ReferencedFileID = file_id
        leaf.ReferencedSOPClassUIDInFile = info.sop_class
        leaf.ReferencedSOPInstanceUIDInFile = info.sop_uid
        leaf.ReferencedTransferSyntaxUIDInFile = out_ts
        e_node.children.append(_Node(leaf))
        staged.append(StagedInstance(info, file_id, dest, out_ts, out_ts != info.transfer_syntax))
    write_dicomdir(tree / "DICOMDIR", patients, fileset_id)
    return staged
