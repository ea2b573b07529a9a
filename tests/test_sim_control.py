"""Simulator-wide behaviour: device announcements, plug/unplug, offline, ctl, --faults, exit."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from test_sim_support import REPO, Sim, make_iso, parse_ini, read_ini, submit, wait_for


def test_announcements_plug_unplug_and_clean_exit(tmp_path):
    sim = Sim(tmp_path).start()  # default: one Epson and one Primera robot
    try:
        epson, primera = sim.device("epson"), sim.device("primera")
        assert set(epson) == {"name", "kind", "vendor_id", "product_id", "vendor", "model", "serial", "spool"}
        assert (epson["kind"], epson["vendor_id"], epson["model"]) == ("epson", "04b8", "PP-100II")
        assert (primera["kind"], primera["model"]) == ("primera", "Bravo 4100")
        assert epson["spool"] == str((sim.spool / "epson").resolve())
        assert (sim.spool / "epson" / "TDBStatus.txt").exists()
        assert (sim.spool / "primera" / "Status" / "SystemStatus.txt").exists()
        assert "output bin" in sim.output()  # where things are is printed at start

        status_file = sim.spool / "epson" / "TDBStatus.txt"
        assert sim.ctl("epson", "unplug").returncode == 0
        assert sim.device("epson") is None and sim.device("primera") is not None
        assert sim.status("epson")["plugged"] is False
        stale = status_file.read_bytes()
        submit(sim.spool / "epson", "u.JDF", f"DISC_TYPE=CD\nIMAGE={make_iso(tmp_path / 'u.iso')}\n")
        sim.ctl("epson", "status")
        sim.ctl("epson", "status")  # two full rounds through the loop
        assert (sim.spool / "epson" / "u.JDF").exists()  # not picked up
        assert status_file.read_bytes() == stale  # not rewritten
        sim.ctl("epson", "plug")
        assert sim.device("epson")["serial"]
        sim.wait_ext(sim.spool / "epson", "u", "DON")
    finally:
        rc = sim.stop()
    assert rc == 0, sim.output()
    assert not list((sim.root / "devices").glob("*.json"))  # the simulator is gone, so are its devices


def test_offline_robot_stops_heartbeat_and_pickup(tmp_path):
    with Sim(tmp_path, robots="primera") as sim:
        status = sim.spool / "primera" / "Status" / "SystemStatus.txt"
        sim.ctl("primera", "fault", "offline", "on")
        tick = read_ini(status, "primera")["System"]["ServerTickCount"]
        submit(sim.spool / "primera", "O.JRQ", f"JobID=O\nImageFile={make_iso(tmp_path / 'o.iso')}\n")
        started = time.monotonic()
        sim.ctl("primera", "status")
        while time.monotonic() - started < 2.5:  # rounds through the loop for 2.5 s: online, the
            sim.ctl("primera", "status")         # heartbeat (1 tick = 1 s) would have moved by 2
        assert parse_ini(status, "primera")["System"]["ServerTickCount"] == tick
        assert (sim.spool / "primera" / "O.JRQ").exists()
        assert sim.status("primera")["online"] is False
        assert sim.device("primera") is not None  # still plugged in, just not answering
        sim.ctl("primera", "fault", "offline", "off")
        sim.wait_ext(sim.spool / "primera", "O", "DON")
        wait_for(lambda: int(read_ini(status, "primera")["System"]["ServerTickCount"]) > int(tick),
                 what="the heartbeat again")


def test_faults_at_start_and_ctl_status(tmp_path):
    with Sim(tmp_path, robots="epson:left,epson:right", faults="left:input_empty,right:write_error=1") as sim:
        state = sim.status("left")
        assert state["faults"]["input_empty"] is True and state["kind"] == "epson"
        assert sim.status("right")["write_error_at"] == 1
        order = sim.spool / "right"
        submit(order, "r.JDF", f"DISC_TYPE=CD\nPUBLISHER=right\nIMAGE={make_iso(tmp_path / 'r.iso')}\n")
        sim.wait_ext(order, "r", "ERR")
        jobs = sim.status("right")["jobs"]
        assert jobs["r"]["state"] == "failed" and jobs["r"]["error"] == "CAN006"
        st = read_ini(order / "TDBStatus.txt", "PUBLISHER1")
        assert st["PUBLISHER1"]["NAME"] == "right"


def test_ctl_errors(tmp_path):
    with Sim(tmp_path, robots="epson") as sim:
        bad = sim.ctl("epson", "fault", "melted", "on", check=False, process=True)  # the real command's status
        assert bad.returncode == 1 and "fault" in bad.stderr
        nobody = sim.ctl("nosuch", "status", check=False)
        assert nobody.returncode == 1 and "no robot named" in nobody.stderr
        assert sim.ctl("epson", "refill", "x", check=False).returncode == 1
        # a plain-text command file dropped by hand works too
        (sim.root / "control" / ".hand.tmp").write_text("epson fault cover_open on\n")
        (sim.root / "control" / ".hand.tmp").rename(sim.root / "control" / "hand.cmd")
        reply = wait_for(lambda: json.loads((sim.root / "control" / "hand.reply").read_text()), what="reply")
        assert reply["ok"] is True and sim.status("epson")["faults"]["cover_open"] is True
    no_sim = subprocess.run([sys.executable, "-m", "burnstation_sim", "ctl", "--root", str(tmp_path / "none"),
                             "epson", "status"], capture_output=True, text=True, cwd=REPO)
    assert no_sim.returncode == 1 and "is burnstation-sim running" in no_sim.stderr


def test_bad_arguments_exit_2(tmp_path):
    for args in (["--robots", "rimage"], ["--faults", "epson:melted"], ["--speed", "-1"]):
        result = subprocess.run([sys.executable, "-m", "burnstation_sim", "--spool", str(tmp_path / "s"),
                                 "--root", str(tmp_path / "r"), *args], capture_output=True, text=True, cwd=REPO,
                                timeout=30)
        assert result.returncode == 2 and "burnstation-sim:" in result.stderr


def test_path_map_reads_paths_as_the_engine_host_sees_them(tmp_path):
    share = tmp_path / "share"
    (share / "images").mkdir(parents=True)
    make_iso(share / "images" / "disc.iso")
    with Sim(tmp_path, robots="epson,primera", extra=("--path-map", f"Z:\\burn={share}")) as sim:
        submit(sim.spool / "epson", "m.JDF", "DISC_TYPE=CD\nIMAGE=Z:\\burn\\images\\disc.iso\n")
        submit(sim.spool / "primera", "m.JRQ", "ImageFile=z:\\burn\\images\\disc.iso\n")
        sim.wait_ext(sim.spool / "epson", "m", "DON")
        sim.wait_ext(sim.spool / "primera", "m", "DON")
        assert (sim.root / "bin" / "epson" / "m" / "disc.iso").is_file()


def test_restart_keeps_history_and_finishes_a_job_once(tmp_path):
    """The simulator is killed while a job is in the robot: after a restart the job is taken up
    again, makes only the discs still missing, and the finished jobs and stacker levels remain."""
    iso = make_iso(tmp_path / "r.iso")
    sim = Sim(tmp_path, robots="epson").start()
    order = sim.spool / "epson"
    submit(order, "before.JDF", f"DISC_TYPE=CD\nIMAGE={iso}\n")
    sim.wait_ext(order, "before", "DON")
    sim.ctl("epson", "refill", "2")
    submit(order, "cut.JDF", f"DISC_TYPE=CD\nCOPIES=3\nIMAGE={iso}\n")
    wait_for(lambda: sim.status("epson")["jobs"]["cut"]["waiting"] == "input_empty", what="stacker ran out")
    sim.proc.kill()  # no clean exit
    sim.proc.wait()
    sim._log.close()
    assert (order / "cut.INP").exists()

    again = Sim(tmp_path, robots="epson")
    again.log = tmp_path / "sim2.log"
    with again:
        state = again.status("epson")
        assert state["jobs"]["before"]["state"] == "done"
        assert state["jobs"]["cut"]["good"] == 2 and state["stackers"][0]["count"] == 0
        again.ctl("epson", "refill")
        again.wait_ext(order, "cut", "DON")
        st = read_ini(order / "TDBStatus.txt", "PUBLISHER1")
        assert st["cut"]["COMPLETION_NUMBER"] == "3" and st["before"]["STATUS"] == "4"
        assert st["PUBLISHER1"]["STACKER1"] == "49"  # one more disc after the refill, not three
        discs = json.loads((again.root / "bin" / "epson" / "cut" / "discs.json").read_text())
        assert [d["disc"] for d in discs] == [1, 2, 3]
