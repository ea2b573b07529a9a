"""The DICOM part of an IHE PDI disc: files under DICOM/ with ISO 9660 names, and the DICOMDIR.

File names are counters (DICOM/PT000000/ST000000/SE000000/IM000000), never derived from anything
inside the files. A file whose transfer syntax the media profile allows is hard-linked (or copied)
byte for byte; anything else is transcoded to Explicit VR Little Endian, one file at a time.

The DICOMDIR is written here rather than by `pydicom.fileset.FileSet.write()`: FileSet re-encodes
every instance into a staging folder and checks each addition against all earlier ones (37 s for
2000 instances), and it cannot put the files under DICOM/. We reuse pydicom's directory record
definitions (`DIRECTORY_RECORDERS`), encode each record once and patch the offsets (fixed-size UL
values at fixed places at the start of every record) into the bytes.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import DIRECTORY_RECORDERS
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.pixels import iter_pixels
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import PersonName

from appliance.burn.catalog import ELE, BuildError, InstanceInfo, read_header
from appliance.burn.media import output_syntax, profile
from appliance.dicom import byteorder

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


class CannotTranscode(BuildError):
    """This object cannot be transcoded faithfully (no decoder for its compression, a value that
    cannot change byte order); the message says which file and why."""


@dataclass
class StagedInstance:
    info: InstanceInfo
    file_id: list[str]  # ["DICOM", "PT000000", ...]
    path: Path
    transfer_syntax: str  # on the disc
    transcoded: bool
    not_transcoded: str = ""  # why it is on the disc in its received syntax although the profile wants another


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when src and dst share a file system (stored files are never rewritten in place:
    storage replaces them by rename), else a plain copy. Either way dst is byte-identical."""
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
        shutil.copyfile(src, dst)


STREAM_ABOVE = 32 * 1024 * 1024  # decoded pixel bytes above which frames are decoded one at a time


def _stream_decompress(src: Path, dst: Path) -> bool:
    """Decompress frame by frame straight into dst (memory: one frame); False when this file needs the
    whole-dataset path (bit-packed or odd pixel layouts). Same result as pydicom's decompress()."""
    header = dcmread(src, stop_before_pixels=True)
    bits = int(header.get("BitsAllocated", 0) or 0)
    spp = int(header.get("SamplesPerPixel", 1) or 1)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if bits not in (8, 16, 32) or not header.get("Rows") or not header.get("Columns"):
        return False
    frame_bytes = int(header.Rows) * int(header.Columns) * spp * bits // 8
    total = frame_bytes * frames
    if total >= 2**32 - 2:
        raise CannotTranscode(f"{src.name}: decompressed pixel data would exceed 4 GB")
    for tag in (0x7FE00001, 0x7FE00002):  # extended offset table (lengths) belongs to the compressed form
        header.pop(tag, None)
    if spp == 3 and str(header.get("PhotometricInterpretation", "")).startswith("YBR"):
        header.PhotometricInterpretation = "RGB"  # what pydicom's decoders deliver (as_rgb)
    if spp > 1:
        header.PlanarConfiguration = 0
    header.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    tmp = dst.with_name(dst.name + ".tmp")
    written = 0
    try:
        with open(tmp, "wb") as f:
            header.save_as(f, implicit_vr=False, little_endian=True, enforce_file_format=True)
            vr = b"OB" if bits <= 8 else b"OW"
            f.write(struct.pack("<HH", 0x7FE0, 0x0010) + vr + b"\0\0" + struct.pack("<I", total + total % 2))
            for arr in iter_pixels(src):
                data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
                if len(data) != frame_bytes:
                    raise CannotTranscode(f"{src.name}: a decoded frame has {len(data)} bytes, expected "
                                          f"{frame_bytes}")
                f.write(data)
                written += 1
            if total % 2:
                f.write(b"\0")
        if written != frames:
            raise CannotTranscode(f"{src.name}: decoded {written} frames, the header says {frames}")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dst)
    return True


