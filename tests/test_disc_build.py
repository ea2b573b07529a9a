"""The disc builder end to end: real files in, real images out, checked with xorriso, dciodvfy,
dcmmkdir (profile) and pycdlib (UDF, which xorriso cannot read)."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pycdlib
import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet
from pydicom.uid import ImplicitVRLittleEndian, RLELossless
from support import dcmtk, make_dataset, write_study

from appliance.burn.builder import BuildError, BuildOptions, build_discs, verify_tree

ELE = "1.2.840.10008.1.2.1"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
ISO_NAME = re.compile(r"[A-Z0-9_]{1,8}(\.[A-Z0-9_]{1,3})?")


def rows(paths: list[Path]) -> list[dict]:
    """index.instances-like rows (only `path` for some, to exercise the header fallback)."""
    out = []
    for n, path in enumerate(paths):
        if n % 2:
            out.append({"path": str(path)})
            continue
        ds = dcmread(path, stop_before_pixels=True)
        out.append({"path": str(path), "sop_uid": ds.SOPInstanceUID, "series_uid": ds.SeriesInstanceUID,
                    "study_uid": ds.StudyInstanceUID, "sop_class": ds.SOPClassUID,
                    "transfer_syntax": ds.file_meta.TransferSyntaxUID, "size": path.stat().st_size,
                    "instance_number": str(ds.InstanceNumber)})
    return out


def extract(image: Path, dest: Path) -> list[str]:
    """List the image with xorriso, extract it, return the listed paths."""
    listing = subprocess.run(["xorriso", "-indev", str(image), "-find", "/"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(image), "-extract", "/", str(dest)],
                   capture_output=True, text=True, timeout=60, check=True)
    return [line.strip().strip("'") for line in listing.splitlines() if line.strip()]


def dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert out.strip(), "dciodvfy said nothing"
    return [line for line in out.splitlines() if line.startswith("Error")]


def by_sop(folder: Path) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
            for p in (folder / "DICOM").rglob("*") if p.is_file()}


def check_profile(root: Path, profile_option: str, scratch: Path) -> None:
    """dcmmkdir builds a DICOMDIR of the disc's DICOM tree for the profile; it reports files that
    break the profile with "E:" lines (and still exits 0), so the lines are what we check."""
    proc = dcmtk("dcmmkdir", profile_option, "+r", "+id", str(root), "+D", str(scratch / "CHECKDIR"), "DICOM")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert not [line for line in out.splitlines() if line.startswith("E:") or "cannot be added" in line], out
    assert (scratch / "CHECKDIR").is_file()


def check_dicomdir(root: Path, expected_sops: set[str]) -> FileSet:
    assert dciodvfy_errors(root / "DICOMDIR") == []
    fs = FileSet(dcmread(root / "DICOMDIR"))
    assert {i.SOPInstanceUID for i in fs} == expected_sops
    for instance in fs:  # every record points at the file holding that instance
        assert Path(instance.path).is_file()
        assert dcmread(instance.path, stop_before_pixels=True).SOPInstanceUID == instance.SOPInstanceUID
    return fs


def test_cd_from_two_series(tmp_path: Path) -> None:
    paths = write_study(tmp_path / "in", n_series=2, per_series=3)
    discs = build_discs(rows(paths), tmp_path / "work", BuildOptions("job-1", ["CD", "DVD"], institution="Test Clinic"))
    assert len(discs) == 1
    disc = discs[0]
    assert (disc.media, disc.filesystem, disc.disc_count) == ("CD", "ISO9660+JOLIET", 1)
    assert disc.image.is_file() and disc.size == disc.image.stat().st_size
    assert re.fullmatch(r"[A-Z0-9_]{1,32}", disc.volume_label) and disc.volume_label.startswith("DOE")
    assert disc.label_image and disc.label_image.is_file()
    assert disc.label_fields["content"] == "DICOM PLUS WEB" and disc.label_fields["disc_of"] == "1 of 1"

    out = tmp_path / "extracted"
    listed = extract(disc.image, out)
    for name in ("/DICOMDIR", "/README.TXT", "/INDEX.HTM", "/MANIFEST.SHA", "/IHE_PDI", "/IHE_PDI/INDEX.HTM", "/DICOM"):
        assert name in listed, listed
    assert len([p for p in listed if p.startswith("/DICOM/") and "/IM" in p]) == 6
    assert len([p for p in listed if p.startswith("/IHE_PDI/") and p.endswith(".JPG")]) >= 2  # every series
    for path in out.rglob("*"):
        assert ISO_NAME.fullmatch(path.name), path
    assert {p.suffix for p in (out / "IHE_PDI").iterdir()} <= {".HTM", ".JPG"}

    check_dicomdir(out, {str(dcmread(p).SOPInstanceUID) for p in paths})
    on_disc = by_sop(out)
    for path in paths:  # ELE arrives, ELE goes on the CD: byte-identical
        assert on_disc[str(dcmread(path).SOPInstanceUID)].read_bytes() == path.read_bytes()
    readme = (out / "README.TXT").read_text(encoding="utf-8")
    assert "DOE, JOHN" in readme and "Test Clinic" in readme and "INDEX.HTM" in readme and "2 series, 6 images" in readme

    # the profile: dcmtk accepts the tree as General Purpose CD-R (STD-GEN-CD)
    check_profile(out, "-Pgp", tmp_path)

    assert verify_tree(out) == []
    sha = subprocess.run(["sha256sum", "--strict", "-c", "MANIFEST.SHA"], cwd=out, capture_output=True, text=True)
    assert sha.returncode == 0 and sha.stdout.count(": OK") == len([p for p in out.rglob("*") if p.is_file()]) - 1
    victim = next((out / "DICOM").rglob("IM000001"))
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    (out / "EXTRA.TXT").write_text("x")
    problems = verify_tree(out)
    assert f"changed: {victim.relative_to(out).as_posix()}" in problems
    assert "not in manifest: EXTRA.TXT" in problems


def compressed_inputs(folder: Path) -> dict[str, Path]:
    """The same kind of image in four transfer syntaxes: ELE, implicit VR, JPEG lossless SV1, RLE."""
    folder.mkdir()
    out = {}
    study = make_dataset().StudyInstanceUID
    ele = make_dataset(study_uid=study, series_number=1, instance_number=1, rows=96, cols=80, seed=11)
    out["ele"] = folder / "ele.dcm"
    ele.save_as(out["ele"], enforce_file_format=True)
    implicit = make_dataset(study_uid=study, series_number=2, instance_number=1, seed=12)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out["implicit"] = folder / "implicit.dcm"
    implicit.save_as(out["implicit"], implicit_vr=True, little_endian=True, enforce_file_format=True)
    source = make_dataset(study_uid=study, series_number=3, instance_number=1, seed=13)
    source.save_as(folder / "plain.dcm", enforce_file_format=True)
    out["jpegll"] = folder / "jpegll.dcm"
    dcmtk("dcmcjpeg", "+e1", str(folder / "plain.dcm"), str(out["jpegll"]), check=True)
    (folder / "plain.dcm").unlink()
    rle = make_dataset(study_uid=study, series_number=4, instance_number=1, modality="MR", seed=14)
    rle.compress(RLELossless)
    out["rle"] = folder / "rle.dcm"
    rle.save_as(out["rle"], enforce_file_format=True)
    assert dcmread(out["jpegll"]).file_meta.TransferSyntaxUID == JPEG_LOSSLESS_SV1
    return out


def test_cd_transcodes_to_explicit_little_endian_pixel_identical(tmp_path: Path) -> None:
    inputs = compressed_inputs(tmp_path / "in")
    disc = build_discs(rows(list(inputs.values())), tmp_path / "work", BuildOptions("cd", ["CD"]))[0]
    out = tmp_path / "x"
    extract(disc.image, out)
    check_dicomdir(out, {str(dcmread(p).SOPInstanceUID) for p in inputs.values()})
    on_disc = by_sop(out)
    for kind, path in inputs.items():
        src = dcmread(path)
        dst = dcmread(on_disc[str(src.SOPInstanceUID)])
        assert dst.file_meta.TransferSyntaxUID == ELE, kind
        assert np.array_equal(src.pixel_array, dst.pixel_array), kind
        assert dst.PatientName == src.PatientName and dst.SeriesInstanceUID == src.SeriesInstanceUID
        # transcoding adds no IOD errors (the test images have a few of their own)
        assert set(dciodvfy_errors(on_disc[str(src.SOPInstanceUID)])) <= set(dciodvfy_errors(path)), kind
    assert on_disc[str(dcmread(inputs["ele"]).SOPInstanceUID)].read_bytes() == inputs["ele"].read_bytes()
    fs = FileSet(dcmread(out / "DICOMDIR"))
    assert {str(i.ReferencedTransferSyntaxUIDInFile) for i in fs} == {ELE}
    check_profile(out, "-Pgp", tmp_path)


def read_udf(image: Path) -> dict[str, bytes]:
    """Every file of a UDF image, read back by pycdlib through its UDF tree (xorriso reads no UDF)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(image))
    try:
        assert iso.has_udf()
        udf = iso.get_udf_facade()
        files = {}
        for dirname, _dirs, names in udf.walk("/"):
            for name in names:
                path = f"{dirname.rstrip('/')}/{name}"
                buf = io.BytesIO()
                udf.get_file_from_iso_fp(buf, path)
                files[path] = buf.getvalue()
        return files
    finally:
        iso.close()


