"""Robustness across the whole station, driven as a user would: storescu → a running station →
the simulated robots (`burnstation-sim`, its own process) → the discs in the simulator's output bin.

The parts were tested one by one elsewhere (test_disc_names builds hostile names without a
robot, test_robots_e2e burns plain studies); here the same inputs travel the whole way: hostile and
international names, odd datasets (no pixels, multi-frame, big endian, deflate, no Patient ID), a
full disc-building disk, robot faults with a queue behind them, and broken HL7 during DICOM traffic.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid
from support import burnstation, dcmtk, make_dataset, write_study
from test_robots_e2e import job_file, rig, wait_for

from drivers.epson.jdf import parse_jdf
from drivers.primera.jrq import parse_jrq

XHTML = "{http://www.w3.org/1999/xhtml}"
ISO_NAME = re.compile(r"[A-Z0-9_]{1,8}(\.[A-Z0-9_]{1,3})?")
SAFE_FILE = re.compile(r"\.?[A-Za-z0-9][A-Za-z0-9._-]*")

# (DICOM PN value, Specific Character Set, what a reader of the disc must see)
NAMES = [
    ("<script>alert(1)</script>", None, "<script>alert(1)</script>"),
    ("../../etc^passwd", None, "../../etc, passwd"),
    ("DOE^JOHN\r\nDATA=/etc", None, "DOE, JOHN DATA / /etc"),  # "=" separates PN component groups
    ("Tab\tName^X", None, "Tab Name, X"),
    ("Müller^Jürgen", "ISO_IR 100", "Müller, Jürgen"),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"], "Yamada, Tarou / 山田 太郎 / やまだ たろう"),
]


def extract(image: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    out = subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(image), "-extract", "/", str(dest)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dest


def page_text(path: Path) -> str:
    """All text of a disc page parsed as XML (fails on anything not well-formed, e.g. an unescaped <)."""
    root = ET.parse(path).getroot()
    assert not list(root.iter(f"{XHTML}script")), f"a <script> element in {path}"
    return " ".join("".join(root.itertext()).split())


def dicomdir_sops(tree: Path) -> dict[str, Path]:
    """SOP Instance UID → file on the disc, as the DICOMDIR references them."""
    found = {}
    for record in dcmread(tree / "DICOMDIR").DirectoryRecordSequence:
        if "ReferencedSOPInstanceUIDInFile" in record:
            found[record.ReferencedSOPInstanceUIDInFile] = tree.joinpath(*record.ReferencedFileID)
    return found


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


def safe_names(folder: Path) -> None:
    for path in folder.rglob("*"):
        assert SAFE_FILE.fullmatch(path.name), f"unsafe file name {path}"


def test_hostile_and_international_names_through_both_robots(tmp_path: Path) -> None:
    """Each robot burns one disc holding all the patients of NAMES (one association each): the disc's
    pages escape and show them, the merge fields keep every value on one line with no extra key,
    and every file name on the disc, in the spool and in the output bin is harmless."""
    files = []
    for n, (name, charset, _) in enumerate(NAMES):
        files += write_study(tmp_path / f"in{n}", n_series=1, per_series=1, patient_name=name, charset=charset,
                             patient_id=f"ID<{n}>/..\\x", study_description=f"<b>d{n}</b>\r\nX=1")
    for path, (name, _, _) in zip(files, NAMES, strict=True):
        assert str(dcmread(path).PatientName) == name
    with rig(tmp_path) as r:
        seen: set[str] = set()
        made = {}
        for aet, robot in (("BURNSTATION_E", "epson"), ("BURNSTATION_P", "primera")):
            r.send(aet, files)
            job = r.new_job(seen)
            seen.add(job["id"])
            made[job["id"]] = robot
        for job_id, robot in made.items():
            done = r.final(job_id)
            assert done["state"] == "done" and done["robot"] == robot and done["instances"] == len(NAMES), done
        listing = burnstation(r.data, "jobs", "list").stdout
        assert len([ln for ln in listing.splitlines() if ln.startswith("J")]) == 2, listing
        for robot in made.values():
            safe_names(r.spool / robot)
    for job_id, robot in made.items():
        out = r.bin(robot) / job_id
        safe_names(out)
        tree = extract(job_file(out, "iso"), tmp_path / f"disc-{robot}")
        for path in tree.rglob("*"):
            assert ISO_NAME.fullmatch(path.name), path
        assert set(dicomdir_sops(tree)) == {str(dcmread(f).SOPInstanceUID) for f in files}
        for page in (tree / "INDEX.HTM", tree / "IHE_PDI" / "INDEX.HTM"):
            text = page_text(page)
            for _, _, shown in NAMES:
                assert shown in text, (page, shown)
            assert "<b>d0</b> X=1" in text  # a description shown as text, on one line
        readme = (tree / "README.TXT").read_text(encoding="utf-8")
        assert not any(ln.startswith("DATA=") for ln in readme.splitlines())
        if robot == "epson":
            text = job_file(out, "JDF").read_bytes().decode()
            pairs = parse_jdf(text)
            merge = next((out / "label").glob("*FIELDS*")).read_bytes().decode()
            merge_lines = [ln for ln in merge.split("\r\n") if ln]
            assert all(ln.count("=") >= 1 and re.fullmatch(r"[a-z_]+", ln.split("=")[0]) for ln in merge_lines)
            fields = dict(ln.split("=", 1) for ln in merge_lines)
            assert len(fields) == len(merge_lines)  # no key twice, none injected
        else:
            text = job_file(out, "JRQ").read_bytes().decode()
            pairs = parse_jrq(text)
            merge_values = [v for k, v in pairs if k == "MergeField"]
            assert (out / "label" / "MergeFields.txt").read_text(encoding="utf-8").splitlines() == merge_values
            fields = {"patient_name": merge_values[0]}
        assert len(text.splitlines()) == len(pairs)  # one line per key: no value split a line
        assert not [v for k, v in pairs if k.upper() == "DATA"], text
        for _, _, shown in NAMES:
            assert shown in fields["patient_name"], (robot, shown, fields["patient_name"])
        assert not re.search(r"[\x00-\x1f\x7f]", "".join(fields.values()))


def odd_datasets(folder: Path) -> dict[str, Path]:
    """One association's worth of unusual but valid objects, two of them from patients without ID."""
    folder.mkdir(parents=True)
    study = generate_uid()
    files: dict[str, Path] = {}

    def save(key: str, ds: Dataset, little_endian: bool = True) -> None:
        files[key] = folder / f"{key}.dcm"
        dcmwrite(files[key], ds, implicit_vr=False, little_endian=little_endian, enforce_file_format=True)

    save("multiframe", make_dataset(patient_id="ODD1", patient_name="ODD^ONE", study_uid=study, modality="MR",
                                    frames=5, instance_number=1))
    big = make_dataset(patient_id="ODD1", patient_name="ODD^ONE", study_uid=study, instance_number=2, bits=16)
    pixels = big.pixel_array
    big.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
    big.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    save("bigendian", big, little_endian=False)
    deflated = make_dataset(patient_id="ODD1", patient_name="ODD^ONE", study_uid=study, instance_number=3)
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    save("deflated", deflated)

    pdf = Dataset()
    pdf.file_meta = FileMetaDataset()
    pdf.file_meta.MediaStorageSOPClassUID = pdf.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    pdf.file_meta.MediaStorageSOPInstanceUID = pdf.SOPInstanceUID = generate_uid()
    pdf.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pdf.PatientName, pdf.PatientID, pdf.StudyInstanceUID = "ODD^ONE", "ODD1", study
    pdf.SeriesInstanceUID, pdf.Modality, pdf.SeriesNumber, pdf.InstanceNumber = generate_uid(), "DOC", 9, 1
    pdf.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n\n"
    pdf.BurnedInAnnotation, pdf.DocumentTitle = "NO", "<i>report</i>"
    pdf.ContentDate, pdf.ContentTime, pdf.AcquisitionDateTime = "20240101", "120000", "20240101120000"
    save("pdf", pdf)

    for key, name in (("noid_anna", "NOID^ANNA"), ("noid_bert", "NOID^BERT")):
        ds = make_dataset(patient_name=name, birth_date="", study_description=name)
        del ds.PatientID, ds.PatientBirthDate
        save(key, ds)
    return files


