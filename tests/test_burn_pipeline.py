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
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet
from support import Station, burnstation, dcmtk, write_study
from support import wait_for_named as wait_for

from appliance import db
from appliance.burn import jobs, routing

pytestmark = pytest.mark.station  # every test here starts a station process (tests/tiers.py)

TIMEOUT = 60.0


def queue(data: Path) -> dict[str, Any]:
    """What `burnstation jobs list --json` prints, read straight from state.db (fast enough to poll)."""
    with contextlib.closing(db.connect(data)) as conn:
        return {"jobs": jobs.list_jobs(conn), "groups": routing.pending_groups(conn),
                "held": routing.held_associations(conn)}


def job(data: Path, job_id: str) -> dict[str, Any]:
    """What `burnstation jobs show ID --json` prints, read straight from state.db."""
    with contextlib.closing(db.connect(data)) as conn:
        found = jobs.get_job(conn, job_id)
        assert found is not None, job_id
        found["group"] = routing.group_of_job(conn, job_id)
        return found


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
    add_usb(data, usb, copy_delay)
    return station


def add_usb(data: Path, usb: Path, copy_delay: float = 0.0) -> None:
    """The folder-export robot `usb`, role epson (re-adding it replaces it; its driver follows)."""
    extra = ["--copy-delay", str(copy_delay)] if copy_delay else []
    burnstation(data, "robots", "add", "usb", "--driver", "folder", "--path", str(usb), "--role", "epson", *extra)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory):
    """One station (delay 2 s) for the tests that need no restart; each test looks at its own jobs."""
    root = tmp_path_factory.mktemp("shared")
    usb = root / "usb"
    usb.mkdir()
    station = make_station(root, usb, delay=2)
    station.start()
    yield station, usb
    station.stop()


def new_jobs(data: Path, before: set[str], *states: str) -> list[dict[str, Any]]:
    return [j for j in jobs_in(data, *states) if j["id"] not in before]


def check_disc(disc_dir: Path) -> None:
    for name in ("DICOMDIR", "README.TXT", "INDEX.HTM"):
        assert (disc_dir / name).is_file(), f"{name} missing on {disc_dir}"
    assert (disc_dir / "IHE_PDI").is_dir()
    assert (disc_dir / "DICOM").is_dir()


def test_association_to_E_makes_one_job_and_one_disc(tmp_path: Path, shared: tuple[Station, Path]) -> None:
    station, usb = shared
    data = station.data
    before = {j["id"] for j in jobs_in(data)}
    files = write_study(tmp_path / "in", n_series=2, per_series=3, patient_id="P-E")
    send(station, "BURNSTATION_E", files)
    first = wait_for("a job", lambda: new_jobs(data, before))
    assert len(first) == 1
    done = wait_final(data, first[0]["id"])
    assert done["state"] == "done", done
    assert done["role"] == "epson" and done["robot"] == "usb" and done["source"] == "assoc"
    assert done["instances"] == 6 and len(done["discs"]) == 1
    assert len(new_jobs(data, before)) == 1  # exactly one job for the association
    # the CLI says the same
    listed = json.loads(burnstation(data, "jobs", "list", "--json").stdout)
    assert [j["id"] for j in listed["jobs"] if j["id"] not in before] == [done["id"]]
    shown = json.loads(burnstation(data, "jobs", "show", done["id"], "--json").stdout)
    assert shown["state"] == "done" and shown["discs"] == done["discs"]
    assert done["id"] in burnstation(data, "jobs", "list").stdout
    robots_listed = json.loads(burnstation(data, "robots", "list", "--json").stdout)
    assert [(r["name"], r["online"]) for r in robots_listed] == [("usb", True)]
    # an empty association (echo only) to _E makes no job; the plain title never burns
    assert dcmtk("echoscu", "-aec", "BURNSTATION_E", "127.0.0.1", str(station.port)).returncode == 0
    send(station, "BURNSTATION", write_study(tmp_path / "plain", n_series=1, per_series=1))
    wait_for("the burner to see the empty association", lambda: burn_assoc_states(data)[-1:] == ["empty"])
    assert len(new_jobs(data, before)) == 1
    out = usb / done["id"]
    check_disc(out / "disc1")
    assert not list(usb.glob(".partial-*"))
    on_disc = disc_sops(out / "disc1")
    assert set(on_disc) == sop_uids(files)
    for f in files:
        ds = dcmread(f)
        assert on_disc[str(ds.SOPInstanceUID)] == ds.PixelData
    # the image beside it: listed with xorriso, extracted, its DICOMDIR valid and naming every instance
    image = out / "disc1.iso"
    listing = subprocess.run(["xorriso", "-indev", str(image), "-find", "/"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    names = {line.strip().strip("'") for line in listing.splitlines()}
    assert {"/DICOMDIR", "/README.TXT", "/INDEX.HTM", "/IHE_PDI", "/DICOM"} <= names, listing
    extracted = tmp_path / "extracted"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(image), "-extract", "/", str(extracted)],
                   capture_output=True, text=True, timeout=60, check=True)
    check = subprocess.run(["/usr/bin/dciodvfy", str(extracted / "DICOMDIR")], capture_output=True, text=True,
                           timeout=60)
    assert (check.stdout + check.stderr).strip()
    assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    fileset = FileSet(dcmread(extracted / "DICOMDIR"))
    assert {str(i.SOPInstanceUID) for i in fileset} == sop_uids(files)
    assert set(disc_sops(extracted)) == sop_uids(files)


