"""Issue 17 end to end: the data folder is owner only, and big endian objects keep their pixels.

One station process: `run` on an older data folder (0755 folders, 0644 files) tightens it and says
so; a folder-export robot whose target lies inside the data folder (with a file chmod cannot
change) is left alone and does not stop the station. dcmtk storescu sends every pixel layout in
little and big endian plus the pydicom-data big endian file and an object no decoder can read; the
disc and a C-MOVE to a peer that only takes Implicit VR Little Endian (dcmtk storescp +xi) are
compared pixel for pixel and overlay for overlay. Modes are checked after init, run, ingest, the
disc build and reindex. `run` refuses, with a clear message, a folder it cannot make private.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from byteorder_support import check, make_objects, pydicom_data_files
from pydicom import dcmread
from support import BIN, Station, burnstation, dcmtk, free_port, storescp
from support import wait_for_named as wait_for
from test_byte_order import undecodable

from appliance import db
from appliance.burn import jobs

TIMEOUT = 90.0
EVBE = "1.2.840.10008.1.2.2"
ELE = "1.2.840.10008.1.2.1"


def open_entries(data: Path, exempt: tuple[Path, ...] = ()) -> list[str]:
    """Every entry of the data folder that is not owner only (folders 0700, files 0600)."""
    bad = []
    for root, dirs, files in os.walk(data):
        dirs[:] = [d for d in dirs if Path(root, d) not in exempt]
        for name in [*dirs, *files]:
            path = Path(root, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            if stat.S_IMODE(st.st_mode) != want:
                bad.append(f"{path} {stat.S_IMODE(st.st_mode):04o}")
    top = stat.S_IMODE(data.stat().st_mode)
    return bad + ([f"{data} {top:04o}"] if top != 0o700 else [])


def open_up(data: Path) -> None:
    """What an older station left: folders 0755, files 0644."""
    for root, dirs, files in os.walk(data):
        for name in dirs:
            os.chmod(Path(root, name), 0o755)
        for name in files:
            os.chmod(Path(root, name), 0o644)
    os.chmod(data, 0o755)


def immutable(path: Path, on: bool = True) -> bool:
    """chattr +i: even root's chmod fails on it (a share or someone else's file, as root can test it)."""
    r = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True, text=True)
    return r.returncode == 0


def new_jobs(data: Path) -> list[dict[str, Any]]:
    with contextlib.closing(db.connect(data)) as conn:
        return jobs.list_jobs(conn)


def by_sop(folder: Path) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in folder.rglob("*")
            if p.is_file() and p.name not in ("DICOMDIR",) and p.suffix not in (".HTM", ".TXT", ".JPG", ".iso",
                                                                                  ".png", ".json", ".xml")
            and not p.name.endswith(".sha256") and "IHE_PDI" not in p.parts and _is_dicom(p)}


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def test_init_makes_the_data_folder_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    burnstation(data, "init")
    assert open_entries(data) == []
    assert {p.name for p in data.iterdir()} >= {"storage", "state.db", "settings.json", "tls"}
    assert "Data folder permissions: owner only" in burnstation(data, "status").stdout


def test_run_refuses_a_data_folder_it_cannot_make_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    burnstation(data, "init")
    leftover = data / "storage" / "left-by-root.dcm"
    leftover.write_bytes(b"x")
    open_up(data)  # an older folder, with one file this user cannot chmod
    if not immutable(leftover):
        pytest.skip("chattr +i does not work on this file system (or without CAP_LINUX_IMMUTABLE)")
    try:
        proc = subprocess.Popen([str(BIN / "burnstation"), "--data", str(data), "run"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # it started after all: stop it and everything it started
            os.killpg(proc.pid, 9)
            out, err = proc.communicate()
        r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "not starting" in r.stderr and str(leftover) in r.stderr and "chown -R" in r.stderr, r.stderr
        status = burnstation(data, "status").stdout
        assert "Data folder permissions: NOT PRIVATE" in status and "left-by-root.dcm" in status, status
    finally:
        immutable(leftover, on=False)


@pytest.mark.station
def test_station_on_an_older_data_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    st = Station(data, burn__delay_seconds=1)
    assert open_entries(data) == []  # init
    export = data / "exports" / "usb"  # a folder export inside the data folder: handed over on purpose
    export.mkdir(parents=True)
    engine_file = export / "ENGINE.INI"
    engine_file.write_text("[vendor]\n")
    burnstation(data, "robots", "add", "usb", "--driver", "folder", "--path", str(export), "--role", "epson")
    burnstation(data, "nodes", "add", "MOVER", "127.0.0.1", "104")
    le_port = free_port()
    burnstation(data, "nodes", "add", "LEONLY", "127.0.0.1", str(le_port))
    open_up(data)
    locked = immutable(engine_file)  # chmod fails on it: the station must neither need nor try it
    try:
        status = burnstation(data, "status").stdout
        assert "Data folder permissions: NOT PRIVATE" in status, status
        st.start()
        try:
            _run(tmp_path, st, export, le_port)
        finally:
            st.stop()
        assert "owner-only (they were open to other users" in st.log(), st.log()[-3000:]
        # reindex writes a new index with the station stopped
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            (data / name).unlink(missing_ok=True)
        out = burnstation(data, "reindex").stdout
        assert "indexed 18 instances" in out, out
        assert open_entries(data, (data / "exports", data / "spool")) == []
        assert stat.S_IMODE(export.stat().st_mode) == 0o755 and stat.S_IMODE(engine_file.stat().st_mode) == 0o644
    finally:
        if locked:
            immutable(engine_file, on=False)


def _run(tmp_path: Path, st: Station, export: Path, le_port: int) -> None:
    data = st.data
    exports = (data / "exports", data / "spool")  # the robots' spool root and the export: exempt
    assert open_entries(data, exports) == []  # run tightened what the older station left
    assert stat.S_IMODE(export.stat().st_mode) == 0o755  # the export target is not touched
    assert "Data folder permissions: owner only" in burnstation(data, "status").stdout
    objects = make_objects(tmp_path / "in")
    little = [p for p in objects if dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID == ELE]
    big = [p for p in objects if p not in little]
    sample = pydicom_data_files()["OBXXXX1A_expb.dcm"]
    twin = dcmread(pydicom_data_files()["OBXXXX1A.dcm"])
    broken = undecodable(tmp_path / "broken.dcm")
    for proposal, files in (("-xe", little), ("-xb", [*big, sample]), ("-xy", [broken])):
        r = dcmtk("storescu", proposal, "-aec", "BURNSTATION_E", "127.0.0.1", str(st.port), *map(str, files))
        assert r.returncode == 0, r.stdout + r.stderr
    stored = by_sop(data / "storage")
    assert len(stored) == 18
    for path in big:  # the station keeps what it received: big endian stays big endian in storage
        assert str(dcmread(stored[objects[path].sop_uid], stop_before_pixels=True).file_meta.TransferSyntaxUID) == EVBE
    done = wait_for("every instance burnt", lambda: (lambda js: js if js and all(j["state"] == "done" for j in js)
                                                     and sum(j["instances"] for j in js) == 18 else None)(
        new_jobs(data)), TIMEOUT)
    assert open_entries(data, exports) == []  # after ingest and the disc build
    assert any((data / "discs").rglob("DICOMDIR"))
    disc_files: dict[str, Path] = {}
    for job in done:
        disc_files.update(by_sop(export / job["id"]))
    for authored in objects.values():
        check(disc_files[authored.sop_uid], authored)
    sample_copy = dcmread(disc_files[str(twin.SOPInstanceUID)])
    assert sample_copy.file_meta.TransferSyntaxUID == ELE and sample_copy.PixelData == twin.PixelData
    broken_uid = str(dcmread(broken, stop_before_pixels=True).SOPInstanceUID)
    assert disc_files[broken_uid].read_bytes() == stored[broken_uid].read_bytes()  # as received
    (broken_job,) = [j for j in done if any(d.get("off_profile") for d in j["discs"])]
    (note,) = [n for d in broken_job["discs"] for n in d["off_profile"]]
    assert broken_uid in note and "cannot decompress" in note
    shown = burnstation(data, "jobs", "show", broken_job["id"]).stdout
    assert "not in the profile's syntax" in shown and broken_uid in shown, shown
    readme = next((export / broken_job["id"]).rglob("README.TXT")).read_text(errors="replace")
    assert broken_uid in readme and "cannot decompress" in readme
    # C-MOVE to a peer that only takes Implicit VR Little Endian: the station changes the byte order
    received = tmp_path / "leonly"
    study_uid = str(dcmread(big[0], stop_before_pixels=True).StudyInstanceUID)
    with storescp(received, "LEONLY", le_port, "+xi"):
        for study in (study_uid, str(twin.StudyInstanceUID)):
            r = dcmtk("movescu", "-S", "-aet", "MOVER", "-aec", "BURNSTATION", "-aem", "LEONLY",
                      "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1",
                      str(st.port), timeout=120)
            assert r.returncode == 0, r.stdout + r.stderr
    moved = by_sop(received)
    for authored in objects.values():
        assert dcmread(moved[authored.sop_uid], stop_before_pixels=True).file_meta.TransferSyntaxUID == \
            "1.2.840.10008.1.2"
        check(moved[authored.sop_uid], authored)
    assert (dcmread(moved[str(twin.SOPInstanceUID)]).pixel_array == twin.pixel_array).all()
