"""Epson TD Bridge driver, unit level: JDF building and validation, injection attempts, TDBStatus.txt
parsing (half-written too), the job lifecycle by file extension, cancel, restart, path mapping.

The engine's side is played by hand here (renaming files, writing the status file as robots.md
describes it); tests/test_robots_e2e.py runs the driver against the hardware simulator.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from appliance import publish
from drivers.epson import errors, jdf
from drivers.epson.publisher import EpsonPublisher
from drivers.epson.status import robot_state

INJECT = "DOE^JOHN\r\nDATA=/etc\nPRIORITY=HIGH"


def disc(tmp_path: Path, media: str = "CD", fs: str = "ISO9660+JOLIET", number: int = 1, count: int = 1,
         fields: dict | None = None, volume: str = "DOE_JOHN") -> publish.DiscImage:
    tree = tmp_path / f"tree{number}"
    tree.mkdir(exist_ok=True)
    (tree / "DICOMDIR").write_bytes(b"x")
    image = tmp_path / f"disc{number}.iso"
    image.write_bytes(b"\0" * 4096)
    return publish.DiscImage(image=image, tree=tree, media=media, filesystem=fs, volume_label=volume, size=4096,
                             label_fields=fields if fields is not None else {"patient_name": "DOE^JOHN",
                                                                               "patient_id": "P1"},
                             disc_number=number, disc_count=count)


def robot(tmp_path: Path, **kw: object) -> dict:
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    return {"name": "pp100", "driver": "epson", "role": "epson", "media": ["CD", "DVD"], "spool": str(spool),
            "engine_path": "", "mode": "image", "verify": True, "source": "manual", **kw}


def status_text(jobs: dict[str, dict[str, object]] | None = None, active: tuple[str, ...] = (),
                publisher: dict[str, object] | None = None) -> str:
    lines = ["[TDB_INFO]", "TDB_ID=TDB1", "VERSION=3.00", "", "[ACTIVE_JOB]"]
    lines += [f"JOB{i}={j}" for i, j in enumerate(active, 1)]
    lines += ["", "[COMPLETE_JOB]"]
    lines += [f"JOB{i}={j}" for i, j in enumerate([j for j in (jobs or {}) if j not in active], 1)]
    lines.append("")
    for job, keys in (jobs or {}).items():
        lines.append(f"[{job}]")
        lines += [f"{k}={v}" for k, v in keys.items()]
        lines.append("")
    pub = {"NAME": "PP100-01", "ID": "1", "STACKER1": 40, "STACKER1_SETTING": 1, "STACKER2": 20,
           "STACKER2_SETTING": 4, "STACKER3": 0, "STACKER3_SETTING": 0, "INK_C": 80, "INK_M": 7, "INK_Y": 60,
           "INK_LC": 50, "INK_LM": 50, "INK_B": 90, "DRIVE1_STATUS": "idle"}
    pub.update(publisher or {})
    lines.append("[PUBLISHER1]")
    lines += [f"{k}={v}" for k, v in pub.items()]
    return "\r\n".join(lines) + "\r\n"


def write_status(spool: Path, text: str) -> None:
    tmp = spool / "TDBStatus.tmp"
    tmp.write_text(text)
    tmp.replace(spool / "TDBStatus.txt")


def a_moment_later(path: Path) -> None:
    """Date the file a second ahead: rewritten after the poll that first saw the error, whatever the
    file system's timestamp resolution (the rule compares its mtime with that poll's time)."""
    later = time.time() + 1
    os.utime(path, (later, later))


def rename(spool: Path, stem: str, old: str, new: str) -> None:
    (spool / f"{stem}.{old}").rename(spool / f"{stem}.{new}")


# --------------------------------------------------------------------------- JDF builder


def test_jdf_image_mode_has_exactly_the_expected_keys():
    job = jdf.JdfJob(job_id="J1", disc_type="CD", format="JOLIET", copies=2, publisher="PP100-01",
                     image="/spool/jobfiles/J1/DISC.iso", volume_label="VOL", replace_field="/spool/J1_FIELDS.TXT")
    text = jdf.build_jdf(job)
    assert text.endswith("\r\n")
    assert jdf.parse_jdf(text) == [
        ("JOB_ID", "J1"), ("PUBLISHER", "PP100-01"), ("COPIES", "2"), ("DISC_TYPE", "CD"), ("FORMAT", "JOLIET"),
        ("COMPARE", "YES"), ("CLOSE_DISC", "YES"), ("IMAGE", "/spool/jobfiles/J1/DISC.iso"),
        ("VOLUME_LABEL", "VOL"), ("REPLACE_FIELD", "/spool/J1_FIELDS.TXT"),
    ]


def test_jdf_data_mode_priority_and_label():
    job = jdf.JdfJob(job_id="J2", disc_type="DVD", format="UDF102", compare=False, data=[("Z:\\a\\DISC", "\\")],
                     label="C:\\labels\\pdi.tdd", high_priority=True)
    pairs = jdf.parse_jdf(jdf.build_jdf(job))
    assert ("DATA", "Z:\\a\\DISC\t\\") in pairs and ("COMPARE", "NO") in pairs
    assert ("LABEL", "C:\\labels\\pdi.tdd") in pairs and pairs[-1] == ("PRIORITY", "HIGH")
    assert not any(k == "IMAGE" for k, _ in pairs)


@pytest.mark.parametrize("disc_type, fmt", [("CD", "UDF150"), ("CD", "UDF260"), ("DVD", "JOLIET"),
                                            ("DVD", "ISO9660L2"), ("BD", "UDF150"), ("BD-DL", "JOLIET"),
                                            ("HDDVD", "UDF102")])
def test_invalid_disc_type_format_pairs_are_refused(disc_type, fmt):
    with pytest.raises(ValueError, match="FORMAT|DISC_TYPE"):
        jdf.validate_format(disc_type, fmt)


@pytest.mark.parametrize("disc_type, fmt", [("CD", "ISO9660L2"), ("CD", "JOLIET"), ("CD", "UDF102"),
                                            ("DVD", "UDF102"), ("DVD", "UDF102_BRIDGE"), ("DVD", "UDF150"),
                                            ("DVD-DL", "UDF150"), ("BD", "UDF102"), ("BD", "UDF260"),
                                            ("BD-DL", "UDF260")])
def test_valid_pairs(disc_type, fmt):
    jdf.validate_format(disc_type, fmt)


def test_choose_format_always_gives_a_valid_pair():
    for media in jdf.DISC_TYPES:
        for fs in ("ISO9660+JOLIET", "UDF", "", "ISO9660"):
            jdf.validate_format(media, jdf.choose_format(media, fs))


def test_jdf_refuses_bad_jobs():
    base = dict(job_id="J1", disc_type="CD", format="JOLIET", image="/x.iso")
    with pytest.raises(ValueError, match="COPIES"):
        jdf.build_jdf(jdf.JdfJob(**base, copies=1001))
    with pytest.raises(ValueError, match="JOB_ID"):
        jdf.build_jdf(jdf.JdfJob(**dict(base, job_id="J1\nDATA=/etc")))
    with pytest.raises(ValueError, match="IMAGE or DATA"):
        jdf.build_jdf(jdf.JdfJob(**dict(base, image="")))
    with pytest.raises(ValueError, match="line break"):
        jdf.build_jdf(jdf.JdfJob(**dict(base, image="/x\nDATA=/etc")))
    with pytest.raises(ValueError, match="refuses names ending"):
        jdf.build_jdf(jdf.JdfJob(**dict(base, image="", data=[("/spool/OLD.JDF", "/")])))


def test_untrusted_values_cannot_add_a_key():
    job = jdf.JdfJob(job_id="J1", disc_type="CD", format="JOLIET", image="/x.iso", publisher=INJECT,
                     volume_label=INJECT)
    pairs = jdf.parse_jdf(jdf.build_jdf(job))
    keys = [k for k, _ in pairs]
    assert keys == ["JOB_ID", "PUBLISHER", "COPIES", "DISC_TYPE", "FORMAT", "COMPARE", "CLOSE_DISC", "IMAGE",
                    "VOLUME_LABEL"]
    assert dict(pairs)["VOLUME_LABEL"] == "DOE^JOHN DATA /etc PRIORITY HIGH"  # harmless, and ≤ 32 characters
    merge = jdf.build_merge_file({"patient_name": INJECT, "bad\nkey=": "v", "long": "y" * 5000})
    lines = merge.split("\r\n")[:-1]
    assert [ln.split("=", 1)[0] for ln in lines] == ["patient_name", "bad_key", "long"]
    assert all(ln.count("=") == 1 and len(ln) <= 1024 for ln in lines)


def test_merge_file_limits():
    merge = jdf.build_merge_file({f"F{i}": str(i) for i in range(300)})
    assert merge.count("\r\n") == 255


# --------------------------------------------------------------------------- errors


def test_error_codes_in_clear_text():
    assert "duplicate job id" in errors.describe("JDF0100")
    assert "no robot registered" in errors.describe("JDF0203")
    assert "too large" in errors.describe("JDF0903")
    for code in ("JDF1400", "JDF1401", "JDF1402"):
        assert "FORMAT" in errors.describe(code)
    assert "label design file" in errors.describe("JDF1501")
    assert "merge file" in errors.describe("JDF1600")
    assert "FORMAT" in errors.describe("JDF1455")  # the range names the key
    assert "JDF2900" in errors.describe("JDF2900")
    assert "disk space" in errors.describe("SYS003")
    assert "cancelled" in errors.describe("CAN007") and "cancelled" in errors.describe("CAN103")
    assert "write retries" in errors.describe("STP001")
    assert "input stacker empty" in errors.describe("RTN000")
    assert "output stacker full" in errors.describe("RTN001")
    assert "cover open" in errors.describe("RTN002")
    assert errors.describe("") == "" and "XYZ" in errors.describe("XYZ")
    assert errors.is_recoverable("RTN000") and errors.is_recoverable("STP002")
    assert not errors.is_recoverable("CAN001") and not errors.is_recoverable("JDF0903")


# --------------------------------------------------------------------------- status


def test_robot_state_from_status_file(tmp_path):
    from drivers.common import parse_ini

    sections, complete, _ = parse_ini(status_text())
    assert complete
    st = robot_state(sections)
    assert st.found and st.publisher_name == "PP100-01"
    assert st.media == ["CD", "DVD"]
    assert st.stackers["stacker1"] == {"level": 40, "setting": 1, "holds": "CD"}
    assert st.stackers["stacker3"]["holds"] == "output"
    assert st.ink["magenta"] == 7 and st.ink["black"] == 90
    assert "ink low: magenta 7%" in st.faults
    assert st.drives == [{"drive": 1, "status": "idle"}]
    assert not robot_state(sections, "OTHER").found


def test_status_online_offline_and_half_written(tmp_path):
    r = robot(tmp_path)
    spool = Path(r["spool"])
    pub = EpsonPublisher(r, tmp_path)
    assert not pub.status().online
    write_status(spool, status_text())
    st = pub.status()
    assert st.online and st.media == ["CD", "DVD"] and st.ink["cyan"] == 80
    # caught half-written: the last good values, still online, never a crash
    full = status_text(publisher={"INK_C": 70})
    (spool / "TDBStatus.txt").write_text(full[: len(full) // 2])
    st = pub.status()
    assert st.online and st.ink["cyan"] == 80 and "half-written" in st.message
    (spool / "TDBStatus.txt").write_text("")
    assert pub.status().ink["cyan"] == 80
    write_status(spool, full)
    assert pub.status().ink["cyan"] == 70
    # the engine stopped rewriting it
    old = time.time() - 600
    os.utime(spool / "TDBStatus.txt", (old, old))
    st = pub.status()
    assert not st.online and "not updated" in st.message


# --------------------------------------------------------------------------- lifecycle


def test_submit_poll_lifecycle(tmp_path):
    r = robot(tmp_path, label_template="C:\\Designs\\burnstation.tdd")
    spool = Path(r["spool"])
    write_status(spool, status_text())
    pub = EpsonPublisher(r, tmp_path)
    assert pub.poll("J1").state == publish.UNKNOWN
    pub.submit(publish.PublishRequest(job_id="J1", discs=[disc(tmp_path)], copies=2))
    pairs = jdf.parse_jdf((spool / "J1.JDF").read_bytes().decode())
    d = dict(pairs)
    assert [k for k, _ in pairs] == ["JOB_ID", "PUBLISHER", "COPIES", "DISC_TYPE", "FORMAT", "COMPARE",
                                     "CLOSE_DISC", "IMAGE", "VOLUME_LABEL", "LABEL", "REPLACE_FIELD"]
    assert d["JOB_ID"] == "J1" and d["PUBLISHER"] == "PP100-01" and d["COPIES"] == "2"
    assert Path(d["IMAGE"]).read_bytes() == b"\0" * 4096 and Path(d["IMAGE"]).is_relative_to(spool)
    assert Path(d["REPLACE_FIELD"]).read_bytes().decode() == "patient_name=DOE^JOHN\r\npatient_id=P1\r\n"
    assert pub.poll("J1").state == publish.WAITING
    # submitting again (a restarted driver) never makes a second job
    pub.submit(publish.PublishRequest(job_id="J1", discs=[disc(tmp_path)], copies=2))
    assert sorted(p.name for p in spool.glob("J1*.JDF")) == ["J1.JDF"]

    rename(spool, "J1", "JDF", "RJD")
    assert pub.poll("J1").state == publish.BURNING
    rename(spool, "J1", "RJD", "INP")
    write_status(spool, status_text({"J1": {"STATUS": 2, "PUBLICATION_NUMBER": 2, "COMPLETION_NUMBER": 1,
                                            "ERRORDISC_NUMBER": 0}}, active=("J1",)))
    p = pub.poll("J1")
    assert p.state == publish.BURNING and p.progress == 0.5 and p.discs_done == 1
    # input stacker empty: the job waits with the robot's words
    write_status(spool, status_text({"J1": {"STATUS": 3, "PUBLICATION_NUMBER": 2, "COMPLETION_NUMBER": 1,
                                            "ERRORDISC_NUMBER": 0, "ERROR": "RTN000"}}, active=("J1",)))
    p = pub.poll("J1")
    assert p.state == publish.WAITING and "input stacker empty" in p.message and p.error_code == "RTN000"
    assert any("input stacker empty" in f for f in pub.status().faults)
    rename(spool, "J1", "INP", "STP")
    assert pub.poll("J1").state == publish.WAITING
    rename(spool, "J1", "STP", "INP")
    # finished, and moved to the log folder by the engine: found there, and by a new driver instance
    write_status(spool, status_text({"J1": {"STATUS": 4, "PUBLICATION_NUMBER": 2, "COMPLETION_NUMBER": 2}}))
    log_dir = spool / "log" / "20240101" / "1200"
    log_dir.mkdir(parents=True)
    (spool / "J1.INP").rename(log_dir / "J1.DON")
    p = EpsonPublisher(r, tmp_path).poll("J1")
    assert p.state == publish.DONE and p.progress == 1.0 and p.discs_done == 2
    assert not (spool / "jobfiles" / "J1").exists()  # staged copies dropped once done
    # and with the files gone, the status section still tells
    (log_dir / "J1.DON").unlink()
    assert EpsonPublisher(r, tmp_path).poll("J1").state == publish.DONE


def test_error_then_retry_on_the_same_robot(tmp_path):
    r = robot(tmp_path)
    spool = Path(r["spool"])
    write_status(spool, status_text())
    pub = EpsonPublisher(r, tmp_path)
    req = publish.PublishRequest(job_id="J5", discs=[disc(tmp_path)])
    pub.submit(req)
    rename(spool, "J5", "JDF", "ERR")
    write_status(spool, status_text({"J5": {"STATUS": 5, "ERROR": "CAN003", "ERRORDISC_NUMBER": 1}}))
    p = pub.poll("J5")
    assert p.state == publish.FAILED and p.error_code == "CAN003" and "device fault" in p.message
    assert p.discs_failed == 1
    pub.submit(req)  # retry under the same id: a new robot job, never a duplicate JOB_ID
    assert (spool / "J5-R2.JDF").exists()
    assert dict(jdf.parse_jdf((spool / "J5-R2.JDF").read_bytes().decode()))["JOB_ID"] == "J5-R2"
    assert pub.poll("J5").state == publish.WAITING  # the latest attempt counts
    rename(spool, "J5-R2", "JDF", "DON")
    assert pub.poll("J5").state == publish.DONE


def test_cancel(tmp_path):
    r = robot(tmp_path)
    spool = Path(r["spool"])
    write_status(spool, status_text())
    pub = EpsonPublisher(r, tmp_path)
    assert pub.cancel("J7") is False  # unknown job
    pub.submit(publish.PublishRequest(job_id="J7", discs=[disc(tmp_path)]))
    rename(spool, "J7", "JDF", "INP")
    assert pub.cancel("J7") is True
    assert (spool / "J7.JCF").read_bytes().decode() == "[CANCEL]\r\nJOB_ID=J7\r\n"
    rename(spool, "J7", "JCF", "CER")
    p = pub.poll("J7")
    assert p.state == publish.BURNING and "could not cancel" in p.message
    (spool / "J7.CER").rename(spool / "J7.CDN")
    assert pub.poll("J7").state == publish.CANCELLED
    assert pub.cancel("J7") is False  # nothing left to cancel


def test_multi_disc_job(tmp_path):
    r = robot(tmp_path)
    spool = Path(r["spool"])
    write_status(spool, status_text())
    pub = EpsonPublisher(r, tmp_path)
    req = publish.PublishRequest(job_id="J9", discs=[disc(tmp_path, number=1, count=2),
                                                     disc(tmp_path, number=2, count=2)])
    pub.submit(req)
    assert sorted(p.name for p in spool.glob("*.JDF")) == ["J9-D1of2.JDF", "J9-D2of2.JDF"]
    rename(spool, "J9-D1of2", "JDF", "DON")
    rename(spool, "J9-D2of2", "JDF", "INP")
    p = pub.poll("J9")
    assert p.state == publish.BURNING and p.progress == 0.5
    rename(spool, "J9-D2of2", "INP", "ERR")
    p = pub.poll("J9")  # .ERR before the status file says why: held back a moment
    assert p.state == publish.BURNING and "waiting for the engine's report" in p.message
    write_status(spool, status_text({"J9-D2of2": {"STATUS": 5, "ERROR": "JDF0903"}}))
    a_moment_later(spool / "TDBStatus.txt")
    p = pub.poll("J9")
    assert p.state == publish.FAILED and p.message.startswith("disc 2 of 2") and "too large" in p.message
    pub.submit(req)  # the retry redoes only the failed disc
    assert sorted(p.name for p in spool.glob("*.JDF")) == ["J9-D2of2-R2.JDF"]
    rename(spool, "J9-D2of2-R2", "JDF", "DON")
    assert pub.poll("J9").state == publish.DONE


def test_a_half_submitted_job_is_unknown_and_completed_by_submit(tmp_path):
    """The station died between the discs of one job: poll says UNKNOWN, submit adds what is missing."""
    r = robot(tmp_path)
    spool = Path(r["spool"])
    write_status(spool, status_text())
    pub = EpsonPublisher(r, tmp_path)
    req = publish.PublishRequest(job_id="J3", discs=[disc(tmp_path, number=1, count=2),
                                                     disc(tmp_path, number=2, count=2)])
    pub.submit(req)
    (spool / "J3-D2of2.JDF").unlink()
    rename(spool, "J3-D1of2", "JDF", "INP")
    assert pub.poll("J3").state == publish.UNKNOWN
    pub.submit(req)
    assert sorted(p.name for p in spool.glob("J3*") if p.suffix != ".TXT") == ["J3-D1of2.INP", "J3-D2of2-R2.JDF"]
    assert pub.poll("J3").state == publish.BURNING


def test_invalid_combination_writes_nothing(tmp_path):
    r = robot(tmp_path, format="UDF260")
    spool = Path(r["spool"])
    pub = EpsonPublisher(r, tmp_path)
    with pytest.raises(ValueError, match="not valid for DISC_TYPE CD"):
        pub.submit(publish.PublishRequest(job_id="J4", discs=[disc(tmp_path)]))
    assert not list(spool.glob("J4*")) and not (spool / "jobfiles").exists()


def test_injection_through_the_publisher(tmp_path):
    r = robot(tmp_path, label_template="C:\\Designs\\burnstation.tdd")
    spool = Path(r["spool"])
    write_status(spool, status_text())
    pub = EpsonPublisher(r, tmp_path)
    fields = {"patient_name": INJECT, "patient_id": "P1\nJOB_ID=EVIL", "x\ny=": "z"}
    pub.submit(publish.PublishRequest(job_id="J6", discs=[disc(tmp_path, fields=fields, volume=INJECT)]))
    pairs = jdf.parse_jdf((spool / "J6.JDF").read_bytes().decode())
    keys = [k for k, _ in pairs]
    assert keys.count("JOB_ID") == 1 and "DATA" not in keys and "PRIORITY" not in keys
    merge = Path(dict(pairs)["REPLACE_FIELD"]).read_bytes().decode().split("\r\n")[:-1]
    assert [ln.split("=", 1)[0] for ln in merge] == ["patient_name", "patient_id", "x_y"]
    assert all(ln.count("=") == 1 for ln in merge)


@pytest.mark.parametrize("engine_path, image", [
    ("Z:\\Order", "Z:\\Order\\jobfiles\\J8\\DISC.iso"),
    ("\\\\tdbhost\\Order", "\\\\tdbhost\\Order\\jobfiles\\J8\\DISC.iso"),
    ("/mnt/tdb/Order", "/mnt/tdb/Order/jobfiles/J8/DISC.iso"),
])
def test_engine_path_mapping(tmp_path, engine_path, image):
    r = robot(tmp_path, engine_path=engine_path, label_template="C:\\Designs\\burnstation.tdd")
    spool = Path(r["spool"])
    write_status(spool, status_text())
    EpsonPublisher(r, tmp_path).submit(publish.PublishRequest(job_id="J8", discs=[disc(tmp_path)]))
    d = dict(jdf.parse_jdf((spool / "J8.JDF").read_bytes().decode()))
    assert d["IMAGE"] == image
    sep = image[len(engine_path)]
    assert d["REPLACE_FIELD"] == engine_path + sep + "J8_FIELDS.TXT"
    # the engine can read what the path names (staged inside the spool)
    assert (spool / "jobfiles" / "J8" / "DISC.iso").read_bytes() == b"\0" * 4096


def test_data_mode(tmp_path):
    r = robot(tmp_path, mode="data", engine_path="Z:\\Order")
    spool = Path(r["spool"])
    write_status(spool, status_text())
    EpsonPublisher(r, tmp_path).submit(publish.PublishRequest(job_id="J10", discs=[disc(tmp_path, media="DVD",
                                                                                        fs="UDF")]))
    pairs = jdf.parse_jdf((spool / "J10.JDF").read_bytes().decode())
    d = dict(pairs)
    # the disc root: DATA=<source> alone, without the TAB and destination (TD Bridge manual)
    assert d["DATA"] == "Z:\\Order\\jobfiles\\J10\\DISC" and "IMAGE" not in d
    assert d["DISC_TYPE"] == "DVD" and d["FORMAT"] == "UDF102"
    assert (spool / "jobfiles" / "J10" / "DISC" / "DICOMDIR").exists()


def test_an_unexplained_error_fails_after_the_status_file_moved_on(tmp_path):
    r = robot(tmp_path)
    spool = Path(r["spool"])
    write_status(spool, status_text())
    pub = EpsonPublisher(r, tmp_path)
    pub.submit(publish.PublishRequest(job_id="J11", discs=[disc(tmp_path)]))
    rename(spool, "J11", "JDF", "ERR")
    assert pub.poll("J11").state == publish.BURNING
    write_status(spool, status_text())  # rewritten, and still no word about J11
    a_moment_later(spool / "TDBStatus.txt")
    p = pub.poll("J11")
    assert p.state == publish.FAILED and "no code" in p.message


def test_driver_options_from_the_robot_config(tmp_path):
    """`label_template`, `publisher` and `format` survive the robot configuration's checks and reach the JDF."""
    from appliance.burn.robots import validate_robot

    doc = validate_robot(robot(tmp_path, label_template="C:\\labels\\pdi.tdd", publisher="PP100-02",
                               format="UDF102", status_timeout=0))
    spool = Path(doc["spool"])
    write_status(spool, status_text())
    EpsonPublisher(doc, tmp_path).submit(publish.PublishRequest(job_id="J12", discs=[disc(tmp_path)]))
    d = dict(jdf.parse_jdf((spool / "J12.JDF").read_bytes().decode()))
    assert d["LABEL"] == "C:\\labels\\pdi.tdd" and d["PUBLISHER"] == "PP100-02" and d["FORMAT"] == "UDF102"
    old = time.time() - 600
    os.utime(spool / "TDBStatus.txt", (old, old))
    st = EpsonPublisher(doc, tmp_path).status()  # status_timeout 0: age never makes it offline
    assert "PP100-02" in st.message and not st.online  # but a publisher name TD Bridge does not know does


