"""The Epson TD Bridge simulator, driven only through its Order folder, TDBStatus.txt and ctl."""

from __future__ import annotations

import json

import pytest
from test_sim_support import Sim, make_iso, make_tree, read_ini, submit, wait_for


@pytest.fixture
def sim(tmp_path):
    with Sim(tmp_path, robots="epson") as s:
        yield s


def status(sim):
    return read_ini(sim.spool / "epson" / "TDBStatus.txt", "PUBLISHER1")


def job_status(sim, job_id):
    def get():
        st = status(sim)
        return st[job_id] if st.has_section(job_id) else None
    return wait_for(get, what=f"section [{job_id}]")


def test_happy_path_image_job(sim, tmp_path):
    order = sim.spool / "epson"
    iso = make_iso(tmp_path / "disc1.iso")
    merge = tmp_path / "fields.txt"
    merge.write_text("PATIENT=DOE^JOHN\nDATE=20240115\n")
    text = (f"# a comment line\nJOB_ID=job-1\nPUBLISHER=epson\nCOPIES=2\nDISC_TYPE=CD\nFORMAT=JOLIET\n"
            f"COMPARE=YES\nIMAGE={iso}\nVOLUME_LABEL=TESTDISC\nREPLACE_FIELD={merge}\n")
    before = status(sim)["PUBLISHER1"]
    submit(order, "job-1.JDF", text)
    done = sim.wait_ext(order, "job-1", "DON")
    assert not (order / "job-1.JDF").exists()
    st = wait_for(lambda: (s := status(sim)) and s["job-1"]["STATUS"] == "4" and s, what="STATUS 4")
    job = st["job-1"]
    assert (job["PUBLISHER"], job["PUBLICATION_NUMBER"], job["COMPLETION_NUMBER"], job["ERRORDISC_NUMBER"],
            job["ERROR"], job["DETAIL_STATUS"]) == ("epson", "2", "2", "0", "", "9")
    assert st["COMPLETE_JOB"]["JOB1"] == "job-1" and not dict(st["ACTIVE_JOB"])
    assert st["TDB_INFO"]["VERSION"]
    pub = st["PUBLISHER1"]
    assert int(pub["STACKER1"]) == int(before["STACKER1"]) - 2  # two CDs taken from stacker 1
    assert pub["STACKER1_SETTING"] == "1" and pub["STACKER2_SETTING"] == "4" and pub["STACKER3_SETTING"] == "0"
    assert int(pub["STACKER3"]) == 2
    assert all(int(pub[f"INK_{c}"]) == int(before[f"INK_{c}"]) - 2 for c in ("C", "M", "Y", "LC", "LM", "B"))
    # the output bin: the image, the merge file, the job file byte for byte, one entry per disc
    out = sim.root / "bin" / "epson" / "job-1"
    assert (out / "job-1.JDF").read_bytes() == text.encode()
    assert (out / "disc1.iso").read_bytes() == iso.read_bytes()
    assert (out / "label" / "fields.txt").read_text() == merge.read_text()
    assert [d["result"] for d in json.loads((out / "discs.json").read_text())] == ["ok", "ok"]
    assert done.read_text() == text  # the job file itself stays, renamed


def test_data_mode_and_defaults(sim, tmp_path):
    order = sim.spool / "epson"
    tree = make_tree(tmp_path / "tree")
    # no JOB_ID: the file name is the id; DATA copies a folder's contents to the destination
    # DATA=<source> alone for the disc root (no TAB, no destination), as the manual says
    submit(order, "datajob.JDF", f"DISC_TYPE=DVD\nFORMAT=UDF102\nDATA={tree}\nDATA={tree / 'DICOM'}\tEXTRA\n")
    sim.wait_ext(order, "datajob", "DON")
    disc = sim.root / "bin" / "epson" / "datajob" / "disc"
    assert (disc / "DICOMDIR").is_file() and (disc / "DICOM" / "IM1").is_file() and (disc / "EXTRA" / "IM1").is_file()
    st = status(sim)
    assert st["datajob"]["STATUS"] == "4" and int(st["PUBLISHER1"]["STACKER2"]) == 49  # a DVD