def transcode(src: Path, dst: Path, transfer_syntax: str, pixel_bytes: int = 0) -> None:
    """Write src as `transfer_syntax` (only ELE is ever asked for); lossless data stays pixel-identical.

    Big compressed objects (multi-frame cine, large mammograms) are decoded a frame at a time.
    CannotTranscode: the object itself cannot be written faithfully in that syntax (the caller puts
    it on the disc as received); other errors (disk full) fail the build."""
    if transfer_syntax != ELE:
        raise BuildError(f"transcoding to {transfer_syntax} is not supported")
    meta = dcmread(src, stop_before_pixels=True).file_meta
    if meta.TransferSyntaxUID.is_compressed and pixel_bytes > STREAM_ABOVE:
        try:
            if _stream_decompress(src, dst):
                return
        except (BuildError, OSError):  # OSError: disk full or unreadable, not the object's fault
            raise
        except Exception as exc:
            raise CannotTranscode(f"cannot decompress {src.name} ({meta.TransferSyntaxUID.name}): {exc}") from exc
    ds = dcmread(src)
    if ds.file_meta.TransferSyntaxUID.is_compressed and "PixelData" in ds:
        try:
            ds.decompress(generate_instance_uid=False)  # same instance, other encoding: keep its UID
        except OSError:
            raise
        except Exception as exc:
            raise CannotTranscode(f"cannot decompress {src.name} ({ds.file_meta.TransferSyntaxUID.name}): {exc}"
                                  ) from exc
    if byteorder.is_big_endian(ds):  # Explicit VR Big Endian: pydicom leaves binary values as read
        try:
            byteorder.swap_to_little_endian(ds)
        except byteorder.ByteOrderError as exc:
            raise CannotTranscode(f"cannot change the byte order of {src.name}: {exc}") from exc
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    tmp = dst.with_name(dst.name + ".tmp")
    dcmwrite(tmp, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
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
    __slots__ = ("record", "children", "offset", "encoded")

    def __init__(self, record: Dataset | None) -> None:
        self.record = record  # None: `encoded` is already set
        self.children: list[_Node] = []
        self.offset = 0
        self.encoded = bytearray()


def _record(kind: str, ds: Dataset, charset: object) -> Dataset:
    try:
        record = DIRECTORY_RECORDERS[kind](ds)
    except (KeyError, ValueError, AttributeError):  # a leaf lacking its type 1 keys: keep it findable
        record = Dataset()
        if "InstanceNumber" in ds:
            record.InstanceNumber = ds.InstanceNumber
    return _wrap(kind, record, charset)


_CONTROL = re.compile("[\x00-\x1a\x1c-\x1f\x7f]")  # everything but ESC (ISO 2022 code extensions)


def _wrap(kind: str, record: Dataset, charset: object) -> Dataset:
    """A directory record around `record`'s keys; text with control characters (a scanner sent a
    newline in a name: invalid PN) is mended with spaces in the record, the file stays as received."""
    for element in record:
        if element.VR in ("PN", "LO", "SH", "CS", "DA", "TM") and isinstance(element.value, str | PersonName):
            text = str(element.value)
            if _CONTROL.search(text):
                element.value = _CONTROL.sub(" ", text)
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


# explicit VR little endian element headers of the offsets every record starts with
_NEXT_AT, _LOWER_AT = 8, 30
_NEXT_TAG, _LOWER_TAG = b"\x04\x00\x00\x14UL\x04\x00", b"\x04\x00\x20\x14UL\x04\x00"
_FIRST_TAG, _LAST_TAG = b"\x04\x00\x00\x12UL\x04\x00", b"\x04\x00\x02\x12UL\x04\x00"
_SEQUENCE_TAG = b"\x04\x00\x20\x12SQ\x00\x00"
_ITEM_TAG = b"\xfe\xff\x00\xe0"


def _encode(record: Dataset) -> bytearray:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, record)
    data = bytearray(buf.getvalue())
    if data[:8] != _NEXT_TAG or data[22:30] != _LOWER_TAG:
        raise BuildError("unexpected DICOMDIR record layout")
    return data