def test_an_old_job_of_the_same_id_is_not_taken_for_ours(tmp_path):
    """A re-initialised station numbers its jobs from 1 again; TD Bridge still has J1.DON from before."""
    r = robot(tmp_path)
    spool = Path(r["spool"])
    log_dir = spool / "log" / "20240101" / "1200"
    log_dir.mkdir(parents=True)
    (log_dir / "J1.DON").write_text("JOB_ID=J1\r\n")
    write_status(spool, status_text({"J1": {"STATUS": 4, "PUBLICATION_NUMBER": 1, "COMPLETION_NUMBER": 1}}))
    pub = EpsonPublisher(r, tmp_path / "fresh-data")
    assert pub.poll("J1").state == publish.UNKNOWN  # not ours
    pub.submit(publish.PublishRequest(job_id="J1", discs=[disc(tmp_path)]))
    assert (spool / "J1-R2.JDF").exists() and not (spool / "J1.JDF").exists()  # burned, under a new id
    assert pub.poll("J1").state == publish.WAITING
    assert EpsonPublisher(r, tmp_path / "fresh-data").poll("J1").state == publish.WAITING  # after a restart too
    assert EpsonPublisher(r, None).poll("J1").state == publish.WAITING  # without a ledger: the latest attempt


# --------------------------------------------------------------------------- the manual's facts