@pytest.mark.parametrize("body, code", [
    ("DISC_TYPE=CD\nFORMAT=UDF150\nIMAGE={iso}\n", "JDF1400"),
    ("DISC_TYPE=DVD\nFORMAT=JOLIET\nIMAGE={iso}\n", "JDF1401"),
    ("DISC_TYPE=BD\nFORMAT=UDF150\nIMAGE={iso}\n", "JDF1402"),
    ("DISC_TYPE=CD\nIMAGE={tmp}/missing.iso\n", "JDF1101"),
    ("DISC_TYPE=CD\nIMAGE={noddir}\n", "JDF1103"),
    ("DISC_TYPE=CD\nDATA={tmp}/nothing\n", "JDF0901"),
    ("DISC_TYPE=CD\nDATA={tmp}\t\n", "JDF0901"),  # the disc root is DATA=<source>, without the TAB
    ("DISC_TYPE=CD\n", "JDF0902"),
    ("DISC_TYPE=CD\nDATA={tmp}\t../outside\n", "JDF0901"),
    ("DISC_TYPE=CD\nIMAGE={iso}\nDATA=/etc\n", "JDF1102"),
    ("DISC_TYPE=CD\nIMAGE={iso}\nREPLACE_FIELD={tmp}/nofields.txt\n", "JDF1600"),
    ("DISC_TYPE=CD\nIMAGE={iso}\nLABEL={tmp}/nolabel.tdd\n", "JDF1501"),
    ("DISC_TYPE=CD\nIMAGE={iso}\nPUBLISHER=PP-100-OTHER\n", "JDF0200"),  # a robot is registered: not 0203
    ("IMAGE={iso}\n", "JDF0501"),  # DISC_TYPE is required
    ("\ufeffDISC_TYPE=CD\nIMAGE={iso}\n", "JDF0001"),  # a BOM is part of the first key
    ("DISC_TYPE=CD\nIMAGE={iso}\nCOPIES=0\n", "JDF0301"),
    ("DISC_TYPE=CD\nIMAGE={iso}\nCOPIES=1001\n", "JDF0301"),
    ("DISC_TYPE=CD\nIMAGE={iso}\nCOLOR=RED\n", "JDF0002"),
    ("DISC_TYPE=CD\nIMAGE={iso}\n COPIES=1\n", "JDF0001"),
    ("DISC_TYPE=CD\nIMAGE={iso}\nCOPIES =1\n", "JDF0001"),
    ("DISC_TYPE=CD\nIMAGE={iso}\ncopies=1\n", "JDF0001"),
    ("DISC_TYPE=CD\nIMAGE={iso}\nJOB_ID=has space\n", "JDF0101"),
    ("DISC_TYPE=CD\nIMAGE={iso}\nJOB_ID=" + "x" * 41 + "\n", "JDF0101"),
    ("DISC_TYPE=HDDVD\nIMAGE={iso}\n", "JDF0502"),
    ("DISC_TYPE=CD\nIMAGE={iso}\nOUT_STACKER=9\n", "JDF0601"),
])
def test_invalid_jobs_rejected_with_code(sim, tmp_path, body, code):
    order = sim.spool / "epson"
    iso = make_iso(tmp_path / "ok.iso")
    noddir = make_iso(tmp_path / "noddir.iso", dicomdir=False)
    submit(order, "bad.JDF", body.format(iso=iso, tmp=tmp_path, noddir=noddir))
    sim.wait_ext(order, "bad", "ERR")
    job = job_status(sim, "bad")
    assert (job["STATUS"], job["ERROR"], job["DETAIL_STATUS"]) == ("6", code, "14")
    assert not (sim.root / "bin" / "epson" / "bad").exists()  # nothing burned


