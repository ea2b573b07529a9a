"""The job queue, dispatch to robots, the generic driver loop and the folder-export publisher, in process.

The driver loop is exercised against a scripted Publisher (it records every call) so the re-attach
rules can be checked exactly; the folder publisher and the disc builder are the real ones.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support import wait_for, write_study

from appliance import db, index, publish
from appliance.burn import dispatch, jobs, robots
from appliance.burn.folder_export import FolderPublisher
from appliance.config import SettingError, Settings
from appliance.services.driver import RobotLoop


@pytest.fixture
def env(tmp_path: Path):
    settings = Settings(tmp_path)
    settings.initialize()
    conn = db.connect(tmp_path)
    yield settings, conn
    conn.close()


def index_files(conn, files: list[Path]) -> list[str]:
    from pydicom import dcmread

    uids = []
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        rec = index.record_from_dataset(ds, str(f), f.stat().st_size, str(ds.file_meta.TransferSyntaxUID))
        index.add_instance(conn, rec)
        uids.append(rec.sop_uid)
    return uids


def fake_job(conn, role: str = "epson", state: str = "built", discs: list | None = None, **fields) -> str:
    job_id = jobs.create_job(conn, role=role, sop_uids=[], source="manual")
    disc = {"image": "/x.iso", "tree": "/x", "media": "CD", "filesystem": "ISO9660+JOLIET", "volume_label": "X",
            "size": 1, "disc_number": 1, "disc_count": 1}
    jobs.update(conn, job_id, jobs.STATES, state=state, discs=discs if discs is not None else [disc], **fields)
    return job_id


def beat(conn, name: str, online: bool = True, media: list[str] | None = None, age: float = 0.0) -> None:
    robots.record_status(conn, name, publish.RobotStatus(name, "folder", online, "ok", media=media or []))
    if age:
        conn.execute("UPDATE robot_status SET heartbeat_at=? WHERE name=?", (time.time() - age, name))


# --------------------------------------------------------------------------- queue


def test_job_ids_states_cancel_and_retry(env) -> None:
    _settings, conn = env
    ids = [jobs.create_job(conn, role="any", sop_uids=[], source="manual") for _ in range(5)]
    assert len(set(ids)) == 5 and all(jobs.JOB_ID_RE.match(i) for i in ids)
    assert all(jobs.get_job(conn, i)["state"] == "queued" for i in ids)
    with pytest.raises(jobs.JobError):
        jobs.create_job(conn, role="nobody", sop_uids=[], source="manual")
    # cancel: at once before the robot has it, by request after
    assert "cancelled" in jobs.cancel_job(conn, ids[0])
    assert jobs.get_job(conn, ids[0])["state"] == "cancelled"
    jobs.update(conn, ids[1], jobs.STATES, state="burning", robot="r1")
    assert "cancel requested" in jobs.cancel_job(conn, ids[1])
    job = jobs.get_job(conn, ids[1])
    assert job["state"] == "burning" and job["cancel_requested"] == 1
    jobs.update(conn, ids[2], jobs.STATES, state="done")
    with pytest.raises(jobs.JobError, match="cannot cancel"):
        jobs.cancel_job(conn, ids[2])
    with pytest.raises(jobs.JobError, match="only a failed"):
        jobs.retry_job(conn, ids[2])
    with pytest.raises(jobs.JobError, match="no job"):
        jobs.cancel_job(conn, "J-nope")
    # retry: queued again, a new robot job id, the failed robot remembered
    jobs.update(conn, ids[3], jobs.STATES, state="failed", robot="r1", error="write error", error_code="18")
    jobs.retry_job(conn, ids[3])
    job = jobs.get_job(conn, ids[3])
    assert job["state"] == "queued" and job["attempts"] == 2 and job["robot_job_id"] == f"{ids[3]}-2"
    assert job["exclude_robot"] == "r1" and job["robot"] == "" and job["error"] == "" and job["discs"] == []
    # a transition only happens from the expected state
    assert not jobs.move(conn, ids[3], (jobs.BUILT,), jobs.SUBMITTED)
    assert jobs.move(conn, ids[3], (jobs.QUEUED,), jobs.BUILDING)


def test_robot_config_validation(env) -> None:
    settings, _conn = env
    robot = robots.add_robot(settings, {"name": "usb", "driver": "folder", "spool": "/media/usb"})
    assert robot["role"] == "any" and robot["media"] == list(publish.MEDIA_ORDER) and robot["mode"] == "image"
    robot = robots.add_robot(settings, {"name": "e1", "driver": "epson", "spool": "/spool/e1", "media": "dvd,CD"})
    assert robot["role"] == "epson" and robot["media"] == ["CD", "DVD"] and robot["verify"] is True
    for bad in ({"name": "a b", "driver": "folder", "spool": "/x"}, {"name": "x" * 33, "driver": "folder", "spool": "/x"},
                {"name": "ok", "driver": "cdrecord", "spool": "/x"}, {"name": "ok", "driver": "folder", "spool": "x"},
                {"name": "ok", "driver": "folder", "spool": "/x", "media": "FLOPPY"},
                {"name": "ok", "driver": "folder", "spool": "/x\n"}, {"name": "ok", "driver": "epson", "spool": "/x",
                                                                     "role": "lexmark"}):
        with pytest.raises(SettingError):
            robots.add_robot(settings, bad)
    assert [r["name"] for r in robots.list_robots(settings)] == ["e1", "usb"]
    # driver options pass through, checked
    robot = robots.add_robot(settings, {"name": "p1", "driver": "primera", "spool": "/s/p1", "robot_name": "Bravo 4100",
                                        "status_timeout": 30, "merge_fields": "name,id"})
    assert robot["robot_name"] == "Bravo 4100" and robot["merge_fields"] == ["name", "id"]
    with pytest.raises(SettingError):
        robots.add_robot(settings, {"name": "p2", "driver": "primera", "spool": "/s/p2", "publisher": "PP\nX"})
    robots.delete_robot(settings, "p1")
    assert robots.allowed_media(settings, "epson") == list(publish.MEDIA_ORDER)  # usb serves any role
    assert robots.delete_robot(settings, "usb") and not robots.delete_robot(settings, "usb")
    assert robots.allowed_media(settings, "epson") == ["CD", "DVD"]
    assert robots.allowed_media(settings, "primera") == list(publish.MEDIA_ORDER)  # none configured


# --------------------------------------------------------------------------- dispatch


def test_assignment_needs_an_online_robot_with_the_media(env) -> None:
    settings, conn = env
    job_id = fake_job(conn)
    dispatch.assign_built(conn, settings)
    assert jobs.get_job(conn, job_id)["message"] == "no Epson robot configured"
    robots.add_robot(settings, {"name": "e1", "driver": "epson", "spool": "/s/e1", "media": "DVD"})
    dispatch.assign_built(conn, settings)
    assert jobs.get_job(conn, job_id)["message"] == "no Epson robot online"
    beat(conn, "e1", age=60)  # a heartbeat, but an old one
    dispatch.assign_built(conn, settings)
    assert jobs.get_job(conn, job_id)["robot"] == ""
    beat(conn, "e1")
    dispatch.assign_built(conn, settings)
    assert jobs.get_job(conn, job_id)["message"] == "no online Epson robot has CD media"
    robots.add_robot(settings, {"name": "e1", "driver": "epson", "spool": "/s/e1", "media": "CD,DVD"})
    beat(conn, "e1", media=["DVD"])  # configured for CD, but the robot reports only DVD loaded
    dispatch.assign_built(conn, settings)
    assert jobs.get_job(conn, job_id)["robot"] == ""
    beat(conn, "e1", media=["CD", "DVD"])
    assert dispatch.assign_built(conn, settings) == 1
    assert jobs.get_job(conn, job_id)["robot"] == "e1"
    # the robot goes offline before its driver took the job: back to the pool
    beat(conn, "e1", online=False)
    dispatch.assign_built(conn, settings)
    assert jobs.get_job(conn, job_id)["robot"] == ""
    # a Primera job never goes to an Epson robot
    beat(conn, "e1")
    other = fake_job(conn, role="primera")
    dispatch.assign_built(conn, settings)
    assert jobs.get_job(conn, other)["robot"] == "" and "Primera" in jobs.get_job(conn, other)["message"]
    # a robot removed while it had a job: the job fails with the reason (no driver would ever follow it)
    orphan = fake_job(conn, state="burning", robot="gone")
    dispatch.assign_built(conn, settings)
    assert jobs.get_job(conn, orphan)["state"] == "burning"  # not at the first sight: it may come back
    dispatch._missing_since[orphan] -= dispatch.REMOVED_GRACE_SECONDS
    dispatch.assign_built(conn, settings)
    job = jobs.get_job(conn, orphan)
    assert job["state"] == "failed" and job["error_code"] == "REMOVED" and "gone" in job["error"]


def test_retry_avoids_the_robot_that_failed_and_spreads_load(env) -> None:
    settings, conn = env
    for name in ("e1", "e2"):
        robots.add_robot(settings, {"name": name, "driver": "epson", "spool": f"/s/{name}"})
        beat(conn, name)
    retried = fake_job(conn, exclude_robot="e1")
    dispatch.assign_built(conn, settings)
    assert jobs.get_job(conn, retried)["robot"] == "e2"
    first, second = fake_job(conn), fake_job(conn)
    dispatch.assign_built(conn, settings)
    assert {jobs.get_job(conn, first)["robot"], jobs.get_job(conn, second)["robot"]} == {"e1"}  # e2 was busier
    beat(conn, "e2", online=False)
    alone = fake_job(conn, exclude_robot="e1")
    dispatch.assign_built(conn, settings)
    assert jobs.get_job(conn, alone)["robot"] == "e1"  # the only one online takes it after all


def test_build_success_and_failure(env, tmp_path: Path) -> None:
    settings, conn = env
    files = write_study(tmp_path / "in", n_series=2, per_series=2)
    uids = index_files(conn, files)
    job_id = jobs.create_job(conn, role="epson", sop_uids=uids, source="manual")
    job = dispatch.claim_next_build(conn)
    assert job["id"] == job_id and job["state"] == "building"
    assert dispatch.claim_next_build(conn) is None
    assert dispatch.build_job(conn, settings, tmp_path, job)
    job = jobs.get_job(conn, job_id)
    assert job["state"] == "built" and len(job["discs"]) == 1
    disc = dispatch.disc_from_doc(job["discs"][0])
    assert disc.tree.is_dir() and (disc.tree / "DICOMDIR").is_file() and disc.image.is_file()
    assert str(disc.tree).startswith(str(tmp_path / "discs" / job_id))
    # finished jobs' disc images go after burn.keep_discs_hours; received files stay
    jobs.move(conn, job_id, (jobs.BUILT,), jobs.DONE)
    assert dispatch.prune_discs(conn, settings, tmp_path) == 0  # just finished: kept
    assert dispatch.prune_discs(conn, settings, tmp_path, now=time.time() + 25 * 3600) == 1
    assert not (tmp_path / "discs" / job_id).exists() and all(f.is_file() for f in files)
    # a disc that cannot be built: the job fails with the builder's words; nothing received is touched
    settings.update({"burn.capacity_override_kb": 1})
    bad = jobs.create_job(conn, role="epson", sop_uids=uids, source="manual")
    assert not dispatch.build_job(conn, settings, tmp_path, dispatch.claim_next_build(conn))
    job = jobs.get_job(conn, bad)
    assert job["state"] == "failed" and job["error"].startswith("build failed:") and "larger than" in job["error"]
    assert all(f.is_file() for f in files)
    # a job whose instances left the index
    gone = jobs.create_job(conn, role="epson", sop_uids=["1.2.3.4"], source="manual")
    assert not dispatch.build_job(conn, settings, tmp_path, dispatch.claim_next_build(conn))
    assert "none of the job's instances" in jobs.get_job(conn, gone)["error"]
    # an interrupted build is queued again when the burner starts
    again = jobs.create_job(conn, role="epson", sop_uids=uids, source="manual")
    dispatch.claim_next_build(conn)
    assert dispatch.recover_builds(conn) == 1 and jobs.get_job(conn, again)["state"] == "queued"


# --------------------------------------------------------------------------- driver loop


class ScriptedPublisher(publish.Publisher):
    """Answers poll() from a script per job and records every call."""

    kind = "scripted"

    def __init__(self) -> None:
        self.name = "r1"
        self.calls: list[tuple[str, str]] = []
        self.answers: dict[str, publish.JobProgress] = {}

    def status(self) -> publish.RobotStatus:
        return publish.RobotStatus("r1", "scripted", True, "ready", media=["CD"])

    def submit(self, request: publish.PublishRequest) -> None:
        self.calls.append(("submit", request.job_id))
        self.answers.setdefault(request.job_id, publish.JobProgress(publish.WAITING, 0, "in the queue"))

    def poll(self, job_id: str) -> publish.JobProgress:
        self.calls.append(("poll", job_id))
        return self.answers.get(job_id, publish.JobProgress(publish.UNKNOWN))

    def cancel(self, job_id: str) -> bool:
        self.calls.append(("cancel", job_id))
        self.answers[job_id] = publish.JobProgress(publish.CANCELLED, 0, "cancelled at the robot")
        return True


def loop_for(settings: Settings, tmp_path: Path) -> tuple[RobotLoop, ScriptedPublisher]:
    robots.add_robot(settings, {"name": "r1", "driver": "epson", "spool": str(tmp_path / "spool")})
    loop = RobotLoop(tmp_path, "r1")
    loop.robot = robots.get_robot(settings, "r1")
    loop.publisher = pub = ScriptedPublisher()
    loop.heartbeat()
    return loop, pub


def submits(pub: ScriptedPublisher) -> list[str]:
    return [j for c, j in pub.calls if c == "submit"]


def test_driver_loop_follows_a_job_to_done(env, tmp_path: Path) -> None:
    settings, conn = env
    loop, pub = loop_for(settings, tmp_path)
    status = robots.status_rows(conn)["r1"]
    assert robots.is_online(status) and status["message"] == "ready"
    job_id = fake_job(conn, robot="r1", copies=2)
    loop.work()
    assert submits(pub) == [job_id]
    loop.work()
    job = jobs.get_job(conn, job_id)
    assert job["state"] == "submitted" and job["message"] == "in the queue" and job["robot_ack"] == 1
    pub.answers[job_id] = publish.JobProgress(publish.WAITING, 0, "input stacker empty")
    loop.work()
    assert jobs.get_job(conn, job_id)["message"] == "input stacker empty"
    pub.answers[job_id] = publish.JobProgress(publish.BURNING, 0.4, "writing disc 1")
    loop.work()
    job = jobs.get_job(conn, job_id)
    assert job["state"] == "burning" and job["progress"] == pytest.approx(0.4)
    pub.answers[job_id] = publish.JobProgress(publish.WAITING, 0.5, "cover open")
    loop.work()
    assert jobs.get_job(conn, job_id)["state"] == "burning"  # waiting keeps the job where it was
    pub.answers[job_id] = publish.JobProgress(publish.DONE, 1.0, "2 discs done")
    loop.work()
    job = jobs.get_job(conn, job_id)
    assert job["state"] == "done" and job["progress"] == 1.0 and job["finished_at"]
    assert submits(pub) == [job_id]


def test_driver_loop_failure_and_cancel(env, tmp_path: Path) -> None:
    settings, conn = env
    loop, pub = loop_for(settings, tmp_path)
    failing = fake_job(conn, robot="r1")
    loop.work()
    pub.answers[failing] = publish.JobProgress(publish.FAILED, 0.3, "write error on disc 1", error_code="JDF0903")
    loop.work()
    job = jobs.get_job(conn, failing)
    assert job["state"] == "failed" and job["error"] == "write error on disc 1" and job["error_code"] == "JDF0903"
    cancelled = fake_job(conn, robot="r1")
    loop.work()
    jobs.cancel_job(conn, cancelled)
    loop.work()
    loop.work()
    assert ("cancel", cancelled) in pub.calls
    assert jobs.get_job(conn, cancelled)["state"] == "cancelled"
    # a built job for another robot is not touched
    other = fake_job(conn, robot="r2")
    loop.work()
    assert jobs.get_job(conn, other)["state"] == "built" and other not in submits(pub)


def test_reattach_after_restart_never_submits_twice(env, tmp_path: Path) -> None:
    settings, conn = env
    # crashed between "submitted" and submit(): the robot never saw it → submitted now, once
    lost_before = fake_job(conn, robot="r1", state="submitted")
    # the robot had it (acknowledged) and still has it → followed, not submitted
    known = fake_job(conn, robot="r1", state="burning", robot_ack=1)
    # the robot had it but forgot it → failed, never burned a second time
    forgotten = fake_job(conn, robot="r1", state="burning", robot_ack=1)
    loop, pub = loop_for(settings, tmp_path)
    pub.answers[known] = publish.JobProgress(publish.BURNING, 0.7, "writing")
    for _ in range(3):
        loop.work()
    assert submits(pub) == [lost_before]
    assert jobs.get_job(conn, lost_before)["state"] == "submitted"
    assert jobs.get_job(conn, known)["state"] == "burning" and jobs.get_job(conn, known)["progress"] == 0.7
    job = jobs.get_job(conn, forgotten)
    assert job["state"] == "failed" and job["error_code"] == "LOST"
    # a second restart: the loop re-attaches to what it submitted, again without submitting
    loop2 = RobotLoop(tmp_path, "r1")
    loop2.robot, loop2.publisher = loop.robot, pub
    loop2.online = True
    loop2.work()
    assert submits(pub) == [lost_before]


# --------------------------------------------------------------------------- folder export


def make_disc(tmp_path: Path, n: int = 1) -> publish.DiscImage:
    tree = tmp_path / f"tree{n}"
    (tree / "DICOM" / "ST1").mkdir(parents=True, exist_ok=True)
    (tree / "DICOMDIR").write_bytes(b"D" * 100)
    (tree / "DICOM" / "ST1" / "IM1").write_bytes(b"x" * 1000)
    image = tmp_path / f"disc{n}.iso"
    image.write_bytes(b"i" * 2048)
    return publish.DiscImage(image=image, tree=tree, media="CD", filesystem="ISO9660+JOLIET", volume_label="V",
                             size=3148, disc_number=n, disc_count=2)


def wait_state(pub: publish.Publisher, job_id: str, state: str, timeout: float = 10) -> publish.JobProgress:
    try:
        def reached() -> publish.JobProgress | None:
            progress = pub.poll(job_id)
            return progress if progress.state == state else None

        return wait_for(reached, timeout, f"{job_id} in {state}", every=0.02)
    except AssertionError:
        raise AssertionError(f"{job_id} never reached {state}: {pub.poll(job_id)}") from None


def test_folder_export_copies_atomically_and_resumes(tmp_path: Path) -> None:
    spool = tmp_path / "usb"
    robot = {"name": "usb", "driver": "folder", "spool": str(spool), "mode": "image", "media": ["CD"]}
    pub = FolderPublisher(robot)
    status = pub.status()
    assert not status.online and "not found" in status.message
    spool.mkdir()
    status = pub.status()
    assert status.online and "free" in status.message
    request = publish.PublishRequest("J1", [make_disc(tmp_path, 1), make_disc(tmp_path, 2)])
    assert pub.poll("J1").state == publish.UNKNOWN
    pub.submit(request)
    wait_state(pub, "J1", publish.DONE)
    out = spool / "J1"
    assert (out / "disc1" / "DICOM" / "ST1" / "IM1").read_bytes() == b"x" * 1000
    assert (out / "disc2" / "DICOMDIR").is_file() and (out / "disc2.iso").stat().st_size == 2048
    assert sorted(p.name for p in spool.iterdir()) == ["J1"]
    pub.submit(request)  # never copied twice
    assert sorted(p.name for p in spool.iterdir()) == ["J1"]
    assert FolderPublisher(robot).poll("J1").state == publish.DONE  # a new process still knows it
    # data mode: the tree only
    FolderPublisher({**robot, "mode": "data"}).submit(publish.PublishRequest("J2", [make_disc(tmp_path, 1)]))
    # an interrupted copy (the station died): a new publisher resumes it from the saved request
    slow = FolderPublisher({**robot, "copy_delay": 0.3})
    slow.submit(publish.PublishRequest("J3", [make_disc(tmp_path, 1)]))
    wait_state(slow, "J3", publish.BURNING)
    slow._copies["J3"].cancel.set()  # stop the thread as a killed process would (partial left behind)
    wait_state(slow, "J3", publish.CANCELLED)
    (spool / ".partial-J3").mkdir(exist_ok=True)
    (spool / ".partial-J3" / "junk").write_text("half")
    (spool / ".partial-J3.json").write_text(
        __import__("json").dumps({"job_id": "J3", "discs": [{"image": str(tmp_path / "disc1.iso"),
                                                             "tree": str(tmp_path / "tree1"), "media": "CD",
                                                             "filesystem": "ISO9660+JOLIET", "volume_label": "V",
                                                             "size": 1, "disc_number": 1, "disc_count": 1}]}))
    resumed = FolderPublisher(robot)
    assert resumed.poll("J3").state == publish.BURNING
    wait_state(resumed, "J3", publish.DONE)
    assert not (spool / "J3" / "junk").exists() and (spool / "J3" / "disc1" / "DICOMDIR").is_file()
    wait_state(FolderPublisher(robot), "J2", publish.DONE)
    assert not (spool / "J2" / "disc1.iso").exists()
    assert sorted(p.name for p in spool.iterdir()) == ["J1", "J2", "J3"]
    # cancel during the copy: nothing is left
    slow.submit(publish.PublishRequest("J4", [make_disc(tmp_path, 1)]))
    wait_state(slow, "J4", publish.BURNING)
    assert slow.cancel("J4")
    wait_state(slow, "J4", publish.CANCELLED)
    assert sorted(p.name for p in spool.iterdir()) == ["J1", "J2", "J3"]


def test_the_reads_the_panel_diagnostics_and_worklist_use(env) -> None:
    """jobs.current / state_counts / waiting_reasons / done_since and robots.mark_offline: the doors
    other modules (panel, diagnostics, worklist, the web UI) use instead of SQL on the tables."""
    _settings, conn = env
    queued = jobs.create_job(conn, role="any", sop_uids=[], source="manual")
    built = fake_job(conn, message="no robot online")
    assert jobs.current(conn)["id"] == built  # built goes before queued
    burning = fake_job(conn, state="burning", robot="r1")
    assert jobs.current(conn)["id"] == burning
    assert jobs.state_counts(conn) == {"queued": 1, "built": 1, "burning": 1}
    assert ("built", "no robot online", 1) in jobs.waiting_reasons(conn)
    before = time.time() - 1
    jobs.update(conn, burning, jobs.STATES, state="done", study_uids=["1.2.3"])
    assert jobs.done_since(conn, before)[0][0] == ["1.2.3"]
    assert jobs.done_since(conn, jobs.done_since(conn, before)[-1][1]) == []
    jobs.move(conn, queued, (jobs.QUEUED,), jobs.BUILDING)
    assert jobs.requeue_interrupted_builds(conn) == 1 and jobs.get_job(conn, queued)["state"] == "queued"
    # robot_status: a fresh heartbeat is online; marked offline keeps the reason; a stale beat is offline
    beat(conn, "r1")
    assert robots.is_online(robots.status_rows(conn)["r1"])
    robots.mark_offline(conn, "r1", "unplugged: its USB device is not connected")
    row = robots.status_rows(conn)["r1"]
    assert not robots.is_online(row) and row["message"].startswith("unplugged") and row["pid"] == 0
    robots.mark_offline(conn, "r2", "gone")  # never heartbeated: a row is made
    assert robots.status_rows(conn)["r2"]["message"] == "gone"
    beat(conn, "r3", age=robots.HEARTBEAT_FRESH_SECONDS + 1)
    assert not robots.is_online(robots.status_rows(conn)["r3"])


def test_a_build_step_that_cannot_record_its_failure_is_queued_again(env, monkeypatch) -> None:
    """Found by the disk-full fault run: the disc folder filled, the build failed, and the write
    marking the job failed hit the same full disk (state.db beside it), so the job stayed
    `building` until the next burner restart. The build loop queues such a job again and builds it."""
    import sqlite3
    import threading

    from appliance.services import burner

    settings, conn = env
    job_id = jobs.create_job(conn, role="any", sop_uids=["1.2.3"], source="manual")
    calls: list[str] = []
    stop, wake = threading.Event(), threading.Event()

    def build(conn, settings, data_dir, job):
        calls.append(jobs.get_job(conn, job["id"])["state"])
        if len(calls) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        stop.set()
        return jobs.move(conn, job["id"], (jobs.BUILDING,), jobs.FAILED, error="test: built no disc")

    monkeypatch.setattr(dispatch, "build_job", build)
    monkeypatch.setattr(burner, "POLL_SECONDS", 0.05)
    loop = threading.Thread(target=burner._build_loop, args=(settings.data_dir, stop, wake), daemon=True)
    loop.start()
    loop.join(10)
    stop.set()
    assert calls == ["building", "building"]  # claimed again after the failed step
    assert jobs.get_job(conn, job_id)["state"] == jobs.FAILED
