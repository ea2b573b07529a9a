"""The burn pipeline end to end: storescu → routing by called AE title → job → disc → folder "robot".

A real station process (the supervisor with its burner and driver processes), dcmtk's storescu as
the sender, and the folder-export publisher as the robot (role epson). Every wait polls the CLI
with a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from support import Station, burnstation, dcmtk, write_study

TIMEOUT = 60.0


def wait_for(what: str, check: Callable[[], Any], timeout: float = TIMEOUT, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def queue(data: Path) -> dict[str, Any]:
    return json.loads(burnstation(data, "jobs", "list", "--json").stdout)


def job(data: Path, job_id: str) -> dict[str, Any]:
    return json.loads(burnstation(data, "jobs", "show", job_id, "--json").stdout)


def jobs_in(data: Path, *states: str) -> list[dict[str, Any]]:
    return [j for j in queue(data)["jobs"] if not states or j["state"] in states]


def send(station: Station, aet: str, files: list[Path]) -> None:
    result = dcmtk("storescu", "-aec", aet, "127.0.0.1", str(station.port), *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr


def wait_final(data: Path, job_id: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    return wait_for(f"job {job_id} to finish", lambda: (lambda j: j if j["state"] in ("done", "failed", "cancelled")
                                                         else None)(job(data, job_id)), timeout)


def burn_assoc_states(data: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(data / "state.db")) as conn:
        return [r[0] for r in conn.execute("SELECT state FROM burn_assocs ORDER BY assoc_id")]


def sop_uids(files: list[Path]) -> set[str]:
    return {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def disc_sops(disc_dir: Path) -> dict[str, bytes]:
    """SOP Instance UID → pixel data of every DICOM file under a disc's DICOM/ folder."""
    out = {}
    for path in (disc_dir / "DICOM").rglob("*"):
        if path.is_file():
            ds = dcmread(path)
            out[str(ds.SOPInstanceUID)] = ds.PixelData
    return out


@pytest.fixture
def usb(tmp_path: Path) -> Path:
    folder = tmp_path / "usb"
    folder.mkdir()
    return folder


def make_station(tmp_path: Path, usb: Path, copy_delay: float = 0.0, **settings: object) -> Station:
    data = tmp_path / "data"
    station = Station(data, burn__delay_seconds=settings.pop("delay", 3), **settings)
    extra = ["--copy-delay", str(copy_delay)] if copy_delay else []
    burnstation(data, "robots", "add", "usb", "--driver", "folder", "--path", str(usb), "--role", "epson", *extra)
    return station


def check_disc(disc_dir: Path) -> None:
    for name in ("DICOMDIR", "README.TXT", "INDEX.HTM"):
        assert (disc_dir / name).is_file(), f"{name} missing on {disc_dir}"
    assert (disc_dir / "IHE_PDI").is_dir()
    assert (disc_dir / "DICOM").is_dir()


def test_association_to_E_makes_one_job_and_one_disc(tmp_path: Path, usb: Path) -> None:
    files = write_study(tmp_path / "in", n_series=2, per_series=3)
    with make_station(tmp_path, usb) as station:
        data = station.data
        send(station, "BURNSTATION_E", files)
        first = wait_for("a job", lambda: jobs_in(data))
        assert len(first) == 1
        done = wait_final(data, first[0]["id"])
        assert done["state"] == "done", done
        assert done["role"] == "epson" and done["robot"] == "usb" and done["source"] == "assoc"
        assert done["instances"] == 6 and len(done["discs"]) == 1
        assert len(queue(data)["jobs"]) == 1  # exactly one job for the association
        # an empty association (echo only) to _E makes no job; the plain title never burns
        assert dcmtk("echoscu", "-aec", "BURNSTATION_E", "127.0.0.1", str(station.port)).returncode == 0
        send(station, "BURNSTATION", write_study(tmp_path / "plain", n_series=1, per_series=1))
        wait_for("the burner to see the empty association", lambda: burn_assoc_states(data) == ["job", "empty"])
    out = usb / done["id"]
    assert sorted(p.name for p in usb.iterdir()) == [done["id"]]
    check_disc(out / "disc1")
    assert (out / "disc1.iso").is_file() and (out / "disc1.iso").stat().st_size > 0
    on_disc = disc_sops(out / "disc1")
    assert set(on_disc) == sop_uids(files)
    for f in files:
        ds = dcmread(f)
        assert on_disc[str(ds.SOPInstanceUID)] == ds.PixelData
    assert len(jobs_in(data)) == 1


