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
    # MergeField fills a SureThing .STD design only: with an image label it does nothing
    assert not (out / "label" / "MergeFields.txt").exists()
    assert len(json.loads((out / "discs.json").read_text())) == 2


def test_merge_fields_fill_a_std_design(sim, tmp_path):
    jobs = sim.spool / "bravo"
    design = tmp_path / "burnstation.std"
    design.write_bytes(b"SureThing design (stand-in)")
    submit(jobs, "S-1.JRQ", f"JobID=S-1\r\nImageFile={make_iso(tmp_path / 's.iso')}\r\nPrintLabel={design}\r\n"
                            "MergeField=DOE^JOHN\r\nMergeField=20240115\r\n")
    sim.wait_ext(jobs, "S-1", "DON")
    out = sim.root / "bin" / "bravo" / "S-1" / "label"
    assert (out / "MergeFields.txt").read_text() == "DOE^JOHN\n20240115\n"
    assert (out / "burnstation.std").read_bytes() == design.read_bytes()


def test_documented_keys_are_accepted(sim, tmp_path):
    """Every key the SDK documents is taken, repeated DriveID and the DataImageType options too."""
    jobs = sim.spool / "bravo"
    tree = make_tree(tmp_path / "tree")
    text = (f"JobID=K1\r\nClientID=BurnStation\r\nImportance=4\r\nData={tree}\r\nDeleteFiles=NO\r\n"
            "PreMasterData=YES\r\nDataImageType=ISOLEVEL2+JOLIET, SETNOW, SAO\r\nTestRecord=NO\r\n"
            "PrintReject=NO\r\nDriveID=0\r\nDriveID=0\r\nBinID=0\r\nBurnSpeed=0\r\nPrintQuality=2\r\n"
            "NotifyClient=NO\r\nCDTextDiscTitle=Images\r\nRejectIfNotBlank=YES\r\n")
    submit(jobs, "K1.JRQ", text)
    sim.wait_ext(jobs, "K1", "DON")
    assert (sim.root / "bin" / "bravo" / "K1" / "disc" / "DICOMDIR").is_file()


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
    ("ImageFile={iso}\nClientID=" + "c" * 33 + "\n", "39"),
    ("ImageFile={iso}\nBinID=3\n", "8"),
    ("ImageFile={iso}\nDataImageType=UDF, FAST\n", "25"),
    ("\ufeffImageFile={iso}\n", "8"),  # a BOM is part of the first key (and not ASCII)
    ("ImageFile={iso}\nVolumeName=M\u00dcLLER\n", "8"),  # UTF-8 bytes are not ASCII
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


def test_importance_lower_numbers_first(sim, tmp_path):
    """Importance 0-400, 0 the most important, default 4: a job with 0 overtakes one with 4."""
    jobs = sim.spool / "bravo"
    iso = make_iso(tmp_path / "i.iso")
    sim.ctl("bravo", "fault", "input_empty", "on")
    submit(jobs, "BLK.JRQ", f"JobID=BLK\nImageFile={iso}\n")
    sim.wait_ext(jobs, "BLK", "INP")
    submit(jobs, "N4.JRQ", f"JobID=N4\nImageFile={iso}\n")  # no Importance: the default 4
    sim.wait_ext(jobs, "N4", "QRJ")
    submit(jobs, "H0.JRQ", f"JobID=H0\nImportance=0\nImageFile={iso}\n")
    sim.wait_ext(jobs, "H0", "QRJ")
    wait_for(lambda: robot_status(sim)["H0"]["JobsAhead"] == "1", what="H0 next in line")
    assert robot_status(sim)["N4"]["JobsAhead"] == "2"
    sim.ctl("bravo", "refill", "2")  # discs for BLK and one more job only
    sim.wait_ext(jobs, "H0", "DON")
    sim.wait_ext(jobs, "N4", "INP")
    assert not (jobs / "N4.DON").exists()


