"""One study as a zip, streamed entry by entry: nothing of the study is assembled in memory or on disk.

Three formats (the setting `http.zip_content` chooses the default):
- "dicom": the files as stored, under DICOM/ with the disc's naming and a DICOMDIR. Every size is
  known before the first byte, so the response has a Content-Length and honours byte ranges.
- "dicom-jpeg-lossless": the same layout, each image JPEG lossless (process 14, SV1) encoded by
  GDCM where it is not already JPEG (pixel-identical: the encoded frame is decoded again and
  compared); the DICOMDIR, which must name each file's syntax, is the last entry. No length.
- "jpeg": one JPEG per frame, windowed like the disc previews, a folder per series. No length.
Entries are stored, never deflated (DICOM pixel data and JPEG hardly shrink, and a stored zip can
be sized). File names come from counters and cleaned descriptions, never raw from the files.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread, dcmwrite
from pydicom.uid import generate_uid
from zipstream import ZIP_STORED, ZipStream

from appliance import index
from appliance.burn import render
from appliance.burn.catalog import ELE, BuildError, InstanceInfo, catalog
from appliance.burn.pdi import CannotTranscode, DicomdirTree
from appliance.burn.pdi import transcode as transcode_to_ele
from appliance.burn.text import ascii_label
from appliance.dicom import byteorder

log = logging.getLogger(__name__)
FORMATS = ("dicom-jpeg-lossless", "dicom", "jpeg")
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
# kept as they are: already JPEG lossless, or lossy (re-encoding decoded lossy pixels only grows them)
KEEP_SYNTAXES = {"1.2.840.10008.1.2.4.57", JPEG_LOSSLESS_SV1, "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                 "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"}
CHUNK = 1024 * 1024
# GDCM encodes a whole object in memory (decoded, encoded, checked: about 3 × its pixels); bigger
# objects (long cine loops) go as stored, or Explicit VR Little Endian decoded a frame at a time
GDCM_MAX_PIXEL_BYTES = 256 * 1024 * 1024


@dataclass
class StudyZip:
    """A zip ready to stream: `size` is its exact length when known in advance. Iterate it once,
    or close() it (a WSGI server does either): close() removes its spool file even when unread."""

    chunks: Iterator[bytes]
    size: int | None
    filename: str
    etag: str = ""  # sized zips: changes when any instance does (If-Range)
    cleanup: Callable[[], None] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks

    def close(self) -> None:
        close = getattr(self.chunks, "close", None)
        if close:
            close()
        if self.cleanup:
            self.cleanup()


def study_instances(conn: sqlite3.Connection, study_uid: str) -> list[InstanceInfo]:
    """The study's instances in disc order (patient, study, series, instance number)."""
    rows = index.instances_by_uid(conn, index.study_sop_uids(conn, study_uid))
    return catalog(rows) if rows else []


def zip_name(infos: Sequence[InstanceInfo], fmt: str) -> str:
    first = infos[0] if infos else None
    base = "_".join(p for p in (ascii_label(first.patient_name.split(",")[0], limit=24, default="STUDY")
                                if first else "STUDY", first.study_date if first else "") if p)
    return f"{base}_{ {'dicom': 'DICOM', 'dicom-jpeg-lossless': 'DICOM-JPEG', 'jpeg': 'JPEG'}[fmt]}.zip"