def test_duplicate_job_id(sim, tmp_path):
    order = sim.spool / "epson"
    iso = make_iso(tmp_path / "d.iso")
    submit(order, "first.JDF", f"DISC_TYPE=CD\nJOB_ID=same\nIMAGE={iso}\n")
    sim.wait_ext(order, "first", "DON")
    submit(order, "second.JDF", f"DISC_TYPE=CD\nJOB_ID=same\nIMAGE={iso}\n")
    sim.wait_ext(order, "second", "ERR")
    st = status(sim)
    assert (st["second"]["STATUS"], st["second"]["ERROR"]) == ("6", "JDF0100")
    assert (st["same"]["STATUS"], st["same"]["ERROR"]) == ("4", "")  # the original is untouched


def test_input_empty_waits_then_refill_completes(sim, tmp_path):
    order = sim.spool / "epson"
    sim.ctl("epson", "fault", "input_empty", "on")
    submit(order, "wait1.JDF", f"DISC_TYPE=CD\nJOB_ID=wait1\nIMAGE={make_iso(tmp_path / 'w.iso')}\n")
    sim.wait_ext(order, "wait1", "INP")
    wait_for(lambda: status(sim)["wait1"]["ERROR"] == "RTN000", what="RTN000")
    st = status(sim)
    assert st["wait1"]["STATUS"] == "2" and st["PUBLISHER1"]["ERROR"] == "RTN000"
    assert st["ACTIVE_JOB"]["JOB1"] == "wait1"
    sim.ctl("epson", "refill")
    sim.wait_ext(order, "wait1", "DON")
    st = status(sim)
    assert st["wait1"]["ERROR"] == "" and st["PUBLISHER1"]["STACKER1"] == "49"


def test_stackers_run_out_and_refill_count(sim, tmp_path):
    order = sim.spool / "epson"
    sim.ctl("epson", "refill", "2")
    submit(order, "three.JDF", f"DISC_TYPE=CD\nCOPIES=3\nIMAGE={make_iso(tmp_path / 't.iso')}\n")
    wait_for(lambda: status(sim)["three"]["ERROR"] == "RTN000", what="stacker ran out")
    assert status(sim)["three"]["COMPLETION_NUMBER"] == "2"
    sim.ctl("epson", "refill", "5")
    sim.wait_ext(order, "three", "DON")
    assert status(sim)["PUBLISHER1"]["STACKER1"] == "4"


def test_write_error_on_disc_n(sim, tmp_path):
    order = sim.spool / "epson"
    sim.ctl("epson", "fault", "write_error", "2", "on")
    submit(order, "we.JDF", f"DISC_TYPE=CD\nJOB_ID=we\nCOPIES=3\nIMAGE={make_iso(tmp_path / 'we.iso')}\n")
    sim.wait_ext(order, "we", "ERR")
    job = job_status(sim, "we")
    assert (job["STATUS"], job["ERROR"], job["COMPLETION_NUMBER"], job["ERRORDISC_NUMBER"],
            job["DETAIL_STATUS"]) == ("5", "CAN006", "1", "1", "13")
    discs = json.loads((sim.root / "bin" / "epson" / "we" / "discs.json").read_text())
    assert [d["result"] for d in discs] == ["ok", "write error"]
    # the fault is spent: a retry under a new id succeeds
    assert sim.status("epson")["faults"]["write_error"] is False
    submit(order, "we2.JDF", f"DISC_TYPE=CD\nCOPIES=3\nIMAGE={make_iso(tmp_path / 'we2.iso')}\n")
    sim.wait_ext(order, "we2", "DON")