def test_odd_datasets_and_two_patients_in_one_association(tmp_path: Path) -> None:
    """A PDF, a multi-frame, a big-endian and a deflated instance and two patients without Patient ID,
    in one association to _E: one disc with all of them, big endian and deflate transcoded pixel-
    identical, three patients on the pages and the label, a valid DICOMDIR."""
    files = odd_datasets(tmp_path / "odd")
    sops = {key: str(dcmread(path).SOPInstanceUID) for key, path in files.items()}
    with rig(tmp_path, roles={"epson": "epson"}) as r:
        r.send("BURNSTATION_E", list(files.values()))
        job = r.new_job(set())
        done = r.final(job["id"])
        assert done["state"] == "done" and done["instances"] == len(files), done
        assert re.fullmatch(r".+ \(\+1 more\)", done["patient_name"]), done  # the index knows ODD1 and ""
    tree = extract(job_file(r.bin("epson") / job["id"], "iso"), tmp_path / "disc")
    on_disc = dicomdir_sops(tree)
    assert set(on_disc) == set(sops.values())
    assert dciodvfy_errors(tree / "DICOMDIR") == []
    for key in ("bigendian", "deflated", "multiframe"):
        burned = dcmread(on_disc[sops[key]])
        assert burned.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, key
        assert np.array_equal(burned.pixel_array, dcmread(files[key]).pixel_array), key
    assert dcmread(on_disc[sops["pdf"]]).EncapsulatedDocument == b"%PDF-1.4\n%%EOF\n\n"

    index = page_text(tree / "INDEX.HTM")
    for shown in ("ODD, ONE", "NOID, ANNA", "NOID, BERT"):
        assert shown in index, (shown, index)
    assert "<i>report</i>" not in (tree / "INDEX.HTM").read_text() or "&lt;i&gt;" in (tree / "INDEX.HTM").read_text()
    patients = [rec for rec in dcmread(tree / "DICOMDIR").DirectoryRecordSequence if rec.DirectoryRecordType == "PATIENT"]
    assert sorted(str(p.PatientName) for p in patients) == ["NOID^ANNA", "NOID^BERT", "ODD^ONE"]
    fields = done["discs"][0]["label_fields"]
    for shown in ("ODD, ONE", "NOID, ANNA", "NOID, BERT"):
        assert shown in fields["patient_name"], fields
    assert fields["birth_date"] == "1970-01-01"  # ODD^ONE's, though its first object (the PDF) has none