@pytest.mark.parametrize("counts, state, words", [
    ({"PUBLICATION_NUMBER": 2, "COMPLETION_NUMBER": 2, "ERRORDISC_NUMBER": 0}, publish.DONE, "done"),
    ({"PUBLICATION_NUMBER": 3, "COMPLETION_NUMBER": 0, "ERRORDISC_NUMBER": 0}, publish.CANCELLED, "no disc made"),
    ({"PUBLICATION_NUMBER": 3, "COMPLETION_NUMBER": 1, "ERRORDISC_NUMBER": 1}, publish.CANCELLED,
     "1 of 3 discs made, 1 spoiled"),
])
def test_a_don_counts_only_with_its_discs(tmp_path, counts, state, words):
    """TD Bridge: a job cancelled at the robot also ends as .DON with STATUS 4, even with no disc."""
    r = robot(tmp_path, label_template="C:\\Designs\\burnstation.tdd")
    spool = Path(r["spool"])
    write_status(spool, status_text())
    pub = EpsonPublisher(r, tmp_path)
    pub.submit(publish.PublishRequest(job_id="J20", discs=[disc(tmp_path)]))
    rename(spool, "J20", "JDF", "DON")
    write_status(spool, status_text({"J20": {"STATUS": 4, "DETAIL_STATUS": 12, **counts}}))
    p = pub.poll("J20")
    assert p.state == state and words in p.message and p.discs_done == counts["COMPLETION_NUMBER"]
    (spool / "J20.DON").unlink()  # moved away: the status section alone says the same
    assert pub.poll("J20").state == state


