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
from pydicom.multival import MultiValue
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)
from support import Station, burnstation, dcmtk, make_dataset, wait_port, write_study
from test_robots_e2e import job_file, rig, wait_for
from worklist_support import EB, SB, order, send_order

from drivers.epson.jdf import parse_jdf
from drivers.primera.jrq import parse_jrq

pytestmark = pytest.mark.station  # every test here starts a station process (tests/tiers.py)

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
    ("Evil\u202eTXT.EXE^\u200bX", "ISO_IR 192", "EvilTXT.EXE, X"),  # a bidi override would show "EvilEXE.TXT"
    ("Back\\slash^X", None, "Back; slash, X"),  # "\\" makes PN two values
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
        value = dcmread(path).PatientName
        assert ("\\".join(map(str, value)) if isinstance(value, MultiValue) else str(value)) == name
    designs = {"epson": tmp_path / "burnstation.tdd", "primera": tmp_path / "burnstation.std"}
    for design in designs.values():
        design.write_bytes(b"design stand-in")  # merge fields go to a label design only
    with rig(tmp_path, robot_options={k: {"label_template": str(v)} for k, v in designs.items()}) as r:
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
        for _, _, shown in NAMES:
            assert f"Patient: {shown} (" in readme, shown
        assert not any(ln.startswith("DATA=") for ln in readme.splitlines())
        if robot == "epson":
            text = job_file(out, "JDF").read_bytes().decode("cp1252")  # the robots' code pages, strictly
            pairs = parse_jdf(text)
            merge = next((out / "label").glob("*FIELDS*")).read_bytes().decode("cp1252")
            merge_lines = [ln for ln in merge.split("\r\n") if ln]
            assert all(ln.count("=") >= 1 and re.fullmatch(r"[a-z_]+", ln.split("=")[0]) for ln in merge_lines)
            fields = dict(ln.split("=", 1) for ln in merge_lines)
            assert len(fields) == len(merge_lines)  # no key twice, none injected
        else:
            text = job_file(out, "JRQ").read_bytes().decode("ascii")
            pairs = parse_jrq(text)
            merge_values = [v for k, v in pairs if k == "MergeField"]
            assert (out / "label" / "MergeFields.txt").read_text(encoding="utf-8").splitlines() == merge_values
            fields = {"patient_name": merge_values[0], "patient_id": merge_values[1]}
        assert len(text.splitlines()) == len(pairs)  # one line per key: no value split a line
        assert not [v for k, v in pairs if k.upper() == "DATA"], text
        # 山田 cannot be spelled in cp1252 nor ascii: the names give way to the Patient IDs in the
        # job files (the label image and the disc's pages above keep every name)
        assert fields["patient_name"] == fields["patient_id"] and "ID<0>/..\\x" in fields["patient_id"], fields
        assert not re.search(r"[\x00-\x1f\x7f\u200b\u202e]", "".join(fields.values()))


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
        # three patients: ODD1 and the two without Patient ID, which the index keeps apart
        assert re.fullmatch(r".+ \(\+2 more\)", done["patient_name"]), done
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


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def stored_sops(data: Path) -> set[str]:
    conn = sqlite3.connect(data / "state.db")
    try:
        return {row[0] for row in conn.execute("SELECT sop_uid FROM instances")}
    finally:
        conn.close()