def build(fmt: str, infos: Sequence[InstanceInfo], *, spool: Path) -> StudyZip:
    """The zip of `infos` (one study) in format `fmt`; `spool` holds at most one transcoded
    instance at a time (unlinked while it streams)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown zip format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not infos:
        raise BuildError("the study has no stored instance")
    _sweep(spool)
    if fmt == "dicom":
        return _as_stored(infos, spool)
    zs = ZipStream(compress_type=ZIP_STORED, sized=False)
    chunks = _jpeg_lossless(zs, infos, spool) if fmt == "dicom-jpeg-lossless" else _jpeg_images(zs, infos)
    return StudyZip(chunks, None, zip_name(infos, fmt))


def _sweep(spool: Path) -> None:
    """Spool files of zips that were built but never streamed (a client that went away early)."""
    try:
        for old in spool.glob("portal-*"):
            if old.stat().st_mtime < time.time() - 86400 and old.stat().st_ctime < time.time() - 3600:
                old.unlink(missing_ok=True)
    except OSError:
        pass


def _as_stored(infos: Sequence[InstanceInfo], spool: Path) -> StudyZip:
    """The sized zip. Its bytes must be the same on every request (a resumed download continues
    another response), so the DICOMDIR's UID comes from the content, and the DICOMDIR is added as a
    file (a spool file, unlinked once streamed) whose time is the newest instance's: zipstream gives
    entries added as data the current time."""
    zs = ZipStream(compress_type=ZIP_STORED, sized=True)
    names = DicomdirTree()
    facts = []
    for info in infos:
        file_id = names.place(info)
        names.add(info, file_id, info.transfer_syntax)
        zs.add_path(str(info.path), "/".join(file_id))
        st = os.stat(info.path)
        facts.append(f"{info.sop_uid}:{st.st_size}:{st.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(facts).encode()).hexdigest()
    dicomdir = names.encode(_fileset_id(infos), generate_uid(entropy_srcs=[digest]))
    spool.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="portal-dicomdir-", dir=spool)
    with os.fdopen(fd, "wb") as f:
        f.write(dicomdir)
    newest = max(os.stat(i.path).st_mtime for i in infos)
    os.utime(name, (newest, newest))
    zs.add_path(name, "DICOMDIR")

    def remove() -> None:
        Path(name).unlink(missing_ok=True)

    def chunks() -> Iterator[bytes]:
        try:
            yield from zs.finalize()
        finally:
            remove()

    return StudyZip(chunks(), len(zs), zip_name(infos, "dicom"), f'"{digest[:32]}-{len(zs)}"', remove)


def _fileset_id(infos: Sequence[InstanceInfo]) -> str:
    return ascii_label(infos[0].patient_name.split(",")[0], limit=16, default="DICOM")


def _file_chunks(f: io.BufferedReader) -> Iterator[bytes]:
    with f:
        while chunk := f.read(CHUNK):
            yield chunk


def _jpeg_lossless(zs: ZipStream, infos: Sequence[InstanceInfo], spool: Path) -> Iterator[bytes]:
    names = DicomdirTree()
    for info in infos:
        file_id = names.place(info)
        source, syntax = _lossless_source(info, spool)
        names.add(info, file_id, syntax)
        zs.add(source, "/".join(file_id))
        yield from zs.all_files()
    zs.add(names.encode(_fileset_id(infos)), "DICOMDIR")
    yield from zs.finalize()


def _open_unlinked(path: Path) -> io.BufferedReader:
    f = open(path, "rb")  # noqa: SIM115 - closed by _file_chunks
    path.unlink()
    return f


def _lossless_source(info: InstanceInfo, spool: Path) -> tuple[Iterable[bytes], str]:
    """The instance's bytes for the JPEG-lossless zip and the syntax they are in.

    Already JPEG: as stored. Images: GDCM JPEG lossless, checked pixel-identical. Objects without
    pixels (SR, PR, KO): Explicit VR Little Endian. What cannot be encoded faithfully is sent in
    Explicit VR Little Endian, else as stored (the DICOMDIR names the syntax either way)."""
    if info.transfer_syntax in KEEP_SYNTAXES or (info.transfer_syntax == ELE and not info.rows):
        return _file_chunks(open(info.path, "rb")), info.transfer_syntax  # noqa: SIM115
    spool.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="portal-", suffix=".dcm", dir=spool)
    os.close(fd)
    tmp = Path(name)
    try:
        if info.rows and info.pixel_bytes <= GDCM_MAX_PIXEL_BYTES and _gdcm_jpeg_lossless(info.path, tmp):
            return _file_chunks(_open_unlinked(tmp)), JPEG_LOSSLESS_SV1
        if info.transfer_syntax != ELE:
            try:
                transcode_to_ele(info.path, tmp, ELE, info.pixel_bytes)
                return _file_chunks(_open_unlinked(tmp)), ELE
            except CannotTranscode as exc:
                log.warning("portal zip: %s stays as stored: %s", info.path.name, exc)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.unlink(missing_ok=True)
    return _file_chunks(open(info.path, "rb")), info.transfer_syntax  # noqa: SIM115


def _gdcm_jpeg_lossless(src: Path, dst: Path) -> bool:
    """Write src with its pixel data JPEG lossless SV1 into dst; False (dst unspecified) when GDCM
    cannot encode it or the encoded frames do not decode to the same pixels.

    GDCM encodes the pixel data only: its ImageWriter would also rewrite other attributes (it adds
    a RescaleType, for one); the rest of the dataset is written by pydicom as received."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        return False
    image = reader.GetImage()
    if image.GetPixelFormat().GetBitsAllocated() not in (8, 16) or image.GetPixelFormat().GetScalarType() in (
            gdcm.PixelFormat.FLOAT32, gdcm.PixelFormat.FLOAT64):
        return False
    original = image.GetBuffer()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(image)
    if not change.Change():
        return False
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(dst))
    if not writer.Write():
        return False
    check = gdcm.ImageReader()
    check.SetFileName(str(dst))
    if not check.Read() or check.GetImage().GetBuffer() != original:
        log.warning("portal zip: JPEG lossless of %s does not decode to the same pixels; sent otherwise", src.name)
        return False
    encoded = dcmread(dst)
    ds = dcmread(src)
    if byteorder.is_big_endian(ds):
        try:
            byteorder.swap_to_little_endian(ds)
        except byteorder.ByteOrderError:
            return False
    for keyword in ("PhotometricInterpretation", "PlanarConfiguration"):
        if keyword in encoded:
            setattr(ds, keyword, encoded[keyword].value)
    for tag in (0x7FE00001, 0x7FE00002):  # extended offset table: belongs to the received encoding
        ds.pop(tag, None)
    ds.PixelData = encoded.PixelData
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEG_LOSSLESS_SV1
    dcmwrite(dst, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return True


def _series_folder(info: InstanceInfo, index: int) -> str:
    desc = re.sub(r"[^A-Za-z0-9]+", "_", ascii_label(info.series_description or info.modality, limit=40,
                                                      default="")).strip("_")
    return f"S{info.series_number or index + 1:03d}" + (f"_{desc}" if desc else "")


def _jpeg_images(zs: ZipStream, infos: Sequence[InstanceInfo]) -> Iterator[bytes]:
    folders: dict[str, str] = {}
    used: set[str] = set()
    counters: dict[str, int] = {}
    for info in infos:
        if not (info.rows and info.columns):
            continue
        folder = folders.get(info.series_uid)
        if folder is None:
            folder = _series_folder(info, len(folders))
            while folder in used:  # two series with the same number and description
                folder += "_"
            used.add(folder)
            folders[info.series_uid] = folder
        n = counters.get(info.series_uid, 0) + 1
        counters[info.series_uid] = n
        frames = [None] if info.frames <= 1 else list(range(info.frames))
        for frame in frames:
            try:
                image = render.display_image(info, frame)
            except Exception as exc:  # an object that cannot be shown has no JPEG (its DICOM zip has it)
                log.info("portal zip: no JPEG for %s: %s", info.path.name, exc)
                continue
            buf = io.BytesIO()
            image.save(buf, "JPEG", quality=92)
            name = f"IMG{n:04d}.jpg" if frame is None else f"IMG{n:04d}_{frame + 1:04d}.jpg"
            zs.add(buf.getvalue(), f"{folder}/{name}")
            yield from zs.all_files()
    yield from zs.finalize()


def byte_range(chunks: Iterable[bytes], start: int, end: int) -> Iterator[bytes]:
    """Bytes start..end (inclusive) of a stream. The zip's central directory needs the CRC of every
    entry, so the entries before `start` are still read, just not sent."""
    pos = 0
    for chunk in chunks:
        nxt = pos + len(chunk)
        if nxt > start and pos <= end:
            yield chunk[max(0, start - pos): end + 1 - pos]
        pos = nxt
        if pos > end:
            return
