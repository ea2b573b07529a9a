"""Byte order on the disc (issue 17): every valid pixel layout, big and little endian, 1 and 2
frames, pixel for pixel, overlay bit for overlay bit and LUT entry for LUT entry after the disc
builder (in-process); the public pydicom-data files against their little endian twins; and an
object the station cannot decode, which goes on the disc as received and is named in README.TXT
and INDEX.HTM. The same objects through a C-MOVE to a little-endian-only peer: test_data_folder.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from byteorder_support import check, make_objects, pydicom_data_files
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.fileset import FileSet
from pydicom.uid import JPEGBaseline8Bit, generate_uid
from support import make_dataset

from appliance.burn.builder import BuildOptions, build_discs

ELE = "1.2.840.10008.1.2.1"
EVBE = "1.2.840.10008.1.2.2"


def build(paths: list[Path], work: Path, media: str = "CD"):
    return build_discs([{"path": str(p)} for p in paths], work, BuildOptions("bo", [media], make_image=False))


def on_disc(tree: Path) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
            for p in (tree / "DICOM").rglob("*") if p.is_file()}


@pytest.mark.parametrize("media", ["CD", "DVD"])
def test_every_layout_reaches_the_disc_pixel_for_pixel(tmp_path: Path, media: str) -> None:
    objects = make_objects(tmp_path / "in")
    assert {str(dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in objects} == {ELE, EVBE}
    (disc,) = build(list(objects), tmp_path / "work", media)
    files = on_disc(disc.tree)
    assert len(files) == len(objects) == 16
    for source, authored in objects.items():
        copy = files[authored.sop_uid]
        assert dcmread(copy, stop_before_pixels=True).file_meta.TransferSyntaxUID == ELE, source.name
        check(copy, authored)
        if "le" in source.stem:  # already in the profile's syntax: the very same bytes
            assert copy.read_bytes() == source.read_bytes()
    assert {str(i.ReferencedTransferSyntaxUIDInFile) for i in FileSet(dcmread(disc.tree / "DICOMDIR"))} == {ELE}
    assert disc.off_profile == []


@pytest.mark.parametrize("frames", ["", "_2frame"])
def test_pydicom_data_big_endian_files_equal_their_little_endian_twins_on_the_disc(tmp_path: Path,
                                                                                  frames: str) -> None:
    found = pydicom_data_files()
    big, twin = dcmread(found[f"OBXXXX1A_expb{frames}.dcm"]), dcmread(found[f"OBXXXX1A{frames}.dcm"])
    assert big.file_meta.TransferSyntaxUID == EVBE and big["PixelData"].VR == "OW" and big.BitsAllocated == 8
    assert twin.file_meta.TransferSyntaxUID == ELE
    (disc,) = build([found[f"OBXXXX1A_expb{frames}.dcm"]], tmp_path / "work")
    (copy,) = on_disc(disc.tree).values()
    ds = dcmread(copy)
    assert ds.file_meta.TransferSyntaxUID == ELE
    assert ds.PixelData == twin.PixelData  # byte for byte what the little endian twin holds
    differ = int((ds.pixel_array != twin.pixel_array).sum())
    assert differ == 0, f"{differ} of {twin.pixel_array.size} pixels differ"
    assert np.array_equal(ds.pixel_array, big.pixel_array)
    for colour in ("Red", "Green", "Blue"):
        keyword = f"{colour}PaletteColorLookupTableData"
        assert ds[keyword].value == twin[keyword].value, keyword


def undecodable(path: Path) -> Path:
    """A JPEG Baseline object whose compressed stream no decoder can read (as a broken modality
    would send it): the station stores it as received and cannot turn it into raw pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.PatientID, ds.PatientName, ds.StudyInstanceUID, ds.SeriesInstanceUID = "P17J", "BROKEN^JPEG", \
        generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = \
        "20260101", "120000", "1", "OT", 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 8, 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0 this is not a JPEG stream \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_object_that_cannot_be_decoded_goes_on_the_disc_as_received_and_is_named(tmp_path: Path) -> None:
    broken = undecodable(tmp_path / "broken.dcm")
    good = tmp_path / "good.dcm"
    make_dataset(patient_id="P17J", rows=8, cols=8).save_as(good, enforce_file_format=True)
    (disc,) = build([broken, good], tmp_path / "work")
    files = on_disc(disc.tree)
    broken_uid = str(dcmread(broken, stop_before_pixels=True).SOPInstanceUID)
    assert files[broken_uid].read_bytes() == broken.read_bytes()  # not left out, not altered
    file_id = files[broken_uid].relative_to(disc.tree).as_posix()
    records = {str(i.SOPInstanceUID): i for i in FileSet(dcmread(disc.tree / "DICOMDIR"))}
    assert str(records[broken_uid].ReferencedTransferSyntaxUIDInFile) == JPEGBaseline8Bit
    good_uid = str(dcmread(good, stop_before_pixels=True).SOPInstanceUID)
    assert str(records[good_uid].ReferencedTransferSyntaxUIDInFile) == ELE
    (note,) = disc.off_profile
    assert file_id in note and broken_uid in note and "cannot decompress" in note and "STD-GEN-CD" in note
    readme = (disc.tree / "README.TXT").read_text(encoding="utf-8", errors="replace")
    index = (disc.tree / "INDEX.HTM").read_text(encoding="utf-8", errors="replace")
    for text in (readme, index):
        assert file_id in text and "cannot decompress" in text


def test_ol_of_od_ov_values_are_swapped_by_their_word_size(tmp_path: Path) -> None:
    """dcmtk writes the big endian file; byteorder turns it back into what was authored."""
    from pydicom.uid import ExplicitVRLittleEndian
    from support import dcmtk

    from appliance.dicom import byteorder

    values = {0x00660040: ("OL", "<u4"), 0x00720082: ("OV", "<u8"), 0x7FE00008: ("OF", "<f4"),
              0x7FE00009: ("OD", "<f8")}
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    for tag, (vr, dtype) in values.items():
        ds.add_new(tag, vr, (np.arange(1, 8) * 1000.5).astype(dtype).tobytes())
    ds.save_as(tmp_path / "le.dcm", enforce_file_format=True)
    assert dcmtk("dcmconv", "+tb", str(tmp_path / "le.dcm"), str(tmp_path / "be.dcm")).returncode == 0
    big = dcmread(tmp_path / "be.dcm")
    assert big.file_meta.TransferSyntaxUID == EVBE
    assert all(big[tag].value != ds[tag].value for tag in values)  # really big endian on disc
    byteorder.swap_to_little_endian(big)
    for tag in values:
        assert big[tag].value == ds[tag].value, values[tag][0]
    assert not byteorder.is_big_endian(big)
    byteorder.swap_to_little_endian(big)  # a second call changes nothing
    assert all(big[tag].value == ds[tag].value for tag in values)


def test_a_value_that_is_not_whole_words_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    from appliance.dicom import byteorder

    ds = Dataset()
    ds.add_new(0x00660040, "OL", b"\x00\x00\x00\x01")
    ds.add_new(0x7FE00010, "OW", b"\x01\x02\x03")  # 3 bytes: no whole 16-bit words
    ds.set_original_encoding(False, False)
    with pytest.raises(byteorder.ByteOrderError, match="3 bytes"):
        byteorder.swap_to_little_endian(ds)
    assert ds[0x00660040].value == b"\x00\x00\x00\x01" and byteorder.is_big_endian(ds)