def test_full_disk_while_building_fails_clearly_loses_nothing_and_retry_burns(tmp_path: Path) -> None:
    """<data>/discs on a 1 MB tmpfs: the build runs out of space → the job fails saying so, the
    partial build is removed, every received instance stays stored; after the space is grown a retry
    burns. Then storage below dicom.min_free_mb refuses C-STORE (A700) while that job still burns."""
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount(8)); the full-disk path is untested")
    try:
        files = write_study(tmp_path / "big", n_series=1, per_series=24, rows=128, cols=128, patient_id="FULL")
        with rig(tmp_path, roles={"epson": "epson"}) as r:
            discs = r.data / "discs"
            if discs.exists():
                assert not any(discs.iterdir())
                discs.rmdir()
            discs.symlink_to(small, target_is_directory=True)
            r.send("BURNSTATION_E", files)
            job = r.new_job(set())
            failed = r.final(job["id"])
            assert failed["state"] == "failed", failed
            assert "disk full while building" in failed["error"] and "retry" in failed["error"], failed
            shown = burnstation(r.data, "jobs", "list").stdout
            assert job["id"] in shown and "disk full" in shown, shown
            assert not any(small.iterdir()), sorted(p.name for p in small.rglob("*"))  # the partial build is gone
            sent = {str(dcmread(f).SOPInstanceUID) for f in files}
            assert sent <= stored_sops(r.data)

            subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
            r.ctl("epson", "fault", "cover_open", "on")  # hold the retry in the robot for the A700 check
            assert "attempt 2" in burnstation(r.data, "jobs", "retry", job["id"]).stdout
            wait_for("the retry in the robot", lambda: r.job(job["id"])["state"] in ("submitted", "burning"))
            burnstation(r.data, "config", "set", "dicom.min_free_mb=10000000")
            probes = iter(write_study(tmp_path / "probe", n_series=1, per_series=60, rows=8, cols=8))

            def refused() -> str | None:  # a new object each time: the station picks the setting up by itself
                probe = next(probes)
                out = dcmtk("storescu", "-d", "-nh", "-aec", "BURNSTATION", "127.0.0.1", str(r.station.port),
                            str(probe))
                return str(dcmread(probe).SOPInstanceUID) if "Status                  : 0xa700" in out.stdout + \
                    out.stderr else None

            refused_sop = wait_for("C-STORE refused with A700", refused, 30, every=0.5)
            r.ctl("epson", "fault", "cover_open", "off")
            done = r.final(job["id"])
            assert done["state"] == "done" and done["attempts"] == 2, done
            assert refused_sop not in stored_sops(r.data)
            tree = extract(job_file(r.bin("epson") / f"{job['id']}-2", "iso"), tmp_path / "disc")
            assert set(dicomdir_sops(tree)) == sent
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_cover_open_and_write_error_with_a_queue_behind(tmp_path: Path) -> None:
    """Cover opened while a job is in the Epson robot and two more queue behind it: the reason shows in
    `jobs list` and `status`; once the cover is closed the armed write error fails the first job
    only, the other two burn, a retry burns the failed one: each disc exactly once, none lost."""
    with rig(tmp_path, roles={"epson": "epson"}) as r:
        r.ctl("epson", "fault", "input_empty", "on")  # holds the first job inside the robot (.INP)
        seen: set[str] = set()
        order = []
        for n in range(3):
            r.send("BURNSTATION_E", write_study(tmp_path / f"q{n}", n_series=1, per_series=1, patient_id=f"Q{n}"))
            job = r.new_job(seen)
            seen.add(job["id"])
            order.append(job["id"])
            if n == 0:
                wait_for("the first job in the robot", lambda j=job["id"]: "empty" in r.job(j)["message"])
                r.ctl("epson", "fault", "cover_open", "on")  # opened while that job is in the robot
                r.ctl("epson", "fault", "write_error", "1", "on")
                r.ctl("epson", "refill")
        first = order[0]
        wait_for("the cover message on the first job", lambda: "cover" in r.job(first)["message"].lower())
        listing = burnstation(r.data, "jobs", "list").stdout
        assert "cover" in next(ln for ln in listing.splitlines() if ln.startswith(first)).lower(), listing
        seen_status: list[str] = [""]

        def robot_line() -> str:
            seen_status[0] = burnstation(r.data, "status").stdout
            return next(ln for ln in seen_status[0].splitlines() if ln.strip().startswith("epson "))

        # the robot's line comes from the driver's own status poll, apart from the job's message
        wait_for("the cover on the robot's status line", lambda: "cover" in robot_line().lower())
        status = seen_status[0]
        assert "cover" in next(ln for ln in status.splitlines() if ln.strip().startswith("epson ")).lower(), status
        for job_id in order[1:]:
            assert r.job(job_id)["state"] in ("queued", "building", "built", "submitted"), r.job(job_id)

        r.ctl("epson", "fault", "cover_open", "off")
        results = {job_id: r.final(job_id) for job_id in order}
        assert results[first]["state"] == "failed" and results[first]["error_code"].startswith("CAN"), results[first]
        assert [results[j]["state"] for j in order[1:]] == ["done", "done"], results
        burnstation(r.data, "jobs", "retry", first)
        assert r.final(first)["state"] == "done"
        state = json.loads(r.ctl("epson", "status"))
    made = sorted(p.name for p in r.bin("epson").iterdir())
    assert made == sorted([first, f"{first}-2", *order[1:]]), made
    for name in made:  # one job file per robot job, the discs the simulator made
        discs = json.loads((r.bin("epson") / name / "discs.json").read_text())
        assert [d["result"] for d in discs] == (["write error"] if name == first else ["ok"]), (name, discs)
    engine_jobs = state.get("jobs", [])
    assert len(engine_jobs) == len(made), engine_jobs  # nothing submitted twice


