"""Test objects for byte order (issue 17): every valid pixel layout in little and big endian.

Pixel values, overlay bits and LUT entries are authored here; the little endian file is written by
pydicom, its big endian twin by dcmtk (`dcmconv +tb`), so the big endian bytes come from an encoder
that is not the one under test. Each object: Bits Allocated 8 (OB or OW), 16 or 32 (OW), 1 or 2
frames, a 1-bit overlay (OW, or OB beside OB pixels) and a Modality LUT whose LUT Data is OW.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from support import dcmtk

ROWS, COLS = 5, 7  # 35 pixels: an 8-bit frame is an odd number of bytes, frames straddle OW words
LAYOUTS = [(8, "OB"), (8, "OW"), (16, "OW"), (32, "OW")]
FRAMES = (1, 2)
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class Authored:
    """What an object must decode to, wherever it ends up."""

    name: str
    sop_uid: str
    pixels: np.ndarray  # (frames, rows, cols)
    overlay: np.ndarray  # (rows, cols) of 0/1
    lut: np.ndarray  # uint16 entries


def _dataset(name: str, bits: int, vr: str, frames: int, study_uid: str, series_uid: str, number: int,
             rng: np.random.Generator) -> tuple[Dataset, Authored]:
    dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32}[bits]
    pixels = rng.integers(1, np.iinfo(dtype).max, size=(frames, ROWS, COLS), dtype=dtype, endpoint=True)
    overlay = rng.integers(0, 2, size=(ROWS, COLS), dtype=np.uint8)
    lut = rng.integers(0, 0xFFFF, size=9, dtype=np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "P17", "BYTE^ORDER", "19700101", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "A17"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "OT", 1, number
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = ROWS, COLS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    data = pixels.astype(f"<u{bits // 8}").tobytes()
    ds.add_new(0x7FE00010, vr, data + b"\0" * (len(data) % 2))
    # a 1-bit graphics overlay, bits packed little endian into OW (or OB) as PS3.5 8.1.2 says
    packed = np.packbits(overlay.ravel(), bitorder="little").tobytes()
    ds.add_new(0x60000010, "US", ROWS)
    ds.add_new(0x60000011, "US", COLS)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60003000, vr, packed + b"\0" * (len(packed) % 2))
    item = Dataset()
    item.add_new(0x00283002, "US", [len(lut), 0, 16])
    item.add_new(0x00283003, "LO", "AUTHORED")
    item.add_new(0x00283004, "LO", "OD")
    item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())
    ds.ModalityLUTSequence = [item]
    return ds, Authored(name, str(ds.SOPInstanceUID), pixels, overlay, lut)


def make_objects(folder: Path, seed: int = 17) -> dict[Path, Authored]:
    """Every layout × frames, little endian (pydicom) and big endian (dcmtk); file → what it holds."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid, series_uid = generate_uid(), generate_uid()
    out: dict[Path, Authored] = {}
    number = 0
    for bits, vr in LAYOUTS:
        for frames in FRAMES:
            for endian in ("le", "be"):
                number += 1
                name = f"b{bits}{vr}f{frames}{endian}"
                ds, authored = _dataset(name, bits, vr, frames, study_uid, series_uid, number, rng)
                le_path = folder / (f"{name}.dcm" if endian == "le" else f"{name}.src.dcm")
                ds.save_as(le_path, enforce_file_format=True)
                if endian == "le":
                    out[le_path] = authored
                    continue
                be_path = folder / f"{name}.dcm"
                r = dcmtk("dcmconv", "+tb", str(le_path), str(be_path))
                assert r.returncode == 0, r.stdout + r.stderr
                le_path.unlink()
                out[be_path] = authored
    return out


def check(path: Path, authored: Authored) -> None:
    """The file at `path` decodes to what was authored: pixels, overlay bits and LUT entries."""
    from pydicom import dcmread

    ds = dcmread(path)
    assert str(ds.SOPInstanceUID) == authored.sop_uid
    frames = authored.pixels.shape[0]
    got = ds.pixel_array.reshape(frames, ROWS, COLS)
    diff = int((got != authored.pixels).sum())
    assert diff == 0, f"{authored.name}: {diff} of {authored.pixels.size} pixels differ ({path})"
    assert np.array_equal(ds.overlay_array(0x6000), authored.overlay), f"{authored.name}: overlay differs"
    lut_element = ds.ModalityLUTSequence[0][0x00283006]
    value = lut_element.value
    lut = (np.frombuffer(value, dtype="<u2") if isinstance(value, bytes)
           else np.asarray(value if isinstance(value, list) else [value], dtype=np.uint16))
    assert np.array_equal(lut, authored.lut), f"{authored.name}: LUT data differs"


def pydicom_data_files() -> dict[str, Path]:
    """The public `pydicom-data` files of issue 17 (8-bit PALETTE COLOR, Pixel Data OW, big endian)
    and their little endian twins."""
    names = ("OBXXXX1A_expb.dcm", "OBXXXX1A_expb_2frame.dcm", "OBXXXX1A.dcm", "OBXXXX1A_2frame.dcm")
    found = {}
    for name in names:
        path = get_testdata_file(name, download=False)
        assert path, f"{name} not found: install the test extras (pip install pydicom-data)"
        found[name] = Path(path)
    return found
