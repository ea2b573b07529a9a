"""Primera PTBurn driver, unit level: JRQ building, injection attempts, status files (half-written
too, heartbeat), the job lifecycle by file extension, abort, retry, path mapping, label conversion.

The engine's side is played by hand here; tests/test_robots_e2e.py runs the driver against the
hardware simulator.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from PIL import Image

from appliance import publish
from drivers.primera import errors, jrq
from drivers.primera.publisher import PrimeraPublisher
from drivers.primera.status import Heartbeat

INJECT = "DOE^JOHN\r\nData=/etc\nImportance=400"


def disc(tmp_path: Path, media: str = "CD", fields: dict | None = None, volume: str = "DOE_JOHN",
         label: str = "png", number: int = 1, count: int = 1) -> publish.DiscImage:
    tree = tmp_path / f"tree{number}"
    tree.mkdir(exist_ok=True)
    (tree / "DICOMDIR").write_bytes(b"x")
    image = tmp_path / f"disc{number}.iso"
    image.write_bytes(b"\0" * 4096)
    label_path = None
    if label:
        label_path = tmp_path / f"label.{label}"
        Image.new("RGB", (40, 40), "white").save(label_path)
    return publish.DiscImage(image=image, tree=tree, media=media, filesystem="ISO9660+JOLIET", volume_label=volume,
                             size=4096, label_image=label_path,
                             label_fields=fields if fields is not None else {"patient_id": "P1",
                                                                               "patient_name": "DOE^JOHN"},
                             disc_number=number, disc_count=count)


def robot(tmp_path: Path, **kw: object) -> dict:
    spool = tmp_path / "PTBurnJobs"
    (spool / "Status").mkdir(parents=True, exist_ok=True)
    return {"name": "bravo", "driver": "primera", "role": "primera", "media": ["CD", "DVD"], "spool": str(spool),
            "engine_path": "", "mode": "image", "verify": True, "source": "manual", **kw}


TICK = [1000]


def write_system(spool: Path, sys_error: tuple[int, str] = (0, ""), robot_keys: dict | None = None,
                 tick: bool = True) -> None:
    if tick:
        TICK[0] += 1
    keys = {"RobotType": 7, "NumJobs": 0, "Status": "Idle", "DiscsInLeftBin": 25, "DiscsInRightBin": -1,
            "CartridgeType0": 1, "CartridgeFill0": 64, "CartridgeType1": 2, "CartridgeFill1": 5}  # SDK: numbers
    keys.update(robot_keys or {})
    text = ("[RobotList]\r\nRobot0=Bravo Xi\r\n\r\n[System]\r\n"
            f"SysErrorNumber={sys_error[0]}\r\nSysErrorString={sys_error[1]}\r\nServerTickCount={TICK[0]}\r\n"
            "ServerTime=2024-01-01 12:00:00\r\nDriveSpace=1000\r\n\r\n[Bravo Xi]\r\n"
            + "".join(f"{k}={v}\r\n" for k, v in keys.items()))
    tmp = spool / "Status" / "sys.tmp"
    tmp.write_text(text)
    tmp.replace(spool / "Status" / "SystemStatus.txt")


def write_robot(spool: Path, jobs: dict[str, dict] | None = None, completed: tuple[str, ...] = ()) -> None:
    lines = ["[JobList]"] + [f"Job{i}={j}" for i, j in enumerate(j for j in (jobs or {}) if j not in completed)]
    lines += ["", "[CompletedJobs]"] + [f"Job{i}={j}" for i, j in enumerate(completed)] + [""]
    for job, keys in (jobs or {}).items():
        full = {"JobsAhead": 0, "DiscsAhead": 0, "CurrentStatus": "", "CurrentStatusState": 17, "GoodDiscs": 0,
                "BadDiscs": 0, "DiscsRemaining": 1, "JobState": 0, "JobErrorNumber": 0, "JobErrorString": "",
                "DiscErrorIndex0": 0, "DiscErrorNumber0": 0, "DiscErrorString0": ""}
        full.update(keys)
        lines += [f"[{job}]"] + [f"{k} = {v}" for k, v in full.items()] + [""]
    lines += ["[System]", "SystemStatus=Idle", "DriveState0=1", "DrivePercent0=40", "DriveState1=0",
              "DrivePercent1=0"]
    tmp = spool / "Status" / "rob.tmp"
    tmp.write_text("\r\n".join(lines) + "\r\n")
    tmp.replace(spool / "Status" / "Bravo Xi.txt")


def a_moment_later(path: Path) -> None:
    """Date the file a second ahead: rewritten after the poll that first saw the error, whatever the
    file system's timestamp resolution (the rule compares its mtime with that poll's time)."""
    later = time.time() + 1
    os.utime(path, (later, later))


def rename(spool: Path, stem: str, old: str, new: str) -> None:
    (spool / f"{stem}.{old}").rename(spool / f"{stem}.{new}")


def raw(path: Path) -> str:
    return path.read_bytes().decode()


# --------------------------------------------------------------------------- JRQ builder


def test_jrq_image_mode_has_exactly_the_expected_keys():
    job = jrq.JrqJob(job_id="J1", image="/spool/jobfiles/J1/DISC.iso", copies=2, print_label="/spool/L.STD",
                     merge_values=["DOE^JOHN", "P1"], volume_name="VOL", robot_name="Bravo Xi")
    text = jrq.build_jrq(job)
    assert jrq.parse_jrq(text) == [
        ("JobID", "J1"), ("ClientID", "BurnStation"), ("Importance", "4"),
        ("ImageFile", "/spool/jobfiles/J1/DISC.iso"), ("ImageType", "MODE_1_2048"), ("CloseDisc", "YES"),
        ("VerifyDisc", "YES"), ("RejectIfNotBlank", "YES"), ("Copies", "2"), ("PrintLabel", "/spool/L.STD"),
        ("MergeField", "DOE^JOHN"), ("MergeField", "P1"), ("VolumeName", "VOL"), ("RobotName", "Bravo Xi"),
    ]
    # MergeField fills a SureThing .STD design only: refused with an image label
    with pytest.raises(ValueError, match="STD"):
        jrq.build_jrq(jrq.JrqJob(job_id="J1", image="/i.iso", print_label="/spool/L.jpg", merge_values=["X"]))


def test_jrq_data_mode_and_limits():
    pairs = jrq.parse_jrq(jrq.build_jrq(jrq.JrqJob(job_id="J2", data=["Z:\\a\\DISC"], data_image_type="UDF",
                                                   verify=False, importance=300)))
    assert ("Data", "Z:\\a\\DISC") in pairs and ("DataImageType", "UDF") in pairs and ("VerifyDisc", "NO") in pairs
    assert not any(k in ("ImageFile", "ImageType") for k, _ in pairs)
    for bad in (dict(copies=0), dict(copies=10001), dict(importance=401), dict(job_id="x" * 33),
                dict(data_image_type="NTFS", image="", data=["/d"]), dict(print_label="/l.png")):
        with pytest.raises(ValueError):
            jrq.build_jrq(jrq.JrqJob(**{"job_id": "J3", "image": "/i.iso", **bad}))
    assert jrq.data_image_type_for("CD", "") == "JOLIET" and jrq.data_image_type_for("BD", "") == "UDF201"
    # Importance: 0 is the most important, PTBurn's default 4 (the SDK): high priority gets the smaller number
    assert jrq.importance_for(1) == 0 < jrq.importance_for(0) == 4


def test_untrusted_values_cannot_add_a_key():
    job = jrq.JrqJob(job_id="J1", image="/i.iso", volume_name=INJECT, robot_name=INJECT, client_id=INJECT,
                     print_label="/d.std", merge_values=jrq.ordered_merge_values({"patient_name": INJECT}))
    pairs = jrq.parse_jrq(jrq.build_jrq(job))
    keys = [k for k, _ in pairs]
    assert keys.count("Data") == 0 and keys.count("Importance") == 1 and dict(pairs)["Importance"] == "4"
    assert len(dict(pairs)["VolumeName"]) <= 32 and len(dict(pairs)["ClientID"]) <= 32
    assert dict(pairs)["MergeField"] == "DOE^JOHN Data /etc Importance 400"


def test_merge_fields_follow_the_declared_order():
    values = jrq.ordered_merge_values({"institution": "H", "patient_id": "P1", "extra": "E", "patient_name": "N"})
    # patient_name, patient_id, then empty places up to institution, then fields not in the order
    order = list(jrq.DEFAULT_MERGE_ORDER)
    assert values[order.index("patient_name")] == "N" and values[order.index("patient_id")] == "P1"
    assert values[order.index("institution")] == "H" and values[order.index("birth_date")] == ""
    assert values[-1] == "E"
    assert jrq.ordered_merge_values({"b": "2", "a": "1"}, order=["a", "b"]) == ["1", "2"]


def test_abort_command():
    """The SDK's abort: a .PTM named like the job's JRQ holding Message=ABORT and ClientID only."""
    assert jrq.parse_jrq(jrq.build_abort()) == [("Message", "ABORT"), ("ClientID", "BurnStation")]
    assert jrq.parse_jrq(jrq.build_abort("Ward 3")) == [("Message", "ABORT"), ("ClientID", "Ward 3")]
    # a ClientID cannot add a line
    assert [k for k, _ in jrq.parse_jrq(jrq.build_abort("X\nMessage=SHUTDOWN_IMMEDIATE"))] == ["Message", "ClientID"]


def test_error_numbers_in_clear_text():
    assert len(errors.ERRORS) == 41 and all(errors.ERRORS[n] for n in range(41))  # 0-40, the SDK's table
    assert "record" in errors.describe(18) and "verify" in errors.describe(19)
    assert errors.describe(18, "Recorder failed at 73%") == "Recorder failed at 73% (record (write) error, error 18)"
    assert errors.describe(0) == "" and "99" in errors.describe(99)


# --------------------------------------------------------------------------- status


def test_status_bins_cartridges_drives_and_heartbeat(tmp_path):
    r = robot(tmp_path, status_timeout=30)
    spool = Path(r["spool"])
    pub = PrimeraPublisher(r, tmp_path)
    st = pub.status()
    assert not st.online and "SystemStatus.txt" in st.message
    write_system(spool)
    write_robot(spool)
    st = pub.status()
    assert st.online and st.media == ["CD", "DVD"]
    assert st.stackers == {"left bin": {"discs": 25}, "right bin": {"discs": None}}
    assert st.ink == {"cartridge 0 (colour)": 64, "cartridge 1 (black)": 5}
    assert "ink low: cartridge 1 (black) 5%" in st.faults
    assert st.drives == [{"drive": 0, "state": 1, "percent": 40, "state_text": "recording"},
                         {"drive": 1, "state": 0, "percent": 0, "state_text": "idle"}]
    write_system(spool, sys_error=(3, ""))  # the SDK's number alone: the driver names it
    st = pub.status()
    assert st.online and "input bin empty" in st.message and "system error 3" in st.message
    # half-written: the last good values, no crash
    text = (spool / "Status" / "SystemStatus.txt").read_text()
    (spool / "Status" / "SystemStatus.txt").write_text(text[: len(text) // 2])
    st = pub.status()
    assert st.ink["cartridge 0 (colour)"] == 64 and "half-written" in st.message
    (spool / "Status" / "Bravo Xi.txt").write_bytes(b"\x00\xff" * 50)
    assert pub.status().drives[0]["percent"] == 40


def test_heartbeat():
    hb = Heartbeat(timeout=10)
    assert hb.alive("1", now=100) and hb.alive("1", now=109)
    assert not hb.alive("1", now=111)
    assert hb.alive("2", now=112)


def test_engine_that_stopped_ticking_is_offline(tmp_path):
    r = robot(tmp_path, status_timeout=30)
    spool = Path(r["spool"])
    write_system(spool)
    write_robot(spool)
    pub = PrimeraPublisher(r, tmp_path)
    assert pub.status().online
    pub.heartbeat.since -= 31  # we have watched the same tick for 31 s
    st = pub.status()
    assert not st.online and "not responding" in st.message
    write_system(spool)  # it ticks again
    assert pub.status().online
    old = time.time() - 600  # a file nobody has rewritten for ten minutes
    os.utime(spool / "Status" / "SystemStatus.txt", (old, old))
    assert not PrimeraPublisher(r, tmp_path).status().online


# --------------------------------------------------------------------------- lifecycle


def test_submit_poll_lifecycle(tmp_path):
    r = robot(tmp_path)
    spool = Path(r["spool"])
    write_system(spool)
    write_robot(spool)
    pub = PrimeraPublisher(r, tmp_path)
    assert pub.poll("J1").state == publish.UNKNOWN
    pub.submit(publish.PublishRequest(job_id="J1", discs=[disc(tmp_path)], copies=3, priority=1))
    pairs = jrq.parse_jrq(raw(spool / "J1.JRQ"))
    d = dict(pairs)
    # an image label already carries the text: no MergeField lines (they fill a .STD design only)
    assert [k for k, _ in pairs] == ["JobID", "ClientID", "Importance", "ImageFile", "ImageType", "CloseDisc",
                                     "VerifyDisc", "RejectIfNotBlank", "Copies", "PrintLabel", "VolumeName",
                                     "RobotName"]
    # high priority: Importance 0, the most important (the SDK: lower numbers first)
    assert d["JobID"] == "J1" and d["Copies"] == "3" and d["Importance"] == "0" and d["RobotName"] == "Bravo Xi"
    assert d["PrintLabel"].endswith("LABEL.jpg") and Image.open(d["PrintLabel"]).format == "JPEG"
    assert Path(d["ImageFile"]).read_bytes() == b"\0" * 4096
    assert pub.poll("J1").state == publish.WAITING
    pub.submit(publish.PublishRequest(job_id="J1", discs=[disc(tmp_path)], copies=3))
    assert [p.name for p in spool.glob("J1*")] == ["J1.JRQ"]  # never twice

    rename(spool, "J1", "JRQ", "QRJ")
    write_robot(spool, {"J1": {"JobsAhead": 2, "DiscsRemaining": 3}})
    p = pub.poll("J1")
    assert p.state == publish.WAITING and "2 jobs ahead" in p.message
    rename(spool, "J1", "QRJ", "INP")
    write_robot(spool, {"J1": {"JobState": 1, "CurrentStatus": "Recording disc 2", "CurrentStatusState": 0,
                               "GoodDiscs": 1, "DiscsRemaining": 2}})
    p = pub.poll("J1")
    assert p.state == publish.BURNING and "Recording disc 2" in p.message and abs(p.progress - 1 / 3) < 1e-9
    # the robot ran out of discs: the job waits with the robot's words
    write_system(spool, sys_error=(3, "Input bin empty - load discs"))
    p = pub.poll("J1")
    assert p.state == publish.WAITING and "Input bin empty" in p.message
    write_system(spool)
    assert pub.poll("J1").state == publish.BURNING
    rename(spool, "J1", "INP", "DON")
    write_robot(spool, {"J1": {"JobState": 2, "CurrentStatusState": 10, "GoodDiscs": 3, "DiscsRemaining": 0}},
                completed=("J1",))
    p = PrimeraPublisher(r, tmp_path).poll("J1")  # a restarted driver finds it by id
    assert p.state == publish.DONE and p.discs_done == 3
    assert not (spool / "jobfiles" / "J1").exists()


def test_write_error_then_retry(tmp_path):
    r = robot(tmp_path)
    spool = Path(r["spool"])
    write_system(spool)
    write_robot(spool)
    pub = PrimeraPublisher(r, tmp_path)
    req = publish.PublishRequest(job_id="J2", discs=[disc(tmp_path)])
    pub.submit(req)
    write_robot(spool, {"J2": {"JobState": 1, "CurrentStatusState": 0}})
    pub.poll("J2")
    rename(spool, "J2", "JRQ", "ERR")
    p = pub.poll("J2")  # renamed before the status file tells why: held back, not failed without a reason
    assert p.state == publish.BURNING and "waiting for the engine's report" in p.message
    write_robot(spool, {"J2": {"JobState": 3, "CurrentStatusState": 15, "BadDiscs": 1, "JobErrorNumber": 0,
                               "DiscErrorNumber0": 18, "DiscErrorString0": "Write failed at sector 1234"}},
                completed=("J2",))
    a_moment_later(spool / "Status" / "Bravo Xi.txt")
    p = pub.poll("J2")
    assert p.state == publish.FAILED and p.error_code == "18"
    assert "Write failed at sector 1234" in p.message and "record (write) error" in p.message
    pub.submit(req)
    assert dict(jrq.parse_jrq(raw(spool / "J2-R2.JRQ")))["JobID"] == "J2-R2"
    rename(spool, "J2-R2", "JRQ", "DON")
    assert pub.poll("J2").state == publish.DONE


def test_abort(tmp_path):
    r = robot(tmp_path)
    spool = Path(r["spool"])
    write_system(spool)
    write_robot(spool)
    pub = PrimeraPublisher(r, tmp_path)
    assert not pub.cancel("J3")
    pub.submit(publish.PublishRequest(job_id="J3", discs=[disc(tmp_path)]))
    rename(spool, "J3", "JRQ", "INP")
    assert pub.cancel("J3")
    # the JRQ's name, Message and ClientID only
    assert jrq.parse_jrq(raw(spool / "J3.PTM")) == [("Message", "ABORT"), ("ClientID", "BurnStation")]
    rename(spool, "J3", "INP", "ERR")
    assert pub.poll("J3").state == publish.BURNING  # abort sent, the engine's word not in yet
    (spool / "J3.PTM").unlink()  # consumed by the engine
    write_robot(spool, {"J3": {"JobState": 3, "CurrentStatusState": 13, "JobErrorNumber": 16,
                               "JobErrorString": "Job aborted by client"}}, completed=("J3",))
    a_moment_later(spool / "Status" / "Bravo Xi.txt")
    assert pub.poll("J3").state == publish.CANCELLED
    assert not pub.cancel("J3")


@pytest.mark.parametrize("engine_path, image", [
    ("\\\\ptburn-host\\PTBurnJobs", "\\\\ptburn-host\\PTBurnJobs\\jobfiles\\J4\\DISC.iso"),
    ("C:\\PTBurnJobs", "C:\\PTBurnJobs\\jobfiles\\J4\\DISC.iso"),
    ("/srv/ptburn", "/srv/ptburn/jobfiles/J4/DISC.iso"),
])
def test_engine_path_mapping(tmp_path, engine_path, image):
    r = robot(tmp_path, engine_path=engine_path)
    spool = Path(r["spool"])
    write_system(spool)
    write_robot(spool)
    PrimeraPublisher(r, tmp_path).submit(publish.PublishRequest(job_id="J4", discs=[disc(tmp_path)]))
    d = dict(jrq.parse_jrq(raw(spool / "J4.JRQ")))
    assert d["ImageFile"] == image
    assert d["PrintLabel"] == image.replace("DISC.iso", "LABEL.jpg")


def test_data_mode_and_jpeg_label_kept(tmp_path):
    r = robot(tmp_path, mode="data")
    spool = Path(r["spool"])
    write_system(spool)
    write_robot(spool)
    PrimeraPublisher(r, tmp_path).submit(publish.PublishRequest(
        job_id="J5", discs=[disc(tmp_path, media="DVD", label="jpg")]))
    d = dict(jrq.parse_jrq(raw(spool / "J5.JRQ")))
    assert d["Data"].endswith("jobfiles/J5/DISC") and d["DataImageType"] == "UDF" and "ImageFile" not in d
    assert Path(d["Data"], "DICOMDIR").exists() and d["PrintLabel"].endswith("LABEL.jpg")


def test_long_job_ids_fit_32_characters(tmp_path):
    r = robot(tmp_path)
    spool = Path(r["spool"])
    write_system(spool)
    write_robot(spool)
    pub = PrimeraPublisher(r, tmp_path)
    job_id = "J" + "1" * 31
    pub.submit(publish.PublishRequest(job_id=job_id, discs=[disc(tmp_path, number=1, count=2),
                                                            disc(tmp_path, number=2, count=2)]))
    ids = sorted(dict(jrq.parse_jrq(raw(p)))["JobID"] for p in spool.glob("*.JRQ"))
    assert len(ids) == 2 and all(len(i) <= 32 for i in ids) and ids[0].endswith("-D1of2")
    assert pub.poll(job_id).state == publish.WAITING


def test_injection_through_the_publisher(tmp_path):
    r = robot(tmp_path)
    spool = Path(r["spool"])
    write_system(spool)
    write_robot(spool)
    fields = {"patient_name": INJECT, "patient_id": "P1\r\nJobID=EVIL"}
    PrimeraPublisher(r, tmp_path).submit(publish.PublishRequest(
        job_id="J6", discs=[disc(tmp_path, fields=fields, volume=INJECT)]))
    pairs = jrq.parse_jrq(raw(spool / "J6.JRQ"))
    keys = [k for k, _ in pairs]
    assert keys.count("JobID") == 1 and "Data" not in keys and keys.count("Importance") == 1
    assert dict(pairs)["JobID"] == "J6"


def test_an_old_job_of_the_same_id_is_not_taken_for_ours(tmp_path):
    r = robot(tmp_path)
    spool = Path(r["spool"])
    (spool / "J1.DON").write_text("JobID=J1\r\n")
    write_system(spool)
    write_robot(spool, {"J1": {"JobState": 2, "CurrentStatusState": 10, "GoodDiscs": 1}}, completed=("J1",))
    pub = PrimeraPublisher(r, tmp_path / "fresh-data")
    assert pub.poll("J1").state == publish.UNKNOWN
    pub.submit(publish.PublishRequest(job_id="J1", discs=[disc(tmp_path)]))
    assert dict(jrq.parse_jrq(raw(spool / "J1-R2.JRQ")))["JobID"] == "J1-R2"
    assert PrimeraPublisher(r, tmp_path / "fresh-data").poll("J1").state == publish.WAITING


# --------------------------------------------------------------------------- the SDK's facts


def test_per_robot_system_error_and_status_file_name(tmp_path):
    """SysErrorNumber per robot (the SDK's table: 15 cover open), and the robot's own status file
    found by its StatusFile= entry, not guessed from its name."""
    r = robot(tmp_path)
    spool = Path(r["spool"])
    write_system(spool, robot_keys={"SysErrorNumber": 15, "SysErrorString": "", "StatusFile": "BravoXi-1.txt"})
    write_robot(spool)
    (spool / "Status" / "Bravo Xi.txt").rename(spool / "Status" / "BravoXi-1.txt")
    st = PrimeraPublisher(r, tmp_path).status()
    assert st.online and "cover open too long" in st.message and "system error 15" in st.message
    assert st.drives and st.drives[0]["percent"] == 40  # read from BravoXi-1.txt


def test_manual_example_system_status(tmp_path):
    """A SystemStatus.txt shaped as the SDK describes it: ink low (7 both), numeric cartridge types,
    ServerTickCount in seconds."""
    from drivers.common import parse_ini
    from drivers.primera.status import robot_state, system_error

    text = ("[RobotList]\r\nRobot0=Bravo 4100\r\n\r\n[System]\r\nSysErrorNumber=7\r\nSysErrorString=\r\n"
            "ServerTickCount=86400\r\nServerTime=2024-01-01 12:00:00\r\nDriveSpace=1000\r\n\r\n[Bravo 4100]\r\n"
            "RobotType=8\r\nNumJobs=0\r\nStatus=Idle\r\nSysErrorNumber=3\r\nSysErrorString=Input bin empty\r\n"
            "DiscsInLeftBin=0\r\nDiscsInRightBin=-1\r\nCartridgeType0=1\r\nCartridgeFill0=4\r\n"
            "CartridgeType1=2\r\nCartridgeFill1=6\r\nStatusFile=Bravo 4100.txt\r\n")
    sections, _, _ = parse_ini(text)
    assert system_error(sections, "Bravo 4100") == (
        "both inks low (system error 7); Input bin empty (input bin empty: load blank discs, system error 3)")
    state = robot_state(sections, {}, "Bravo 4100")
    assert state.robot_type == "Bravo 4100" and state.ink == {"cartridge 0 (colour)": 4, "cartridge 1 (black)": 6}
    assert state.stackers == {"left bin": {"discs": 0}, "right bin": {"discs": None}}


def test_std_design_gets_merge_fields_an_image_label_does_not(tmp_path):
    """MergeField fills a SureThing .STD design; with an image label the text is already on it."""
    r = robot(tmp_path, label_template="C:\\Designs\\burnstation.STD")
    spool = Path(r["spool"])
    write_system(spool)
    write_robot(spool)
    PrimeraPublisher(r, tmp_path).submit(publish.PublishRequest(job_id="J30", discs=[disc(tmp_path)]))
    pairs = jrq.parse_jrq(raw(spool / "J30.JRQ"))
    assert dict(pairs)["PrintLabel"] == "C:\\Designs\\burnstation.STD"
    assert [v for k, v in pairs if k == "MergeField"] == ["DOE^JOHN", "P1"]
    r2 = robot(tmp_path / "img")
    write_system(Path(r2["spool"]))
    PrimeraPublisher(r2, tmp_path / "img").submit(publish.PublishRequest(job_id="J31", discs=[disc(tmp_path)]))
    pairs = jrq.parse_jrq(raw(Path(r2["spool"]) / "J31.JRQ"))
    assert dict(pairs)["PrintLabel"].endswith(".jpg") and "MergeField" not in dict(pairs)
    wrong = PrimeraPublisher({**r2, "label_template": "C:\\Designs\\epson.tdd"}, tmp_path / "img")
    with pytest.raises(ValueError, match="SureThing .STD"):
        wrong.submit(publish.PublishRequest(job_id="J32", discs=[disc(tmp_path)]))
    assert not (Path(r2["spool"]) / "J32.JRQ").exists()


def test_data_image_type_with_options():
    for good in ("UDF", "ISOLEVEL2+JOLIET, SETNOW", "JOLIET,MODE2,SAO", "UDF260"):
        assert jrq.check_data_image_type(good) == good
    for bad in ("NTFS", "UDF, FAST", "JOLIET+UDF"):
        with pytest.raises(ValueError):
            jrq.check_data_image_type(bad)