def test_cover_open_pauses_then_resumes(sim, tmp_path):
    order = sim.spool / "epson"
    sim.ctl("epson", "fault", "input_empty", "on")  # hold the job in the robot
    submit(order, "cov.JDF", f"DISC_TYPE=CD\nIMAGE={make_iso(tmp_path / 'c.iso')}\n")
    sim.wait_ext(order, "cov", "INP")
    sim.ctl("epson", "fault", "cover_open", "on")
    sim.wait_ext(order, "cov", "STP")
    wait_for(lambda: status(sim)["cov"]["STATUS"] == "3", what="STATUS 3")
    st = status(sim)
    assert st["cov"]["ERROR"] == "RTN002" and st["PUBLISHER1"]["ERROR"] == "RTN002"
    sim.ctl("epson", "refill")
    sim.ctl("epson", "status")  # a full round through the loop: still paused
    assert (order / "cov.STP").exists()
    sim.ctl("epson", "fault", "cover_open", "off")
    sim.wait_ext(order, "cov", "DON")
    assert status(sim)["cov"]["STATUS"] == "4"


def test_cancel_and_cancel_unknown(sim, tmp_path):
    order = sim.spool / "epson"
    sim.ctl("epson", "fault", "input_empty", "on")
    submit(order, "can.JDF", f"DISC_TYPE=CD\nJOB_ID=can\nIMAGE={make_iso(tmp_path / 'c.iso')}\n")
    sim.wait_ext(order, "can", "INP")
    submit(order, "stop-can.JCF", "[CANCEL]\r\nJOB_ID=can\r\n")
    sim.wait_ext(order, "stop-can", "CDN")
    sim.wait_ext(order, "can", "ERR")
    job = job_status(sim, "can")
    assert (job["STATUS"], job["DETAIL_STATUS"]) == ("5", "12")
    submit(order, "stop-none.JCF", "[CANCEL]\nJOB_ID=nosuchjob\n")
    sim.wait_ext(order, "stop-none", "CER")
    submit(order, "stop-again.JCF", "[CANCEL]\nJOB_ID=can\n")  # already finished
    sim.wait_ext(order, "stop-again", "CER")


def test_operator_cancel_at_the_robot_ends_as_don_with_status_4(sim, tmp_path):
    """TD Bridge: a job the operator cancels at the robot also ends as .DON with STATUS 4, even with
    no disc made; only COMPLETION_NUMBER against PUBLICATION_NUMBER tells."""
    order = sim.spool / "epson"
    sim.ctl("epson", "fault", "input_empty", "on")
    submit(order, "op.JDF", f"DISC_TYPE=CD\nJOB_ID=op\nCOPIES=2\nIMAGE={make_iso(tmp_path / 'o.iso')}\n")
    sim.wait_ext(order, "op", "INP")
    assert "cancelled by the operator" in sim.ctl("epson", "cancel", "op").stdout
    sim.wait_ext(order, "op", "DON")
    job = wait_for(lambda: (j := job_status(sim, "op")) and j["STATUS"] == "4" and j, what="STATUS 4")
    assert (job["PUBLICATION_NUMBER"], job["COMPLETION_NUMBER"], job["ERRORDISC_NUMBER"]) == ("2", "0", "0")
    again = sim.ctl("epson", "cancel", "op", check=False)  # finished: nothing to cancel
    assert again.returncode != 0 and "no active job" in again.stdout + again.stderr


def test_status_rewritten_in_place_and_ink_low(sim, tmp_path):
    path = sim.spool / "epson" / "TDBStatus.txt"
    inode = path.stat().st_ino
    first = path.stat().st_mtime_ns
    sim.ctl("epson", "fault", "ink_low", "on")
    wait_for(lambda: status(sim)["PUBLISHER1"]["ERROR"] == "RTN004", what="RTN004")
    assert int(status(sim)["PUBLISHER1"]["INK_C"]) <= 5
    wait_for(lambda: path.stat().st_mtime_ns != first, what="rewrite")
    submit(sim.spool / "epson", "ink.JDF", f"DISC_TYPE=CD\nIMAGE={make_iso(tmp_path / 'i.iso')}\n")  # still burns
    sim.wait_ext(sim.spool / "epson", "ink", "DON")
    sim.ctl("epson", "fault", "ink_low", "off")
    wait_for(lambda: status(sim)["PUBLISHER1"]["ERROR"] == "", what="ink ok")
    assert path.stat().st_ino == inode