def test_delayed_grouping_within_and_after_the_delay(tmp_path: Path, usb: Path) -> None:
    study = tmp_path / "in"
    files = write_study(study, n_series=2, per_series=2, patient_id="P-TE")
    s1 = [f for f in files if f.name.startswith("s0_")]
    s2 = [f for f in files if f.name.startswith("s1_")]
    with make_station(tmp_path, usb, delay=3) as station:
        data = station.data
        sent = time.time()
        send(station, "BURNSTATION_TE", s1)
        send(station, "BURNSTATION_TE", s2)  # a second association within the delay
        groups = wait_for("a pending group", lambda: queue(data)["groups"])
        assert len(groups) == 1 and groups[0]["instances"] in (2, 4)
        assert not queue(data)["jobs"]
        made = wait_for("the group's job", lambda: jobs_in(data))
        assert time.time() - sent >= 3 - 0.5  # not before the delay passed
        assert len(made) == 1
        first = wait_final(data, made[0]["id"])
        assert first["state"] == "done" and first["instances"] == 4 and first["source"] == "delayed"
        assert first["group"]["series"] == 2 and first["group"]["group_by"] == "patient"
        # a later series of the same patient, after the group became a job: a new group, a second job
        late = write_study(tmp_path / "late", n_series=1, per_series=1, patient_id="P-TE",
                           study_uid=str(dcmread(s1[0]).StudyInstanceUID))
        send(station, "BURNSTATION_TE", late)
        second = wait_for("a second job", lambda: [j for j in jobs_in(data) if j["id"] != first["id"]])
        assert len(second) == 1
        second = wait_final(data, second[0]["id"])
        assert second["state"] == "done" and second["instances"] == 1
        assert second["follows_job"] == first["id"]
        assert second["group"]["follows_job"] == first["id"]
    assert sorted(p.name for p in usb.iterdir()) == sorted([first["id"], second["id"]])
    assert set(disc_sops(usb / first["id"] / "disc1")) == sop_uids(files)


def test_group_by_patient_then_by_study(tmp_path: Path, usb: Path) -> None:
    a = write_study(tmp_path / "a", n_series=1, per_series=2, patient_id="SAME")
    b = write_study(tmp_path / "b", n_series=1, per_series=2, patient_id="SAME")
    c = write_study(tmp_path / "c", n_series=1, per_series=1, patient_id="SAME2")
    d = write_study(tmp_path / "d", n_series=1, per_series=1, patient_id="SAME2")
    with make_station(tmp_path, usb, delay=2) as station:
        data = station.data
        send(station, "BURNSTATION_TE", a)
        send(station, "BURNSTATION_TE", b)
        by_patient = wait_for("the patient group's job", lambda: jobs_in(data, "done"))
        assert len(by_patient) == 1 and by_patient[0]["instances"] == 4
        assert len(by_patient[0]["study_uids"]) == 2
        burnstation(data, "config", "set", "burn.group_by=study")
        send(station, "BURNSTATION_TE", c)
        send(station, "BURNSTATION_TE", d)
        wait_for("two more jobs", lambda: len(jobs_in(data, "done")) == 3)
        by_study = [j for j in jobs_in(data) if j["id"] != by_patient[0]["id"]]
        assert sorted(j["instances"] for j in by_study) == [1, 1]
        assert all(len(j["study_uids"]) == 1 for j in by_study)
        assert {j["study_uids"][0] for j in by_study} == {str(dcmread(c[0]).StudyInstanceUID),
                                                          str(dcmread(d[0]).StudyInstanceUID)}


def test_restart_during_the_delay_still_one_job(tmp_path: Path, usb: Path) -> None:
    files = write_study(tmp_path / "in", n_series=2, per_series=2, patient_id="P-RESTART")
    s1 = [f for f in files if f.name.startswith("s0_")]
    s2 = [f for f in files if f.name.startswith("s1_")]
    station = make_station(tmp_path, usb, delay=8)
    data = station.data
    try:
        station.start()
        send(station, "BURNSTATION_TE", s1)
        group = wait_for("a pending group", lambda: queue(data)["groups"])[0]
        station.stop()
        station.start()
        send(station, "BURNSTATION_TE", s2)  # joins the group that survived the restart
        wait_for("the second series in the group", lambda: (queue(data)["groups"] or [{}])[0].get("instances") == 4)
        after = queue(data)["groups"]
        assert len(after) == 1 and after[0]["id"] == group["id"]
        made = wait_for("the job", lambda: jobs_in(data), timeout=30)
        done = wait_final(data, made[0]["id"])
        assert done["state"] == "done" and done["instances"] == 4
        # the deadline was the wall-clock time stored before the restart, pushed by series 2
        assert abs(done["created_at"] - (after[0]["deadline_at"])) < 2.0
        # a restart after the deadline passed while stopped: the group becomes exactly one job
        more = write_study(tmp_path / "more", n_series=1, per_series=1, patient_id="P-LATER")
        send(station, "BURNSTATION_TE", more)
        pending = wait_for("a new pending group", lambda: queue(data)["groups"])[0]
        station.stop()
        wait_for("the deadline to pass while stopped", lambda: time.time() > pending["deadline_at"] + 0.5, timeout=15)
        station.start()
        wait_for("the overdue group's job", lambda: len(jobs_in(data)) == 2, timeout=30)
        wait_for("both done", lambda: len(jobs_in(data, "done")) == 2)
        assert not queue(data)["groups"]
        assert sorted(j["instances"] for j in jobs_in(data)) == [1, 4]
    finally:
        station.stop()