def test_duplicate_job_name(sim, tmp_path):
    """The job is named by its JRQ file name, not by JobID: a second file of the same name is refused."""
    jobs = sim.spool / "bravo"
    iso = make_iso(tmp_path / "d.iso")
    submit(jobs, "dup.JRQ", f"JobID=dup\nImageFile={iso}\n")
    sim.wait_ext(jobs, "dup", "DON")
    (jobs / "dup.DON").rename(jobs / "dup-first.DON")
    submit(jobs, "dup.JRQ", f"JobID=dup\nImageFile={iso}\n")
    sim.wait_ext(jobs, "dup", "ERR")
    assert robot_status(sim)["dup"]["JobState"] == "2"  # the first keeps its section
    submit(jobs, "other.JRQ", f"JobID=dup\nImageFile={iso}\n")  # JobID is not the name
    sim.wait_ext(jobs, "other", "DON")
    assert robot_status(sim)["other"]["JobState"] == "2"


def test_input_empty_waits_then_refill(sim, tmp_path):
    jobs = sim.spool / "bravo"
    sim.ctl("bravo", "fault", "input_empty", "on")
    submit(jobs, "W.JRQ", f"JobID=W\nImageFile={make_iso(tmp_path / 'w.iso')}\n")
    sim.wait_ext(jobs, "W", "INP")
    wait_for(lambda: "Input bin empty" in robot_status(sim)["W"]["CurrentStatus"], what="waiting text")
    assert robot_status(sim)["W"]["JobState"] == "1"
    system = system_status(sim)
    assert (system["System"]["SysErrorNumber"], system["System"]["SysErrorString"]) == ("3", "Input bin empty")
    assert system["bravo"]["SysErrorNumber"] == "3"  # per robot too
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
    assert system_status(sim)["System"]["SysErrorNumber"] == "15"  # cover open (too long)
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
    # the command file has the JRQ's name; it holds Message and ClientID only
    submit(jobs, "A.PTM", "Message=ABORT\nClientID=intruder\n")  # not the job's client: refused
    wait_for(lambda: not (jobs / "A.PTM").exists(), what="PTM consumed")
    sim.ctl("bravo", "status")
    assert (jobs / "A.INP").exists()
    submit(jobs, "A.PTM", "Message=ABORT\nClientID=station\nJobID=A\n")  # Message and ClientID only
    wait_for(lambda: not (jobs / "A.PTM").exists(), what="PTM consumed")
    submit(jobs, "other.PTM", "Message=ABORT\nClientID=station\n")  # names no job
    wait_for(lambda: not (jobs / "other.PTM").exists(), what="PTM consumed")
    sim.ctl("bravo", "status")
    assert (jobs / "A.INP").exists() and (jobs / "B.QRJ").exists()
    submit(jobs, "A.PTM", "Message = ABORT\nClientID = station\n")
    sim.wait_ext(jobs, "A", "ERR")
    j = job(sim, "A")
    assert (j["JobState"], j["JobErrorNumber"], j["CurrentStatusState"]) == ("3", "16", "13")
    submit(jobs, "B.PTM", "Message=ABORT\nClientID=Administrator\n")
    sim.wait_ext(jobs, "B", "ERR")


def test_ink_low_system_error(sim, tmp_path):
    sim.ctl("bravo", "fault", "ink_low", "on")
    wait_for(lambda: system_status(sim)["System"]["SysErrorNumber"] == "7", what="both inks low (7)")
    robot = system_status(sim)["bravo"]
    assert int(robot["CartridgeFill0"]) <= 5 and robot["SysErrorNumber"] == "7"
    assert (robot["CartridgeType0"], robot["CartridgeType1"]) == ("1", "2")  # colour, black: numbers
    assert robot["StatusFile"] == "bravo.txt"
    submit(sim.spool / "bravo", "I.PTM", "Message=IGNORE_INKLOW\n")
    wait_for(lambda: system_status(sim)["System"]["SysErrorNumber"] == "0", what="ink low ignored")


def test_status_files_in_place_and_heartbeat(sim):
    sim.sync()  # one loop round: the status files are written (the device is announced before)
    status_dir = sim.spool / "bravo" / "Status"
    inodes = {p.name: p.stat().st_ino for p in status_dir.iterdir()}
    assert set(inodes) == {"SystemStatus.txt", "bravo.txt"}
    first = int(system_status(sim)["System"]["ServerTickCount"])
    wait_for(lambda: int(system_status(sim)["System"]["ServerTickCount"]) > first, what="heartbeat")
    assert {p.name: p.stat().st_ino for p in status_dir.iterdir()} == inodes