def test_broken_hl7_during_dicom_traffic(tmp_path: Path) -> None:
    """Garbage, an endless frame and an idle connection on the HL7 port while storescu sends a study:
    every instance is stored, a good order is acknowledged meanwhile, no process restarts."""
    files = write_study(tmp_path / "traffic", n_series=2, per_series=20, rows=128, cols=128)
    with Station(tmp_path / "data") as st:
        wait_port(st.hl7_port)
        before = json.loads(burnstation(st.data, "status", "--json").stdout)
        pids = {p["name"]: p.get("pid") for p in before["processes"]}
        result: dict[str, subprocess.CompletedProcess] = {}
        sender = threading.Thread(target=lambda: result.setdefault("store", dcmtk(
            "storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *map(str, files))))
        sender.start()
        idle = socket.create_connection(("127.0.0.1", st.hl7_port))  # says nothing
        endless = socket.create_connection(("127.0.0.1", st.hl7_port))
        endless.sendall(SB + b"MSH|^~\\&|" + b"A" * 2_000_000)  # a frame that never ends
        rng = np.random.default_rng(7)
        for n in range(20):
            with socket.create_connection(("127.0.0.1", st.hl7_port), timeout=5) as junk:
                payload = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
                junk.sendall([payload, SB + payload + EB + b"\r", SB + b"MSH|\r\x00\xff" + EB + b"\r"][n % 3])
                junk.settimeout(2)
                try:
                    junk.recv(4096)
                except (TimeoutError, ConnectionResetError):
                    pass
        assert send_order(st.hl7_port, order(placer="GOOD-1", control_id="GOOD-1")) == "AA"
        sender.join(120)
        assert result["store"].returncode == 0, result["store"].stderr
        assert {str(dcmread(f).SOPInstanceUID) for f in files} <= stored_sops(st.data)
        assert send_order(st.hl7_port, order(placer="GOOD-2", control_id="GOOD-2")) == "AA"
        idle.close()
        endless.close()
        after = json.loads(burnstation(st.data, "status", "--json").stdout)
        assert {p["name"]: p.get("pid") for p in after["processes"]} == pids, after["processes"]


def test_an_association_with_refused_objects_is_held_not_burned_incomplete(tmp_path: Path) -> None:
    """_E: two good instances and one the station refuses (no Study Instance UID) in one association:
    no incomplete disc is burned; the association is held with the reason, and burned on demand."""
    files = write_study(tmp_path / "part", n_series=1, per_series=2, patient_id="PART")
    broken = make_dataset(patient_id="PART")
    del broken.StudyInstanceUID
    broken.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    with rig(tmp_path, roles={"epson": "epson"}) as r:
        sent = dcmtk("storescu", "-aec", "BURNSTATION_E", "127.0.0.1", str(r.station.port), *map(str, files),
                     str(tmp_path / "broken.dcm"))
        assert sent.returncode != 0  # the sender is told
        held = wait_for("the association held", lambda: json.loads(
            burnstation(r.data, "jobs", "list", "--json").stdout)["held"])
        assert "1 object(s) refused" in held[0]["note"] and "jobs burn --assoc" in held[0]["note"], held
        assert r.jobs() == []
        assert "refused" in burnstation(r.data, "jobs", "list").stdout
        job_id = burnstation(r.data, "jobs", "burn", "--assoc", str(held[0]["assoc_id"])).stdout.strip()
        done = r.final(job_id)
        assert done["state"] == "done" and done["instances"] == 2 and done["robot"] == "epson", done
