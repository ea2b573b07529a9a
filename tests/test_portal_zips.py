"""Streamed study zips: the three formats checked with zipfile, dcmdump, dciodvfy and pixel by pixel."""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.fileset import FileSet
from pydicom.uid import RLELossless
from support import make_dataset, write_study

from appliance import db, index
from appliance.portal import zips


def dciodvfy_errors(path: Path) -> set[str]:
    proc = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert out.strip(), "dciodvfy said nothing"
    return {line for line in out.splitlines() if line.startswith("Error")}


@pytest.fixture
def study(tmp_path):
    """One study: a CT series (16 bit), an RGB series, an 8-bit multi-frame object and an RLE one."""
    data = tmp_path / "data"
    store = data / "storage" / "s"
    paths = write_study(store, n_series=1, per_series=3, study_uid="1.2.3.4.5")
    kw = dict(study_uid="1.2.3.4.5")
    rgb = make_dataset(series_number=2, modality="OT", photometric="RGB", series_uid="1.2.3.4.5.2", **kw)
    rgb.save_as(store / "rgb.dcm", enforce_file_format=True)
    cine = make_dataset(series_number=3, modality="OT", bits=8, frames=5, series_uid="1.2.3.4.5.3",
                        series_description="CINE", **kw)
    cine.save_as(store / "cine.dcm", enforce_file_format=True)
    rle = make_dataset(series_number=4, modality="MR", series_uid="1.2.3.4.5.4", **kw)
    rle.compress(RLELossless, generate_instance_uid=False)
    rle.save_as(store / "rle.dcm", enforce_file_format=True)
    paths += [store / "rgb.dcm", store / "cine.dcm", store / "rle.dcm"]
    conn = db.connect(data)
    index.reindex(conn, data / "storage")
    return data, conn, {str(dcmread(p).SOPInstanceUID): p for p in paths}


def unzip(data: bytes, to: Path) -> zipfile.ZipFile:
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert zf.testzip() is None
    assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    zf.extractall(to)
    return zf