def test_dvd_keeps_jpeg_lossless_and_is_udf(tmp_path: Path) -> None:
    inputs = compressed_inputs(tmp_path / "in")
    disc = build_discs(rows(list(inputs.values())), tmp_path / "work", BuildOptions("dvd", ["DVD", "BD"]))[0]
    assert (disc.media, disc.filesystem) == ("DVD", "UDF")
    files = read_udf(disc.image)
    tree_files = {"/" + p.relative_to(disc.tree).as_posix(): p.read_bytes() for p in disc.tree.rglob("*") if p.is_file()}
    assert files == tree_files  # the UDF image holds exactly the staged tree
    assert {"/DICOMDIR", "/README.TXT", "/INDEX.HTM", "/MANIFEST.SHA", "/IHE_PDI/INDEX.HTM"} <= set(files)
    # readers without UDF see the ISO 9660 bridge with the same names (xorriso reads that side)
    bridge = tmp_path / "bridge"
    listed = extract(disc.image, bridge)
    assert {p for p in listed if (bridge / p.lstrip("/")).is_file()} == set(files)
    assert all((bridge / p.lstrip("/")).read_bytes() == data for p, data in files.items())
    out = tmp_path / "x"
    for path, data in files.items():
        (out / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (out / path.lstrip("/")).write_bytes(data)
    check_dicomdir(out, {str(dcmread(p).SOPInstanceUID) for p in inputs.values()})
    on_disc = by_sop(out)
    jpeg = on_disc[str(dcmread(inputs["jpegll"]).SOPInstanceUID)]
    assert jpeg.read_bytes() == inputs["jpegll"].read_bytes()  # kept as received
    for kind in ("implicit", "rle"):  # other syntaxes become ELE, pixels unchanged
        src = dcmread(inputs[kind])
        dst = dcmread(on_disc[str(src.SOPInstanceUID)])
        assert dst.file_meta.TransferSyntaxUID == ELE
        assert np.array_equal(src.pixel_array, dst.pixel_array)
    assert verify_tree(out) == []
    check_profile(out, "-Pdv", tmp_path)
    assert "STD-GEN-DVD-JPEG" in files["/README.TXT"].decode()


def test_split_over_discs_at_study_then_series_boundaries(tmp_path: Path) -> None:
    a = write_study(tmp_path / "a", n_series=2, per_series=3, rows=256, cols=256, patient_id="P1")
    b = write_study(tmp_path / "b", n_series=2, per_series=3, rows=256, cols=256, patient_id="P1", study_date="20240220")
    paths = a + b
    # estimates: 1 MB per disc + 0.4 MB per series + 134 KB per 128 KB image: one study is 2.6 MB,
    # two are 4.2 MB, one series 1.8 MB; a 3.3 MB "CD" holds one study, not two
    options = BuildOptions("split", ["CD"], capacity={"CD": 3_300_000})
    discs = build_discs(rows(paths), tmp_path / "work", options)
    assert len(discs) == 2
    all_sops: list[str] = []
    for n, disc in enumerate(discs, 1):
        assert (disc.disc_number, disc.disc_count) == (n, 2)
        assert disc.label_fields["disc_of"] == f"{n} of 2" and disc.volume_label.endswith(f"_{n}OF2")
        assert disc.size <= 3_300_000
        out = tmp_path / f"x{n}"
        extract(disc.image, out)
        sops = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (out / "DICOM").rglob("IM*")}
        check_dicomdir(out, sops)
        studies = {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in (out / "DICOM").rglob("IM*")}
        assert len(studies) == 1  # split between the studies
        assert f"Disc {n} of 2" in (out / "README.TXT").read_text(encoding="utf-8")
        assert f"Disc {n} of 2" in (out / "INDEX.HTM").read_text(encoding="utf-8")
        assert verify_tree(out) == []
        all_sops += sops
    assert sorted(all_sops) == sorted(str(dcmread(p).SOPInstanceUID) for p in paths)

    # one study too big for a disc: split between its series, each series whole
    discs = build_discs(rows(a), tmp_path / "work2", BuildOptions("split2", ["CD"], capacity={"CD": 2_300_000}))
    assert len(discs) == 2
    for disc in discs:
        series = {str(dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in (disc.tree / "DICOM").rglob("IM*")}
        assert len(series) == 1 and len(list((disc.tree / "DICOM").rglob("IM*"))) == 3

    # one series too big for a disc: split between instances, and the README says so
    big = write_study(tmp_path / "c", n_series=1, per_series=6, rows=256, cols=256)
    discs = build_discs(rows(big), tmp_path / "work3", BuildOptions("split3", ["CD"], capacity={"CD": 1_800_000}))
    assert len(discs) == 3
    assert sum(len(list((d.tree / "DICOM").rglob("IM*"))) for d in discs) == 6
    for disc in discs:
        assert "split over discs" in (disc.tree / "README.TXT").read_text(encoding="utf-8")
        assert dciodvfy_errors(disc.tree / "DICOMDIR") == []


def test_media_choice_and_bad_input(tmp_path: Path) -> None:
    paths = write_study(tmp_path / "in", n_series=1, per_series=2)
    disc = build_discs(rows(paths), tmp_path / "w1", BuildOptions("m", ["CD", "DVD"], capacity={"CD": 100_000}))[0]
    assert disc.media == "DVD"  # does not fit the (tiny) CD: the next larger media
    tree_only = build_discs(rows(paths), tmp_path / "w2", BuildOptions("t", ["CD"], make_image=False))[0]
    assert not tree_only.image.exists() and (tree_only.tree / "DICOMDIR").is_file()
    with pytest.raises(BuildError, match="missing"):
        build_discs([{"path": str(tmp_path / "nope.dcm")}], tmp_path / "w3", BuildOptions("x", ["CD"]))
    with pytest.raises(BuildError, match="no media"):
        build_discs(rows(paths), tmp_path / "w4", BuildOptions("x", []))
    with pytest.raises(BuildError, match="larger than"):
        build_discs(rows(paths), tmp_path / "w5", BuildOptions("x", ["CD"], capacity={"CD": 10_000}))
    assert paths[0].is_file()  # bad input loses nothing


def test_big_objects_are_decompressed_frame_by_frame_like_pydicom(tmp_path: Path) -> None:
    """The streaming path (used above pdi.STREAM_ABOVE bytes) gives what pydicom's decompress() gives."""
    from appliance.burn import pdi

    folder = tmp_path / "in"
    folder.mkdir()
    sources = []
    multi = make_dataset(modality="MR", rows=40, cols=48, frames=5, seed=3)
    multi.compress(RLELossless)
    sources.append(folder / "rle_multi.dcm")
    multi.save_as(sources[-1], enforce_file_format=True)
    make_dataset(rows=64, cols=64, seed=4).save_as(folder / "grey.dcm", enforce_file_format=True)
    sources.append(folder / "jpegll.dcm")
    dcmtk("dcmcjpeg", "+e1", str(folder / "grey.dcm"), str(sources[-1]), check=True)
    colour = make_dataset(modality="OT", rows=32, cols=32, photometric="RGB", seed=5)
    colour.save_as(folder / "rgb.dcm", enforce_file_format=True)
    sources.append(folder / "baseline.dcm")  # lossy JPEG, YBR_FULL_422: decoded to RGB
    dcmtk("dcmcjpeg", "+eb", str(folder / "rgb.dcm"), str(sources[-1]), check=True)
    assert dcmread(sources[-1]).PhotometricInterpretation.startswith("YBR")
    for src in sources:
        out = tmp_path / (src.stem + ".out")
        assert pdi._stream_decompress(src, out)
        streamed = dcmread(out)
        reference = dcmread(src)
        reference.decompress(generate_instance_uid=False)
        assert streamed.file_meta.TransferSyntaxUID == ELE
        assert streamed.SOPInstanceUID == reference.SOPInstanceUID
        assert streamed.PhotometricInterpretation == reference.PhotometricInterpretation, src.name
        assert streamed.get("NumberOfFrames", 1) == reference.get("NumberOfFrames", 1)
        assert streamed.PixelData == reference.PixelData, src.name
        assert np.array_equal(streamed.pixel_array, reference.pixel_array)
    # and in a build: a CD with the threshold at 0 takes the streaming path for every compressed file
    original = pdi.STREAM_ABOVE
    pdi.STREAM_ABOVE = 0
    try:
        disc = build_discs(rows(sources[:2]), tmp_path / "work", BuildOptions("stream", ["CD"], make_image=False))[0]
    finally:
        pdi.STREAM_ABOVE = original
    on_disc = by_sop(disc.tree)
    for src in sources[:2]:
        ref = dcmread(src)
        got = dcmread(on_disc[str(ref.SOPInstanceUID)])
        assert got.file_meta.TransferSyntaxUID == ELE and np.array_equal(got.pixel_array, ref.pixel_array)
    assert dciodvfy_errors(disc.tree / "DICOMDIR") == []


def test_reports_and_documents_get_their_own_directory_records(tmp_path: Path) -> None:
    """A structured report and an encapsulated PDF beside an image: SR DOCUMENT / ENCAP DOC records
    (pydicom's SOP class map), no preview, and a DICOMDIR without dciodvfy errors."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = tmp_path / "in"
    folder.mkdir()
    image = make_dataset()
    image.save_as(folder / "img.dcm", enforce_file_format=True)

    def base(sop_class: str, modality: str, series_number: int) -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
        for key in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
                    "AccessionNumber"):
            setattr(ds, key, getattr(image, key))
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality, ds.InstanceNumber = generate_uid(), series_number, modality, 1
        ds.ContentDate, ds.ContentTime = "20240115", "101500"
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "18748-4", "LN", "Diagnostic Imaging Report"
        ds.ConceptNameCodeSequence = [code]
        return ds

    sr = base("1.2.840.10008.5.1.4.1.1.88.11", "SR", 8)
    sr.CompletionFlag, sr.VerificationFlag, sr.ValueType, sr.ContinuityOfContent = "COMPLETE", "UNVERIFIED", "CONTAINER", "SEPARATE"
    sr.save_as(folder / "sr.dcm", enforce_file_format=True)
    pdf = base("1.2.840.10008.5.1.4.1.1.104.1", "DOC", 9)
    pdf.MIMETypeOfEncapsulatedDocument, pdf.DocumentTitle = "application/pdf", "Report"
    pdf.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    pdf.save_as(folder / "pdf.dcm", enforce_file_format=True)

    disc = build_discs(rows(sorted(folder.glob("*.dcm"))), tmp_path / "work", BuildOptions("docs", ["CD"]))[0]
    out = tmp_path / "x"
    extract(disc.image, out)
    fs = check_dicomdir(out, {str(image.SOPInstanceUID), str(sr.SOPInstanceUID), str(pdf.SOPInstanceUID)})
    kinds = {str(i.SOPInstanceUID): i.DirectoryRecordType for i in fs}
    assert kinds == {str(image.SOPInstanceUID): "IMAGE", str(sr.SOPInstanceUID): "SR DOCUMENT",
                     str(pdf.SOPInstanceUID): "ENCAP DOC"}
    for path in sorted((out / "DICOM").rglob("IM*")):
        assert path.read_bytes() in {p.read_bytes() for p in folder.glob("*.dcm")}
    pages = [(out / "IHE_PDI" / f"S0000{n}.HTM").read_text(encoding="utf-8") for n in (1, 2, 3)]
    assert "No preview" not in pages[0] and "1 image ·" in pages[0]
    assert all("No preview for this series" in p and "1 object ·" in p for p in pages[1:])
    check_profile(out, "-Pgp", tmp_path)