def test_a_don_before_its_status_is_rewritten_is_not_a_cancel(tmp_path):
    """Found by the soak: TD Bridge renames J.JDF → J.DON before it rewrites TDBStatus.txt; a
    poll in between saw STATUS 2 with no disc counted and reported "cancelled at the robot: no
    disc made" for a disc that was burned. It waits for the status to agree instead."""
    r = robot(tmp_path, label_template="C:\\Designs\\burnstation.tdd")
    spool = Path(r["spool"])
    write_status(spool, status_text())
    pub = EpsonPublisher(r, tmp_path)
    pub.submit(publish.PublishRequest(job_id="J22", discs=[disc(tmp_path)]))
    rename(spool, "J22", "JDF", "DON")
    write_status(spool, status_text({"J22": {"STATUS": 2, "PUBLICATION_NUMBER": 1, "COMPLETION_NUMBER": 0}}))
    assert pub.poll("J22").state == publish.BURNING
    write_status(spool, status_text({"J22": {"STATUS": 4, "PUBLICATION_NUMBER": 1, "COMPLETION_NUMBER": 1}}))
    assert pub.poll("J22").state == publish.DONE


def test_manual_example_data_line_for_the_disc_root():
    """The manual: `DATA=<source>` for the disc root, `DATA=<source><TAB><destination>` otherwise."""
    job = jdf.JdfJob(job_id="J1", disc_type="CD", format="JOLIET",
                     data=[("C:\\Data\\Study", ""), ("C:\\Data\\Viewer", "VIEWER")])
    assert [v for k, v in jdf.parse_jdf(jdf.build_jdf(job)) if k == "DATA"] == [
        "C:\\Data\\Study", "C:\\Data\\Viewer\tVIEWER"]


def test_no_label_design_is_said_and_sends_no_merge_file(tmp_path):
    """TD Bridge prints only from a .tdd design: without one, status and every job say the disc
    will be unprinted, and no REPLACE_FIELD file is written for nothing."""
    r = robot(tmp_path)
    spool = Path(r["spool"])
    write_status(spool, status_text())
    pub = EpsonPublisher(r, tmp_path)
    assert "no label design: disc will be unprinted" in pub.status().message
    pub.submit(publish.PublishRequest(job_id="J21", discs=[disc(tmp_path)]))
    keys = [k for k, _ in jdf.parse_jdf((spool / "J21.JDF").read_bytes().decode())]
    assert "LABEL" not in keys and "REPLACE_FIELD" not in keys and not list(spool.glob("*FIELDS*"))
    assert "no label design: disc will be unprinted" in pub.poll("J21").message
    designed = EpsonPublisher({**r, "label_template": "C:\\Designs\\burnstation.tdd"}, tmp_path)
    assert "no label design" not in designed.status().message


def test_jdf_error_codes_of_the_manual():
    assert "not registered" in errors.describe("JDF0200")
    assert "no robot registered at all" in errors.describe("JDF0203")
    assert "DISC_TYPE" in errors.describe("JDF0501")