def test_output_full_waits_until_emptied(sim, tmp_path):
    order = sim.spool / "epson"
    sim.ctl("epson", "fault", "output_full", "on")
    submit(order, "full.JDF", f"DISC_TYPE=CD\nIMAGE={make_iso(tmp_path / 'f.iso')}\n")
    wait_for(lambda: status(sim)["full"]["ERROR"] == "RTN001", what="RTN001")
    assert (order / "full.INP").exists() and status(sim)["full"]["COMPLETION_NUMBER"] == "0"
    sim.ctl("epson", "fault", "output_full", "off")  # the operator took the discs away
    sim.wait_ext(order, "full", "DON")


def test_timed_run_reports_progress_and_estimate(tmp_path):
    """At --speed 0.01 a disc takes about 0.7 s: the job is seen in progress with an estimate."""
    with Sim(tmp_path, robots="epson", speed="0.01") as sim:
        order = sim.spool / "epson"
        submit(order, "slow.JDF", f"DISC_TYPE=CD\nCOPIES=3\nIMAGE={make_iso(tmp_path / 's.iso')}\n")
        sim.wait_ext(order, "slow", "INP")
        running = wait_for(lambda: (j := status(sim)["slow"])["STATUS"] == "2" and j["DETAIL_STATUS"] in ("3", "4", "5", "6")
                           and int(j["ESTIMATION_TIME_REMAIN"]) > 0 and j, what="in progress")
        assert int(running["ESTIMATION_TIME_REMAIN"]) < 5
        sim.wait_ext(order, "slow", "DON", timeout=30)
        assert status(sim)["slow"]["COMPLETION_NUMBER"] == "3"


def test_job_file_written_in_place_is_not_read_half_written(sim, tmp_path):
    """Clients should rename job files in; one that writes in place, in pieces, is still read whole."""
    import time

    iso = make_iso(tmp_path / "p.iso")
    text = f"JOB_ID=piecewise\nCOPIES=2\nDISC_TYPE=CD\nFORMAT=JOLIET\nIMAGE={iso}\n".encode()
    with open(sim.spool / "epson" / "piecewise.JDF", "wb") as fh:
        for start in range(0, len(text), 12):
            fh.write(text[start:start + 12])
            fh.flush()
            time.sleep(0.06)  # slower than the engine's tick (50 ms at --speed 0)
    sim.wait_ext(sim.spool / "epson", "piecewise", "DON")
    assert (sim.root / "bin" / "epson" / "piecewise" / "piecewise.JDF").read_bytes() == text


def test_job_files_decoded_strictly_in_the_configured_code_page(tmp_path):
    """`--encoding epson=ascii`: a byte outside the code page rejects the job; cp1252 (the default)
    takes the same byte as Ü."""
    iso = make_iso(tmp_path / "e.iso")
    body = f"DISC_TYPE=CD\r\nIMAGE={iso}\r\nVOLUME_LABEL=M\xdcLLER\r\n".encode("cp1252")
    with Sim(tmp_path / "a", robots="epson", extra=("--encoding", "epson=ascii")) as s:
        submit(s.spool / "epson", "asc.JDF", body)
        s.wait_ext(s.spool / "epson", "asc", "ERR")
        assert read_ini(s.spool / "epson" / "TDBStatus.txt", "asc")["asc"]["ERROR"] == "JDF0001"
    with Sim(tmp_path / "b", robots="epson") as s:
        submit(s.spool / "epson", "ansi.JDF", body)
        s.wait_ext(s.spool / "epson", "ansi", "DON")