def test_job_larger_than_media_is_split(tmp_path: Path, usb: Path) -> None:
    files = write_study(tmp_path / "a", n_series=2, per_series=2, rows=256, cols=256)
    files += write_study(tmp_path / "b", n_series=2, per_series=2, rows=256, cols=256)
    # room for one study but not two, by the builder's own size estimate (overheads included)
    from appliance.burn import media

    study = sum(f.stat().st_size for f in files) // 2
    capacity_kb = (media.FIXED_OVERHEAD + 2 * media.PER_SERIES_OVERHEAD + study) // 1000 + 200
    with make_station(tmp_path, usb, burn__capacity_override_kb=capacity_kb) as station:
        data = station.data
        send(station, "BURNSTATION_E", files)
        made = wait_for("a job", lambda: jobs_in(data))
        done = wait_final(data, made[0]["id"])
    assert done["state"] == "done", done
    count = len(done["discs"])
    assert count >= 2
    assert [d["disc_number"] for d in done["discs"]] == list(range(1, count + 1))
    assert all(d["disc_count"] == count for d in done["discs"])
    seen: set[str] = set()
    for n in range(1, count + 1):
        disc = usb / done["id"] / f"disc{n}"
        check_disc(disc)
        uids = set(disc_sops(disc))
        assert not uids & seen
        seen |= uids
    assert seen == sop_uids(files)


def test_cancel_and_retry(tmp_path: Path, usb: Path) -> None:
    files = write_study(tmp_path / "in", n_series=1, per_series=3)
    with make_station(tmp_path, usb, copy_delay=1.0) as station:
        data = station.data
        # a job nobody can burn waits in "built" with the reason, and is cancelled at once
        send(station, "BURNSTATION", files)
        study_uid = str(dcmread(files[0]).StudyInstanceUID)
        wait_for("the study in the index", lambda: burnstation(
            data, "jobs", "burn", "--study", study_uid, "--role", "primera", check=False).returncode == 0)
        waiting = wait_for("a built job", lambda: jobs_in(data, "built"))[0]
        wait_for("the reason", lambda: "no Primera robot" in job(data, waiting["id"])["message"])
        burnstation(data, "jobs", "cancel", waiting["id"])
        assert job(data, waiting["id"])["state"] == "cancelled"
        # cancel while the (slow) folder robot is copying
        out = burnstation(data, "jobs", "burn", "--study", study_uid, "--role", "epson").stdout.strip()
        wait_for("burning", lambda: job(data, out)["state"] == "burning")
        assert "cancel requested" in burnstation(data, "jobs", "cancel", out).stdout
        cancelled = wait_final(data, out)
        assert cancelled["state"] == "cancelled"
        assert not (usb / out).exists()
        refused = burnstation(data, "jobs", "cancel", out, check=False)
        assert refused.returncode == 1 and "cannot cancel" in refused.stderr
        # retry: built again, burned under a new robot job id
        burnstation(data, "robots", "add", "usb", "--driver", "folder", "--path", str(usb), "--role", "epson")
        assert "attempt 2" in burnstation(data, "jobs", "retry", out).stdout
        again = wait_final(data, out)
        assert again["state"] == "done" and again["attempts"] == 2 and again["robot_job_id"] == f"{out}-2"
        assert set(disc_sops(usb / f"{out}-2" / "disc1")) == sop_uids(files)
        refused = burnstation(data, "jobs", "retry", out, check=False)
        assert refused.returncode == 1 and "only a failed or cancelled job" in refused.stderr


def test_station_killed_while_burning_completes_once(tmp_path: Path, usb: Path) -> None:
    files = write_study(tmp_path / "in", n_series=1, per_series=4)
    station = make_station(tmp_path, usb, copy_delay=0.5)
    data = station.data
    try:
        station.start()
        send(station, "BURNSTATION_E", files)
        made = wait_for("a job", lambda: jobs_in(data))[0]
        wait_for("copying under way", lambda: (lambda j: j["state"] == "burning" and j["progress"] > 0)(
            job(data, made["id"])))
        assert not (usb / made["id"]).exists()
        station.stop(sig=signal.SIGKILL)
        station.start()
        done = wait_final(data, made["id"])
        assert done["state"] == "done" and done["attempts"] == 1 and done["robot_job_id"] == made["id"]
        assert len(jobs_in(data)) == 1
    finally:
        station.stop()
    assert sorted(os.listdir(usb)) == [made["id"]]  # once, and no partial copy left
    assert set(disc_sops(usb / made["id"] / "disc1")) == sop_uids(files)