def encode_dicomdir(patients: list[_Node], fileset_id: str, instance_uid: str = "") -> bytes:
    """The DICOMDIR file's bytes: records in pre-order, offsets are byte positions in the file.
    `instance_uid`: its SOP Instance UID (default: a new one; the portal derives it from the content
    so the same study gives the same bytes twice, and a download can resume)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MEDIA_STORAGE_DIRECTORY
    ds.file_meta.MediaStorageSOPInstanceUID = instance_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.FileSetID = fileset_id[:16]
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    buf = DicomBytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True, enforce_file_format=True)
    head = bytearray(buf.getvalue())  # everything before the Directory Record Sequence

    nodes = list(_preorder(patients))
    offset = len(head) + len(_SEQUENCE_TAG) + 4
    for node in nodes:  # every record is encoded once; its length does not depend on the offsets
        if node.record is not None:
            node.encoded = _encode(node.record)
        node.offset = offset
        offset += 8 + len(node.encoded)

    def link(siblings: list[_Node]) -> None:
        for i, node in enumerate(siblings):
            nxt = siblings[i + 1].offset if i + 1 < len(siblings) else 0
            lower = node.children[0].offset if node.children else 0
            struct.pack_into("<I", node.encoded, _NEXT_AT, nxt)
            struct.pack_into("<I", node.encoded, _LOWER_AT, lower)
            link(node.children)

    link(patients)
    for tag, value in ((_FIRST_TAG, patients[0].offset if patients else 0),
                       (_LAST_TAG, patients[-1].offset if patients else 0)):
        at = head.find(tag)
        if at < 0:
            raise BuildError("unexpected DICOMDIR header layout")
        struct.pack_into("<I", head, at + 8, value)
    parts = [bytes(head), _SEQUENCE_TAG + struct.pack("<I", offset - len(head) - len(_SEQUENCE_TAG) - 4)]
    for node in nodes:
        parts.append(_ITEM_TAG + struct.pack("<I", len(node.encoded)))
        parts.append(bytes(node.encoded))
    return b"".join(parts)


def write_dicomdir(path: Path, patients: list[_Node], fileset_id: str) -> None:
    """Write the DICOMDIR (see `encode_dicomdir`) atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encode_dicomdir(patients, fileset_id))
    os.replace(tmp, path)


