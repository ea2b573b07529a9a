"""The Primera PTBurn simulator, driven only through its PTBurnJobs folder, Status/ files and ctl."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from test_sim_support import Sim, make_iso, make_tree, read_ini, submit, wait_for


@pytest.fixture
def sim(tmp_path):
    with Sim(tmp_path, robots="primera:bravo") as s:
        yield s


def robot_status(sim):
    return read_ini(sim.spool / "bravo" / "Status" / "bravo.txt", "System")


def system_status(sim):
    return read_ini(sim.spool / "bravo" / "Status" / "SystemStatus.txt", "bravo")


def job(sim, job_id):
    return wait_for(lambda: (s := robot_status(sim)).has_section(job_id) and s[job_id], what=f"[{job_id}]")


def label_png(path):
    Image.new("RGB", (64, 64), "white").save(path)
    return path


def test_happy_path_image_job(sim, tmp_path):
    jobs = sim.spool / "bravo"
    iso = make_iso(tmp_path / "disc.iso")
    label = label_png(tmp_path / "label.png")
    text = (f"JobID = P-1\r\nClientID=BurnStation\r\nCopies=2\r\nImageFile={iso}\r\nImageType=MODE_1_2048\r\n"
            f"VerifyDisc=YES\r\nCloseDisc=YES\r\nPrintLabel={label}\r\nMergeField=DOE^JOHN\r\n"
            f"MergeField=20240115\r\nVolumeName=TESTDISC\r\nRobotName=bravo\r\n")
    before = system_status(sim)["bravo"]
    submit(jobs, "P-1.JRQ", text)
    sim.wait_ext(jobs, "P-1", "DON")
    st = wait_for(lambda: (s := robot_status(sim))["P-1"]["JobState"] == "2" and s, what="JobState 2")
    j = st["P-1"]
    assert (j["GoodDiscs"], j["BadDiscs"], j["JobErrorNumber"], j["CurrentStatusState"], j["DiscsRemaining"]) == (
        "2", "0", "0", "10", "0")
    assert j["TimeCreated"] and j["TimeStarted"] and j["TimeCompleted"]
    assert st["CompletedJobs"]["Job0"] == "P-1" and not dict(st["JobList"])
    assert st["System"]["DriveState0"] == "0"
    system = system_status(sim)
    assert system["RobotList"]["Robot0"] == "bravo"
    assert system["bravo"]["RobotType"] == "8"
    assert int(system["bravo"]["DiscsInLeftBin"]) == int(before["DiscsInLeftBin"]) - 2
    assert int(system["bravo"]["CartridgeFill0"]) == int(before["CartridgeFill0"]) - 2
    assert system["System"]["SysErrorNumber"] == "0"
    out = sim.root / "bin" / "bravo" / "P-1"
    assert (out / "P-1.JRQ").read_bytes() == text.encode()
    assert (out / "disc.iso").read_bytes() == iso.read_bytes()
    assert (out / "label" / "label.png").read_bytes() == label.read_bytes()
    assert (out / "label" / "MergeFields.txt").read_text() == "DOE^JOHN\n20240115\n"
    assert len(json.loads((out / "discs.json").read_text())) == 2


def test_data_mode_picks_media_by_bin(sim, tmp_path):
    jobs = sim.spool / "bravo"
    tree = make_tree(tmp_path / "tree")
    submit(jobs, "D1.JRQ", f"JobID=D1\nData={tree}\nBinID=2\n")
    sim.wait_ext(jobs, "D1", "DON")
    assert (sim.root / "bin" / "bravo" / "D1" / "disc" / "DICOMDIR").is_file()
    assert system_status(sim)["bravo"]["DiscsInRightBin"] == "49"


@pytest.mark.parametrize("body, number", [
    ("ImageFile={tmp}/missing.iso\n", "6"),
    ("Copies=1\n", "6"),
    ("ImageFile={noddir}\n", "4"),
    ("ImageFile={iso}\nPrintLabel={tmp}/missing.png\n", "7"),
    ("ImageFile={iso}\nPrintLabel={tmp}/notimage.jpg\n", "7"),
    ("ImageFile={iso}\nCopies=0\n", "8"),
    ("ImageFile={iso}\nCopies=10001\n", "8"),
    ("ImageFile={iso}\nColour=red\n", "8"),
    ("ImageFile={iso}\nJust a line\n", "8"),
    ("ImageFile={iso}\nClientID=" + "c" * 33 + "\n", "8"),
    ("ImageFile={iso}\nVerifyDisc=MAYBE\n", "8"),
    ("ImageFile={iso}\nRobotName=other\n", "8"),
])
def test_invalid_jobs_rejected_with_number(sim, tmp_path, body, number):
    jobs = sim.spool / "bravo"
    iso = make_iso(tmp_path / "ok.iso")
    noddir = make_iso(tmp_path / "n.iso", dicomdir=False)
    (tmp_path / "notimage.jpg").write_text("not a jpeg")
    submit(jobs, "BAD.JRQ", body.format(tmp=tmp_path, iso=iso, noddir=noddir))
    sim.wait_ext(jobs, "BAD", "ERR")
    j = job(sim, "BAD")
    assert (j["JobState"], j["JobErrorNumber"], j["CurrentStatusState"]) == ("3", number, "15")
    assert j["JobErrorString"]


def test_duplicate_job_id(sim, tmp_path):
    jobs = sim.spool / "bravo"
    iso = make_iso(tmp_path / "d.iso")
    submit(jobs, "a.JRQ", f"JobID=dup\nImageFile={iso}\n")
    sim.wait_ext(jobs, "a", "DON")
    submit(jobs, "b.JRQ", f"JobID=dup\nImageFile={iso}\n")
    sim.wait_ext(jobs, "b", "ERR")
    assert robot_status(sim)["dup"]["JobState"] == "2"


def test_input_empty_waits_then_refill(sim, tmp_path):
    jobs = sim.spool / "bravo"
    sim.ctl("bravo", "fault", "input_empty", "on")
    submit(jobs, "W.JRQ", f"JobID=W\nImageFile={make_iso(tmp_path / 'w.iso')}\n")
    sim.wait_ext(jobs, "W", "INP")
    wait_for(lambda: "Input bin empty" in robot_status(sim)["W"]["CurrentStatus"], what="waiting text")
    assert robot_status(sim)["W"]["JobState"] == "1"
    assert system_status(sim)["System"]["SysErrorString"] == "Input bin empty"
    sim.ctl("bravo", "refill")
    sim.wait_ext(jobs, "W", "DON")


def test_write_error_on_disc_n(sim, tmp_path):
    jobs = sim.spool / "bravo"
    sim.ctl("bravo", "fault", "write_error", "1", "on")
    submit(jobs, "E.JRQ", f"JobID=E\nCopies=2\nImageFile={make_iso(tmp_path / 'e.iso')}\n")
    sim.wait_ext(jobs, "E", "ERR")
    j = wait_for(lambda: (s := robot_status(sim))["E"]["JobState"] == "3" and s["E"], what="failed")
    assert (j["JobErrorNumber"], j["JobErrorString"], j["BadDiscs"], j["GoodDiscs"]) == ("18", "Record error", "1", "0")
    assert (j["DiscErrorIndex0"], j["DiscErrorNumber0"], j["DiscErrorString0"]) == ("1", "18", "Record error")
    submit(jobs, "E2.JRQ", f"JobID=E2\nCopies=2\nImageFile={make_iso(tmp_path / 'e2.iso')}\n")
    sim.wait_ext(jobs, "E2", "DON")


def test_cover_open_pauses(sim, tmp_path):
    jobs = sim.spool / "bravo"
    sim.ctl("bravo", "fault", "input_empty", "on")
    submit(jobs, "C.JRQ", f"JobID=C\nImageFile={make_iso(tmp_path / 'c.iso')}\n")
    sim.wait_ext(jobs, "C", "INP")
    sim.ctl("bravo", "fault", "cover_open", "on")
    wait_for(lambda: robot_status(sim)["C"]["CurrentStatusState"] == "11", what="paused")
    assert (jobs / "C.INP").exists()  # PTBurn keeps .INP while paused
    assert system_status(sim)["System"]["SysErrorString"] == "Cover open"
    sim.ctl("bravo", "refill")
    sim.ctl("bravo", "fault", "cover_open", "off")
    sim.wait_ext(jobs, "C", "DON")


def test_abort_with_ptm(sim, tmp_path):
    jobs = sim.spool / "bravo"
    sim.ctl("bravo", "fault", "input_empty", "on")
    iso = make_iso(tmp_path / "a.iso")
    submit(jobs, "A.JRQ", f"JobID=A\nClientID=station\nImageFile={iso}\n")
    submit(jobs, "B.JRQ", f"JobID=B\nClientID=station\nImageFile={iso}\n")
    sim.wait_ext(jobs, "A", "INP")
    sim.wait_ext(jobs, "B", "QRJ")
    submit(jobs, "x.PTM", "Message=ABORT\nClientID=intruder\nJobID=A\n")  # not authorized: ignored
    wait_for(lambda: not (jobs / "x.PTM").exists(), what="PTM consumed")
    sim.ctl("bravo", "status")
    assert (jobs / "A.INP").exists()
    submit(jobs, "y.PTM", "Message = ABORT\nClientID = station\nJobID = A\n")
    sim.wait_ext(jobs, "A", "ERR")
    j = job(sim, "A")
    assert (j["JobState"], j["JobErrorNumber"], j["CurrentStatusState"]) == ("3", "16", "13")
    submit(jobs, "z.PTM", "Message=ABORT\nClientID=Administrator\nJobID=B\n")
    sim.wait_ext(jobs, "B", "ERR")


def test_ink_low_system_error(sim, tmp_path):
    sim.ctl("bravo", "fault", "ink_low", "on")
    wait_for(lambda: system_status(sim)["System"]["SysErrorString"] == "Ink low", what="ink low")
    assert int(system_status(sim)["bravo"]["CartridgeFill0"]) <= 5
    submit(sim.spool / "bravo", "I.PTM", "Message=IGNORE_INKLOW\n")
    wait_for(lambda: system_status(sim)["System"]["SysErrorNumber"] == "0", what="ink low ignored")


def test_status_files_in_place_and_heartbeat(sim):
    status_dir = sim.spool / "bravo" / "Status"
    inodes = {p.name: p.stat().st_ino for p in status_dir.iterdir()}
    assert set(inodes) == {"SystemStatus.txt", "bravo.txt"}
    first = int(system_status(sim)["System"]["ServerTickCount"])
    wait_for(lambda: int(system_status(sim)["System"]["ServerTickCount"]) > first, what="heartbeat")
    assert {p.name: p.stat().st_ino for p in status_dir.iterdir()} == inodes