def test_jpeg_lossless_zip_is_a_valid_file_set_with_the_same_pixels(study, tmp_path):
    data, conn, stored = study
    z = zips.build("dicom-jpeg-lossless", zips.study_instances(conn, "1.2.3.4.5"), spool=data / "spool")
    assert z.size is None and z.filename.endswith("_DICOM-JPEG.zip")
    out = tmp_path / "out"
    zf = unzip(b"".join(z.chunks), out)
    assert "DICOMDIR" in zf.namelist() and all(n == "DICOMDIR" or n.startswith("DICOM/PT") for n in zf.namelist())
    assert list((data / "spool").iterdir()) == []  # nothing left behind
    dump = subprocess.run(["/usr/bin/dcmdump", str(out / "DICOMDIR")], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "DirectoryRecordSequence" in dump.stdout
    assert dciodvfy_errors(out / "DICOMDIR") == set()
    fs = FileSet(dcmread(out / "DICOMDIR"))
    assert {str(i.SOPInstanceUID) for i in fs} == set(stored)
    for record in fs:
        got = dcmread(record.path)
        original = dcmread(stored[str(record.SOPInstanceUID)])
        assert str(got.file_meta.TransferSyntaxUID) == zips.JPEG_LOSSLESS_SV1 == record.ReferencedTransferSyntaxUIDInFile
        assert np.array_equal(got.pixel_array, original.pixel_array), record.path
        assert got.PatientName == original.PatientName and got.SOPInstanceUID == original.SOPInstanceUID
        # no IOD error the stored object does not have already (test data lacks some type 2 keys)
        assert dciodvfy_errors(Path(record.path)) <= dciodvfy_errors(stored[str(record.SOPInstanceUID)])


def test_as_stored_zip_has_its_size_in_advance_and_resumes(study, tmp_path):
    data, conn, stored = study
    infos = zips.study_instances(conn, "1.2.3.4.5")
    z = zips.build("dicom", infos, spool=data / "spool")
    body = b"".join(z.chunks)
    assert len(body) == z.size
    assert list((data / "spool").iterdir()) == []  # the DICOMDIR's spool file is gone once streamed
    out = tmp_path / "out"
    unzip(body, out)
    fs = FileSet(dcmread(out / "DICOMDIR"))
    assert dciodvfy_errors(out / "DICOMDIR") == set()
    for record in fs:  # byte for byte what was stored, the RLE file still RLE
        assert Path(record.path).read_bytes() == stored[str(record.SOPInstanceUID)].read_bytes()
    for start, end in ((0, 99), (z.size // 3, z.size - 1), (z.size - 10, z.size - 1), (5000, 5000)):
        again = zips.build("dicom", infos, spool=data / "spool")
        assert again.size == z.size
        assert b"".join(zips.byte_range(again.chunks, start, end)) == body[start:end + 1]


def test_jpeg_zip_has_a_picture_per_frame_in_folders_per_series(study, tmp_path):
    data, conn, _ = study
    z = zips.build("jpeg", zips.study_instances(conn, "1.2.3.4.5"), spool=data / "spool")
    zf = unzip(b"".join(z.chunks), tmp_path / "out")
    names = sorted(zf.namelist())
    folders = sorted({n.split("/")[0] for n in names})
    assert folders == ["S001_AXIAL", "S002_AXIAL", "S003_CINE", "S004_AXIAL"]
    assert len([n for n in names if n.startswith("S003_CINE/")]) == 5
    assert len(names) == 3 + 1 + 5 + 1
    for name in names:
        with Image.open(io.BytesIO(zf.read(name))) as im:
            assert im.format == "JPEG" and im.size == (64, 64)
    with Image.open(io.BytesIO(zf.read("S002_AXIAL/IMG0001.jpg"))) as im:
        assert im.mode == "RGB"


def test_bad_format_and_empty_study(study):
    data, conn, _ = study
    with pytest.raises(ValueError, match="unknown zip format"):
        zips.build("tar", zips.study_instances(conn, "1.2.3.4.5"), spool=data / "spool")
    assert zips.study_instances(conn, "9.9") == []


def test_jpeg_lossless_of_awkward_inputs_is_pixel_identical(tmp_path):
    """Signed pixels, all 16 bits used, big endian (dcmtk wrote it), implicit VR, JPEG 2000 lossless."""
    from pydicom.uid import JPEG2000Lossless

    data = tmp_path / "data"
    store = data / "storage" / "s"
    store.mkdir(parents=True)
    kw = dict(study_uid="1.2.3.9", rows=48, cols=40)
    signed = make_dataset(series_number=1, instance_number=1, **kw)
    signed.PixelRepresentation = 1
    signed.PixelData = np.random.default_rng(1).integers(-2048, 2047, (48, 40), dtype=np.int16).tobytes()
    signed.save_as(store / "signed.dcm", enforce_file_format=True)
    full = make_dataset(series_number=2, instance_number=1, **kw)
    full.BitsStored, full.HighBit = 16, 15
    full.PixelData = np.random.default_rng(2).integers(0, 65535, (48, 40), dtype=np.uint16).tobytes()
    full.save_as(store / "full.dcm", enforce_file_format=True)
    make_dataset(series_number=3, instance_number=1, modality="OT", bits=8, **kw).save_as(
        tmp_path / "le8.dcm", enforce_file_format=True)
    subprocess.run(["/usr/bin/dcmconv", "+tb", str(tmp_path / "le8.dcm"), str(store / "big.dcm")], check=True)
    implicit = make_dataset(series_number=4, instance_number=1, **kw)
    implicit.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    implicit.save_as(store / "implicit.dcm", implicit_vr=True, enforce_file_format=True)
    j2k = make_dataset(series_number=5, instance_number=1, **kw)
    j2k.compress(JPEG2000Lossless, generate_instance_uid=False)
    j2k.save_as(store / "j2k.dcm", enforce_file_format=True)
    conn = db.connect(data)
    index.reindex(conn, data / "storage")
    stored = {str(dcmread(p).SOPInstanceUID): p for p in store.iterdir()}
    assert len(stored) == 5 and str(dcmread(store / "big.dcm").file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.2"
    z = zips.build("dicom-jpeg-lossless", zips.study_instances(conn, "1.2.3.9"), spool=data / "spool")
    out = tmp_path / "out"
    unzip(b"".join(z.chunks), out)
    assert dciodvfy_errors(out / "DICOMDIR") == set()
    fs = FileSet(dcmread(out / "DICOMDIR"))
    assert {str(i.SOPInstanceUID) for i in fs} == set(stored)
    for record in fs:
        got, original = dcmread(record.path), dcmread(stored[str(record.SOPInstanceUID)])
        assert str(got.file_meta.TransferSyntaxUID) == zips.JPEG_LOSSLESS_SV1, record.path
        assert got.pixel_array.dtype == original.pixel_array.dtype
        assert np.array_equal(got.pixel_array, original.pixel_array), stored[str(record.SOPInstanceUID)].name