def _element(group: int, elem: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value


_IS = re.compile(r"[+-]?\d{1,11}")


def _image_leaf(instance_number: str, file_id: list[str], sop_class: str, sop_uid: str, ts: str) -> bytearray:
    """An IMAGE record encoded directly (explicit VR little endian, short VRs only): the common leaf,
    2000 of them cost 4 s through pydicom's generic writer on a busy machine. Same bytes as pydicom's."""
    return bytearray(b"".join((
        _element(0x0004, 0x1400, b"UL", b"\0\0\0\0", b""),
        _element(0x0004, 0x1410, b"US", struct.pack("<H", 0xFFFF), b""),
        _element(0x0004, 0x1420, b"UL", b"\0\0\0\0", b""),
        _element(0x0004, 0x1430, b"CS", b"IMAGE", b" "),
        _element(0x0004, 0x1500, b"CS", "\\".join(file_id).encode("ascii"), b" "),
        _element(0x0004, 0x1510, b"UI", sop_class.encode("ascii"), b"\0"),
        _element(0x0004, 0x1511, b"UI", sop_uid.encode("ascii"), b"\0"),
        _element(0x0004, 0x1512, b"UI", ts.encode("ascii"), b"\0"),
        _element(0x0020, 0x0013, b"IS", instance_number.encode("ascii"), b" "),
    )))


_UID = re.compile(r"[0-9.]{1,64}")


class DicomdirTree:
    """The PDI file naming and DICOMDIR records of a stream of instances in catalog order.

    `place(info)` gives an instance its file ID (DICOM/PTnnnnnn/STnnnnnn/SEnnnnnn/IMnnnnnn, counters
    only) and makes the patient, study and series records it needs; `add(info, file_id, ts)` adds
    its leaf once the syntax it is written in is known; `encode()` gives the DICOMDIR. Used for the
    disc (stage_dicom) and for the portal's zips, which never have the files on disk.
    """

    def __init__(self) -> None:
        self.patients: list[_Node] = []
        self._patient_nodes: dict[str, tuple[_Node, int]] = {}
        self._study_nodes: dict[tuple[str, str], tuple[_Node, int]] = {}
        self._series_nodes: dict[str, tuple[_Node, int, int, int]] = {}  # node, patient, study, series index
        self._instance_counts: dict[str, int] = {}
        self._pending: dict[str, tuple[Dataset | None, int, int]] = {}  # sop uid: header read, series/instance index

    def place(self, info: InstanceInfo) -> list[str]:
        e_node, p_index, s_index, e_index = self._series_nodes.get(info.series_uid, (None, 0, 0, 0))
        i_index = self._instance_counts.get(info.series_uid, 0)
        self._instance_counts[info.series_uid] = i_index + 1
        ds = None
        if e_node is None:  # the header is needed for the patient, study and series records
            ds = read_header(info.path)
            charset = ds.get("SpecificCharacterSet")
            p_node, p_index = self._patient_nodes.get(info.patient_key, (None, len(self.patients)))
            s_key = (info.patient_key, info.study_uid)
            s_node, s_index = self._study_nodes.get(s_key, (None, len(p_node.children) if p_node else 0))
            e_index = len(s_node.children) if s_node else 0
            _fill_required(ds, info, e_index, i_index)
            if p_node is None:
                p_node = _Node(_record("PATIENT", ds, charset))
                self.patients.append(p_node)
                self._patient_nodes[info.patient_key] = (p_node, p_index)
            if s_node is None:
                s_node = _Node(_record("STUDY", ds, charset))
                p_node.children.append(s_node)
                self._study_nodes[s_key] = (s_node, s_index)
            e_node = _Node(_record("SERIES", ds, charset))
            s_node.children.append(e_node)
            self._series_nodes[info.series_uid] = (e_node, p_index, s_index, e_index)
        self._pending[info.sop_uid] = (ds, e_index, i_index)
        return ["DICOM", f"PT{p_index:06d}", f"ST{s_index:06d}", f"SE{e_index:06d}", f"IM{i_index:06d}"]

    def add(self, info: InstanceInfo, file_id: list[str], transfer_syntax: str) -> None:
        """The leaf record of a placed instance, written in `transfer_syntax`."""
        ds, e_index, i_index = self._pending.pop(info.sop_uid)
        e_node = self._series_nodes[info.series_uid][0]
        number = info.instance_number_text if _IS.fullmatch(info.instance_number_text) else str(i_index + 1)
        if info.record_type == "IMAGE" and all(_UID.fullmatch(u) for u in (info.sop_class, info.sop_uid,
                                                                              transfer_syntax)):
            leaf_node = _Node(None)
            leaf_node.encoded = _image_leaf(number, file_id, info.sop_class, info.sop_uid, transfer_syntax)
        else:
            if ds is None:
                ds = read_header(info.path)
            _fill_required(ds, info, e_index, i_index)
            leaf = _record(info.record_type, ds, ds.get("SpecificCharacterSet"))
            leaf.ReferencedFileID = file_id
            leaf.ReferencedSOPClassUIDInFile = info.sop_class
            leaf.ReferencedSOPInstanceUIDInFile = info.sop_uid
            leaf.ReferencedTransferSyntaxUIDInFile = transfer_syntax
            leaf_node = _Node(leaf)
        e_node.children.append(leaf_node)

    def encode(self, fileset_id: str, instance_uid: str = "") -> bytes:
        return encode_dicomdir(self.patients, fileset_id, instance_uid)


def stage_dicom(infos: Sequence[InstanceInfo], tree: Path, media: str, fileset_id: str,
                on_file: Callable[[Path], None] | None = None) -> list[StagedInstance]:
    """Put every instance under tree/DICOM/ and write tree/DICOMDIR; `infos` are in catalog order.

    An instance that cannot be transcoded to the profile's syntax goes on the disc as received (its
    DICOMDIR record says so); its StagedInstance says why (`not_transcoded`, see `off_profile_notes`).

    `on_file(path)` is called for each DICOM file once it is in place (the builder hashes it).
    """
    staged: list[StagedInstance] = []
    names = DicomdirTree()
    (tree / "DICOM").mkdir(parents=True, exist_ok=True)
    for info in infos:
        out_ts = output_syntax(info.transfer_syntax, media)
        file_id = names.place(info)
        dest = tree.joinpath(*file_id)
        if file_id[-1] == "IM000000":  # first instance of its series: the series folder is new
            dest.parent.mkdir(parents=True, exist_ok=True)
        why_not = ""
        if out_ts == info.transfer_syntax:
            link_or_copy(info.path, dest)
        else:
            try:
                transcode(info.path, dest, out_ts, info.pixel_bytes)
            except CannotTranscode as exc:  # not left out: on the disc as received, and said so
                why_not = str(exc)
                out_ts = info.transfer_syntax
                link_or_copy(info.path, dest)
        if on_file:
            on_file(dest)
        names.add(info, file_id, out_ts)
        staged.append(StagedInstance(info, file_id, dest, out_ts, out_ts != info.transfer_syntax, why_not))
    write_dicomdir(tree / "DICOMDIR", names.patients, fileset_id)
    return staged


def off_profile_notes(staged: Sequence[StagedInstance], media: str) -> list[str]:
    """One line per instance that is not in the syntax the disc's profile asks for: which file, which
    instance, which syntax it has and why (for the job, README.TXT and INDEX.HTM)."""
    notes = []
    for item in staged:
        if not item.not_transcoded:
            continue
        wanted = output_syntax(item.info.transfer_syntax, media)
        notes.append(f"{'/'.join(item.file_id)} (SOP Instance {item.info.sop_uid}) is on this disc as received, "
                     f"in {_syntax_name(item.transfer_syntax)}, not in {_syntax_name(wanted)} as the "
                     f"{profile(media)} profile asks: {item.not_transcoded[:200]}")
    return notes


def _syntax_name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid
