"""Robots end to end, dispatch and recovery: cancel reaches the robot, a station killed mid-burn
re-attaches and burns once, two robots share the jobs and a fault sends the retry to the other.

Same rig as tests/test_robots_e2e.py (station + `burnstation-sim` as its own process, at a slower
--speed so that discs are still burning when the test acts).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from support import burnstation, write_study
from test_robots_e2e import rig, wait_for

pytestmark = pytest.mark.station  # every test here starts a station process (tests/tiers.py)


def test_cancel_and_kill_while_burning(tmp_path: Path) -> None:
    """Cancel reaches the robot; a station killed (SIGKILL) mid-burn re-attaches and burns once."""
    with rig(tmp_path, speed="0.1") as r:
        seen: set[str] = set()
        cancelled = []
        for aet, robot in (("BURNSTATION_E", "epson"), ("BURNSTATION_P", "primera")):
            r.send(aet, write_study(tmp_path / f"c-{robot}", n_series=1, per_series=1))
            job = r.new_job(seen)
            seen.add(job["id"])
            cancelled.append((job["id"], robot))
        for job_id, _ in cancelled:  # each cancelled as soon as it burns (the other burns meanwhile)
            wait_for("burning", lambda j=job_id: r.job(j)["state"] == "burning", every=0.1)
            assert "cancel requested" in burnstation(r.data, "jobs", "cancel", job_id).stdout
        for job_id, robot in cancelled:
            assert r.final(job_id)["state"] == "cancelled"
            result = r.bin(robot) / job_id / "discs.json"  # the simulator's record of finished discs
            assert not result.exists() or all(d["result"] != "ok" for d in json.loads(result.read_text()))

        killed = []
        for aet, robot in (("BURNSTATION_E", "epson"), ("BURNSTATION_P", "primera")):
            r.send(aet, write_study(tmp_path / f"k-{robot}", n_series=1, per_series=2))
            job = r.new_job(seen)
            seen.add(job["id"])
            killed.append((job["id"], robot))
        for job_id, _ in killed:
            wait_for("burning", lambda j=job_id: r.job(j)["state"] == "burning")
        r.station.stop(sig=signal.SIGKILL)
        r.station.start()
        for job_id, robot in killed:
            done = r.final(job_id)
            assert done["state"] == "done" and done["attempts"] == 1 and done["robot"] == robot, done
        ext = {"epson": ("JDF", "DON"), "primera": ("JRQ", "DON")}
        for job_id, robot in killed:
            assert sorted(p.name for p in r.bin(robot).iterdir() if p.name.startswith(job_id)) == [job_id]
            assert [p.name for p in (r.bin(robot) / job_id).glob(f"*.{ext[robot][0]}")] == [f"{job_id}.{ext[robot][0]}"]
            spool_files = sorted(p.name for p in (r.spool / robot).rglob(f"{job_id}*") if p.is_file())
            assert spool_files == [f"{job_id}.{ext[robot][1]}"], spool_files  # one job file, staged copies gone


def test_two_robots_spread_jobs_and_a_fault_sends_the_retry_to_the_other(tmp_path: Path) -> None:
    with rig(tmp_path, roles={"epson": "any", "primera": "any"}) as r:
        # both robots hold their jobs (input stacker empty), so the jobs are in flight together and
        # each new one goes to the least busy robot
        for robot in ("epson", "primera"):
            r.ctl(robot, "fault", "input_empty", "on")
        seen: set[str] = set()
        for i in range(3):
            r.send("BURNSTATION_E", write_study(tmp_path / f"s{i}", n_series=1, per_series=1, patient_id=f"S{i}"))
            job = r.new_job(seen)
            seen.add(job["id"])
            wait_for("the job in a robot", lambda j=job["id"]: r.job(j)["state"] in ("submitted", "burning"))
        held = {j: r.job(j)["robot"] for j in seen}
        assert sorted(held.values()) == ["epson", "epson", "primera"], held
        for robot in ("epson", "primera"):
            r.ctl(robot, "fault", "input_empty", "off")
            r.ctl(robot, "refill")
        robots_used = {}
        for job_id in seen:
            done = r.final(job_id)
            assert done["state"] == "done", done
            robots_used[job_id] = done["robot"]
        assert robots_used == held, robots_used
        for job_id, robot in robots_used.items():
            assert (r.bin(robot) / job_id).is_dir()

        r.ctl("epson", "fault", "write_error", "1", "on")
        r.ctl("primera", "fault", "write_error", "1", "on")
        r.send("BURNSTATION_E", write_study(tmp_path / "f", n_series=1, per_series=1, patient_id="F1"))
        bad = r.new_job(seen)
        failed = r.final(bad["id"])
        assert failed["state"] == "failed", failed
        first = failed["robot"]
        other = {"epson": "primera", "primera": "epson"}[first]
        r.ctl(other, "fault", "write_error", "1", "off")
        burnstation(r.data, "jobs", "retry", bad["id"])
        again = r.final(bad["id"])
        assert again["state"] == "done" and again["robot"] == other, again
        assert (r.bin(other) / f"{bad['id']}-2").is_dir()


def test_an_engine_that_stops_reporting_takes_its_robot_offline(tmp_path: Path) -> None:
    """`fault offline`: the engine stops rewriting its status; after `status_timeout` the robot is
    offline, a new job waits for it, and once the engine reports again the job is burned."""
    with rig(tmp_path, status_timeout=3) as r:
        for robot in ("epson", "primera"):
            r.ctl(robot, "fault", "offline", "on")

        def states() -> dict[str, str]:
            lines = burnstation(r.data, "robots", "list").stdout.splitlines()
            return {ln.split()[0]: ("online" if " online " in ln else "offline") for ln in lines
                    if ln.split()[:1] and ln.split()[0] in ("epson", "primera")}

        wait_for("both robots offline", lambda: states() == {"epson": "offline", "primera": "offline"}, 30)
        seen: set[str] = set()
        r.send("BURNSTATION_E", write_study(tmp_path / "o", n_series=1, per_series=1))
        job = r.new_job(seen)
        waiting = wait_for("the job to wait for a robot", lambda: (
            lambda j: j if j["state"] == "built" and "online" in j["message"] else None)(r.job(job["id"])))
        assert waiting["robot"] == ""
        r.ctl("epson", "fault", "offline", "off")
        done = r.final(job["id"])
        assert done["state"] == "done" and done["robot"] == "epson", done
        assert states()["primera"] == "offline"