def test_aborted_association_is_held_then_burned_on_demand(tmp_path: Path, shared: tuple[Station, Path]) -> None:
    station, usb = shared
    data = station.data
    before = {j["id"] for j in jobs_in(data)}
    files = write_study(tmp_path / "in", n_series=1, per_series=2, patient_id="P-ABORT")
    result = dcmtk("storescu", "--abort", "-aec", "BURNSTATION_E", "127.0.0.1", str(station.port), *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for("the association to be routed", lambda: queue(data)["held"] or new_jobs(data, before))
    held = queue(data)["held"]
    assert len(held) == 1 and "aborted" in held[0]["note"] and "jobs burn --assoc" in held[0]["note"]
    assert "associations not burned automatically" in burnstation(data, "jobs", "list").stdout
    assert not new_jobs(data, before)
    job_id = burnstation(data, "jobs", "burn", "--assoc", str(held[0]["assoc_id"])).stdout.strip()
    done = wait_final(data, job_id)
    assert done["state"] == "done" and done["role"] == "epson" and done["instances"] == 2
    assert set(disc_sops(usb / job_id / "disc1")) == sop_uids(files)
    assert not queue(data)["held"]


def test_delayed_grouping_within_and_after_the_delay(tmp_path: Path, shared: tuple[Station, Path]) -> None:
    station, usb = shared
    data = station.data
    before = {j["id"] for j in jobs_in(data)}
    files = write_study(tmp_path / "in", n_series=2, per_series=2, patient_id="P-TE")
    s1 = [f for f in files if f.name.startswith("s0_")]
    s2 = [f for f in files if f.name.startswith("s1_")]
    send(station, "BURNSTATION_TE", s1)
    send(station, "BURNSTATION_TE", s2)  # a second association within the delay
    made = wait_for("the group's job", lambda: new_jobs(data, before))
    assert len(made) == 1
    first = wait_final(data, made[0]["id"])
    assert first["state"] == "done" and first["instances"] == 4 and first["source"] == "delayed"
    group = first["group"]
    assert group["series"] == 2 and group["group_by"] == "patient" and group["group_key"] == "patient:P-TE"
    # the job was made once the delay had passed after the last arrival, not before
    assert abs(group["deadline_at"] - group["last_arrival_at"] - 2) < 0.01
    assert first["created_at"] >= group["deadline_at"]
    # a later series of the same study, after the group became a job: a new group, a second job
    late = write_study(tmp_path / "late", n_series=1, per_series=1, patient_id="P-TE",
                       study_uid=str(dcmread(s1[0]).StudyInstanceUID))
    send(station, "BURNSTATION_TE", late)
    second = wait_for("a second job", lambda: [j for j in new_jobs(data, before) if j["id"] != first["id"]])
    assert len(second) == 1
    second = wait_final(data, second[0]["id"])
    assert second["state"] == "done" and second["instances"] == 1
    assert second["follows_job"] == first["id"]
    assert second["group"]["follows_job"] == first["id"]
    assert set(disc_sops(usb / first["id"] / "disc1")) == sop_uids(files)
    assert set(disc_sops(usb / second["id"] / "disc1")) == sop_uids(late)
    # with a gap longer than the delay: two groups, two jobs
    gap = write_study(tmp_path / "gap", n_series=2, per_series=1, patient_id="P-GAP")
    before = {j["id"] for j in jobs_in(data)}
    send(station, "BURNSTATION_TE", gap[:1])
    wait_for("the first series' job", lambda: new_jobs(data, before))
    send(station, "BURNSTATION_TE", gap[1:])
    wait_for("two jobs", lambda: len(new_jobs(data, before, "done")) == 2)
    assert [j["instances"] for j in new_jobs(data, before)] == [1, 1]


def test_group_by_patient_then_by_study(tmp_path: Path, shared: tuple[Station, Path]) -> None:
    station, _usb = shared
    data = station.data
    before = {j["id"] for j in jobs_in(data)}
    a = write_study(tmp_path / "a", n_series=1, per_series=2, patient_id="SAME")
    b = write_study(tmp_path / "b", n_series=1, per_series=2, patient_id="SAME")
    c = write_study(tmp_path / "c", n_series=1, per_series=1, patient_id="SAME2")
    d = write_study(tmp_path / "d", n_series=1, per_series=1, patient_id="SAME2")
    send(station, "BURNSTATION_TE", a)
    send(station, "BURNSTATION_TE", b)
    by_patient = wait_for("the patient group's job", lambda: new_jobs(data, before, "done"))
    assert len(by_patient) == 1 and by_patient[0]["instances"] == 4
    assert len(by_patient[0]["study_uids"]) == 2
    burnstation(data, "config", "set", "burn.group_by=study")
    try:
        send(station, "BURNSTATION_TE", c)
        send(station, "BURNSTATION_TE", d)
        wait_for("two more jobs", lambda: len(new_jobs(data, before, "done")) == 3)
    finally:
        burnstation(data, "config", "set", "burn.group_by=patient")
    by_study = [j for j in new_jobs(data, before) if j["id"] != by_patient[0]["id"]]
    assert sorted(j["instances"] for j in by_study) == [1, 1]
    assert all(len(j["study_uids"]) == 1 for j in by_study)
    assert {j["study_uids"][0] for j in by_study} == {str(dcmread(c[0]).StudyInstanceUID),
                                                      str(dcmread(d[0]).StudyInstanceUID)}


def test_job_larger_than_media_is_split(tmp_path: Path, shared: tuple[Station, Path]) -> None:
    station, usb = shared
    data = station.data
    before = {j["id"] for j in jobs_in(data)}
    files = write_study(tmp_path / "a", n_series=2, per_series=2, rows=256, cols=256, patient_id="P-BIG")
    files += write_study(tmp_path / "b", n_series=2, per_series=2, rows=256, cols=256, patient_id="P-BIG")
    # room for one study but not two, by the builder's own size estimate (overheads included)
    from appliance.burn import media

    study = sum(f.stat().st_size for f in files) // 2
    capacity_kb = (media.FIXED_OVERHEAD + 2 * media.PER_SERIES_OVERHEAD + study) // 1000 + 200
    burnstation(data, "config", "set", f"burn.capacity_override_kb={capacity_kb}")
    try:
        send(station, "BURNSTATION_E", files)
        made = wait_for("a job", lambda: new_jobs(data, before))
        done = wait_final(data, made[0]["id"])
    finally:
        burnstation(data, "config", "set", "burn.capacity_override_kb=0")
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


def test_cancel_and_retry(tmp_path: Path, shared: tuple[Station, Path]) -> None:
    station, usb = shared
    data = station.data
    files = write_study(tmp_path / "in", n_series=1, per_series=3, patient_id="P-CANCEL")
    # a job nobody can burn waits in "built" with the reason, and is cancelled at once
    send(station, "BURNSTATION", files)
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    waiting = wait_for("the study in the index", lambda: (lambda r: r.stdout.strip() if r.returncode == 0 else None)(
        burnstation(data, "jobs", "burn", "--study", study_uid, "--role", "primera", check=False)))
    wait_for("the reason", lambda: "no Primera robot" in job(data, waiting)["message"])
    assert job(data, waiting)["state"] == "built"
    burnstation(data, "jobs", "cancel", waiting)
    assert job(data, waiting)["state"] == "cancelled"
    # cancel while the (slow) folder robot is copying
    add_usb(data, usb, copy_delay=1.0)
    try:
        out = burnstation(data, "jobs", "burn", "--study", study_uid, "--role", "epson").stdout.strip()
        wait_for("burning", lambda: job(data, out)["state"] == "burning")
        assert "cancel requested" in burnstation(data, "jobs", "cancel", out).stdout
        cancelled = wait_final(data, out)
    finally:
        add_usb(data, usb)
    assert cancelled["state"] == "cancelled"
    assert not (usb / out).exists()
    refused = burnstation(data, "jobs", "cancel", out, check=False)
    assert refused.returncode == 1 and "cannot cancel" in refused.stderr
    # retry: built again, burned under a new robot job id
    assert "attempt 2" in burnstation(data, "jobs", "retry", out).stdout
    again = wait_final(data, out)
    assert again["state"] == "done" and again["attempts"] == 2 and again["robot_job_id"] == f"{out}-2"
    assert set(disc_sops(usb / f"{out}-2" / "disc1")) == sop_uids(files)
    refused = burnstation(data, "jobs", "retry", out, check=False)
    assert refused.returncode == 1 and "only a failed or cancelled job" in refused.stderr


def test_restarts_lose_nothing_and_burn_nothing_twice(tmp_path: Path, usb: Path) -> None:
    """A restart during the delay, then a crash (SIGKILL) while the folder robot is copying."""
    files = write_study(tmp_path / "in", n_series=2, per_series=2, patient_id="P-RESTART")
    s1 = [f for f in files if f.name.startswith("s0_")]
    s2 = [f for f in files if f.name.startswith("s1_")]
    station = make_station(tmp_path, usb, delay=6)
    data = station.data
    try:
        station.start()
        send(station, "BURNSTATION_TE", s1)
        send(station, "BURNSTATION_TE", s2)
        group = wait_for("a pending group of both series",
                         lambda: [g for g in queue(data)["groups"] if g["instances"] == 4])[0]
        station.stop()
        station.start()
        made = wait_for("the job", lambda: jobs_in(data), timeout=30)
        done = wait_final(data, made[0]["id"])
        assert done["state"] == "done" and done["instances"] == 4 and done["group_id"] == group["id"]
        # the deadline stored before the restart held: never early, and exactly one job
        assert done["created_at"] >= group["deadline_at"]
        wait_for("well past the deadline", lambda: time.time() > group["deadline_at"] + 2, timeout=15)
        assert len(jobs_in(data)) == 1 and not queue(data)["groups"]
        assert set(disc_sops(usb / done["id"] / "disc1")) == sop_uids(files)

        # killed while the (slow) folder robot is copying: after the restart the copy completes, once
        add_usb(data, usb, copy_delay=0.2)
        more = write_study(tmp_path / "more", n_series=1, per_series=2, patient_id="P-KILL")
        send(station, "BURNSTATION_E", more)
        made = wait_for("a second job", lambda: [j for j in jobs_in(data) if j["id"] != done["id"]])[0]
        wait_for("copying under way", lambda: (lambda j: j["state"] == "burning" and j["progress"] > 0)(
            job(data, made["id"])))
        assert not (usb / made["id"]).exists()
        station.stop(sig=signal.SIGKILL)
        station.start()
        second = wait_final(data, made["id"])
        assert second["state"] == "done" and second["attempts"] == 1 and second["robot_job_id"] == made["id"]
        assert len(jobs_in(data)) == 2
    finally:
        station.stop()
    assert sorted(os.listdir(usb)) == sorted([done["id"], made["id"]])  # once each, no partial copy left
    assert set(disc_sops(usb / made["id"] / "disc1")) == sop_uids(more)
