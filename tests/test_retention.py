"""Storage retention (issue 18): what is purged, what never is, the dry run, and a small data disk
filled by real C-STOREs while the station's burner purges the oldest burned studies."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from support import Station, burnstation, configure, dcmtk, findscu, make_dataset, wait_for, write_study

from appliance import db, index, retention, trail
from appliance.burn import jobs, routing
from appliance.config import SettingError, Settings
from appliance.storage import Store

DAY = 86400.0


def _ingest(data: Path, called: str, n: int = 2, *, study_uid: str | None = None, patient: str = "P1",
            assoc_id: int | None = None, at: float | None = None) -> str:
    """Index `n` instances of a study as the C-STORE handler does (file first, then its row)."""
    study_uid = study_uid or generate_uid()
    store = Store(data)
    conn = db.connect(data)
    series_uid = generate_uid()
    for i in range(n):
        ds = make_dataset(study_uid=study_uid, series_uid=series_uid, instance_number=i + 1, patient_id=patient)
        path = store.path_for(study_uid, series_uid, ds.SOPInstanceUID)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        rec = index.record_from_dataset(ds, str(path), path.stat().st_size, str(ds.file_meta.TransferSyntaxUID))
        rec.called_aet, rec.assoc_id, rec.received_at = called, assoc_id, at or time.time()
        index.add_instance(conn, rec)
    conn.close()
    return study_uid


def _burn(data: Path, study_uid: str, finished_at: float, state: str = jobs.DONE) -> str:
    """A disc job of the study that a robot finished at `finished_at` (what a driver records)."""
    conn = db.connect(data)
    with db.transaction(conn):
        job_id = jobs.create_job_in(conn, role="any", sop_uids=jobs.study_sop_uids(conn, study_uid), source="manual")
        fields = {"finished_at": finished_at} if state in jobs.FINAL else {}
        assert jobs.move(conn, job_id, (jobs.QUEUED,), state, **fields)
    conn.close()
    return job_id


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    burnstation(folder, "init")
    return folder


def test_settings_validated_with_clear_messages(data: Path) -> None:
    settings = Settings(data)
    assert settings.get("storage.purge_after_days") == 30
    assert settings.get("storage.high_water_percent") == 90
    assert settings.get("storage.low_water_percent") == 80
    assert settings.get("storage.purge_unburned_after_days") == 0
    with pytest.raises(SettingError, match="storage.low_water_percent: must be below storage.high_water_percent"):
        settings.update({"storage.low_water_percent": 95})
    with pytest.raises(SettingError, match="storage.high_water_percent: must be from 1 to 99"):
        settings.update({"storage.high_water_percent": 100})
    proc = burnstation(data, "config", "set", "storage.purge_after_days=-1", check=False)
    assert proc.returncode == 2 and "storage.purge_after_days: must be from 0 to 36500" in proc.stderr
    assert settings.get("storage.purge_after_days") == 30  # nothing changed


def test_rules_dry_run_and_purge(data: Path, tmp_path: Path) -> None:
    """Old burned studies go, the dry run lists exactly what the purge then deletes, and nothing
    unburned, pending, unfinished or archive (with purge_unburned_after_days=0) is touched."""
    now = time.time()
    old = _ingest(data, "BURNSTATION_E", patient="OLD", at=now - 50 * DAY)
    _burn(data, old, now - 40 * DAY)
    older = _ingest(data, "BURNSTATION_E", patient="OLDER", at=now - 60 * DAY)
    _burn(data, older, now - 45 * DAY)
    recent = _ingest(data, "BURNSTATION_E", patient="RECENT", at=now - 3 * DAY)
    _burn(data, recent, now - 2 * DAY)
    resent = _ingest(data, "BURNSTATION_E", patient="RESENT", at=now - 50 * DAY)
    _burn(data, resent, now - 40 * DAY)
    _ingest(data, "BURNSTATION_E", n=1, study_uid=resent, patient="RESENT")  # arrives again: unburned again
    unburned = _ingest(data, "BURNSTATION_E", patient="UNBURNED", at=now - 90 * DAY)
    active = _ingest(data, "BURNSTATION_E", patient="ACTIVE", at=now - 90 * DAY)
    _burn(data, active, now - 80 * DAY)
    _burn(data, active, 0, state=jobs.BURNING)
    failed = _ingest(data, "BURNSTATION_E", patient="FAILED", at=now - 90 * DAY)
    _burn(data, failed, now - 80 * DAY)
    _burn(data, failed, now - 80 * DAY, state=jobs.FAILED)
    archive = _ingest(data, "BURNSTATION", patient="ARCHIVE", at=now - 90 * DAY)
    rearchived = _ingest(data, "BURNSTATION_E", patient="REARCHIVED", at=now - 50 * DAY)
    _burn(data, rearchived, now - 40 * DAY)
    _ingest(data, "BURNSTATION", n=1, study_uid=rearchived, patient="REARCHIVED")  # again, to the archive title
    configure(data, "burn.delay_seconds=86400")
    conn = db.connect(data)
    settings = Settings(data)
    te = index.open_association(conn, "MODALITY", "BURNSTATION_TE", "127.0.0.1", 1, False)
    pending = _ingest(data, "BURNSTATION_TE", patient="PENDING", assoc_id=te)
    routing.Router(conn, settings).run_once()  # its instances join a delayed group, due tomorrow
    assert routing.studies_in_pending_groups(conn) == {pending}
    files_before = {s: [r["path"] for r in index.instances_of_study(conn, s)] for s in (old, older, recent)}

    dry = json.loads(burnstation(data, "storage", "purge", "--dry-run", "--json").stdout)
    assert [s["study_uid"] for s in dry["studies"]] == [older, old]  # oldest last disc first
    assert all(Path(p).exists() for p in files_before[old])  # the dry run deleted nothing
    status = json.loads(burnstation(data, "storage", "status", "--json").stdout)
    assert [s["study_uid"] for s in status["delete"]] == [older, old]
    reasons = {s["study_uid"]: s["protected"] for s in status["protected"]}
    assert "pending delayed group" in reasons[pending]
    assert "not finished" in reasons[active]
    assert "failed" in reasons[failed]
    assert "not (or not all) burned" in reasons[unburned] and "not (or not all) burned" in reasons[resent]
    assert "purge_unburned_after_days = 0" in reasons[archive]
    assert "purge_unburned_after_days = 0" in reasons[rearchived]
    assert [s["study_uid"] for s in status["next"]] == [recent]  # the next by age, and when
    assert status["next"][0]["due_at"] == pytest.approx(now - 2 * DAY + 30 * DAY, abs=5)

    real = json.loads(burnstation(data, "storage", "purge", "--json").stdout)
    assert [s["study_uid"] for s in real["studies"]] == [s["study_uid"] for s in dry["studies"]]
    left = {s["study_uid"] for s in index.study_overview(conn)}
    assert left == {recent, resent, unburned, active, failed, archive, rearchived, pending}
    assert not any(Path(p).exists() for s in (old, older) for p in files_before[s])
    assert not (data / "storage" / old).exists()
    assert all(Path(p).exists() for p in files_before[recent])
    assert len(jobs.list_jobs(conn)) == 9  # the job history stays
    audit = [json.loads(line) for line in (data / "logs" / trail.TRAIL_FILE).read_text().splitlines()]
    assert [(a["action"], a["target"]) for a in audit] == [("study.purged", older), ("study.purged", old)]
    assert audit[0]["patient_id"] == "OLDER" and audit[0]["files_removed"] == 2 and audit[0]["actor"] == "retention"

    # --older-than-days overrides the setting for one run; the archive goes once the setting says so
    again = json.loads(burnstation(data, "storage", "purge", "--older-than-days", "1", "--json").stdout)
    assert [s["study_uid"] for s in again["studies"]] == [recent]
    configure(data, "storage.purge_unburned_after_days=60")
    last = json.loads(burnstation(data, "storage", "purge", "--json").stdout)
    assert [s["study_uid"] for s in last["studies"]] == [archive]
    conn.close()


def test_water_marks_take_oldest_burned_first(data: Path) -> None:
    """Above the high mark, burned studies go oldest disc first until the low mark (free space from
    an injected disk), whatever purge_after_days says; nothing else is taken to get there."""
    configure(data, "storage.purge_after_days=0", "storage.high_water_percent=70",
              "storage.low_water_percent=50", "dicom.min_free_mb=0")
    now = time.time()
    burned = []
    for i in range(5):
        study = _ingest(data, "BURNSTATION_E", patient=f"B{i}", at=now - 10 * DAY)
        _burn(data, study, now - (9 - i) * DAY)
        burned.append(study)
    _ingest(data, "BURNSTATION_E", patient="UNBURNED", at=now - 20 * DAY)
    conn = db.connect(data)
    settings = Settings(data)
    size = index.study_overview(conn, burned[0])[0]["size"]
    total = size * 10
    disk = retention.Disk(total=total, free=int(total * 0.25))  # 75% used: above 70%
    the_plan = retention.plan(conn, settings, data, disk=disk)
    # from 25% free to at least 50% free: three studies of 10% each, the oldest discs
    assert [v.study_uid for v in the_plan.delete] == burned[:3]
    assert all("high water mark" in v.reason for v in the_plan.delete)
    assert retention.plan(conn, settings, data, disk=retention.Disk(total, int(total * 0.35))).delete == []
    conn.close()


def test_purge_never_races_an_arrival(data: Path) -> None:
    """An instance of the study arriving while a purge is planned keeps the study (it is unburned
    again): the purge re-checks under the lock and in the index transaction, and skips it."""
    now = time.time()
    study = _ingest(data, "BURNSTATION_E", at=now - 50 * DAY)
    _burn(data, study, now - 40 * DAY)
    conn = db.connect(data)
    settings = Settings(data)
    the_plan = retention.plan(conn, settings, data)
    assert [v.study_uid for v in the_plan.delete] == [study]
    _ingest(data, "BURNSTATION_E", n=1, study_uid=study)  # arrives between plan and purge
    assert retention.purge(conn, settings, data, the_plan) == []
    assert len(index.instances_of_study(conn, study)) == 3
    # the lock: a purge waits while an arrival holds it (shared), and arrivals share it
    lock = Store(data).lock
    with lock.arrival(), Store(data).lock.arrival():
        proc = subprocess.run(["flock", "-n", "-x", str(lock.path), "true"], capture_output=True)
        assert proc.returncode == 1  # an exclusive (purge) lock is refused meanwhile
    assert subprocess.run(["flock", "-n", "-x", str(lock.path), "true"]).returncode == 0
    conn.close()


# --------------------------------------------------------------------------- a small real data disk


@contextlib.contextmanager
def _tmpfs(folder: Path, size_mb: int) -> Iterator[Path]:
    folder.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.station
def test_small_disk_filled_by_ingest(tmp_path: Path) -> None:
    """A 40 MB data disk takes 16 studies of ~3 MB over C-STORE without one refusal: the burner
    purges burned studies oldest disc first; the pending and archive studies stay; C-FIND no
    longer finds what was purged."""
    with _tmpfs(tmp_path / "disk", 40) as data:
        station = Station(data, dicom__min_free_mb=3, storage__high_water_percent=75,
                          storage__low_water_percent=55, storage__purge_after_days=0,
                          burn__delay_seconds=86400)
        burnstation(data, "nodes", "add", "FINDSCU", "127.0.0.1", "104", "--services", "find")
        with station:
            def send(study_dir: Path, called: str) -> None:
                proc = dcmtk("storescu", "-aet", "MODALITY", "-aec", called, "127.0.0.1", str(station.port),
                             *map(str, sorted(study_dir.glob("*.dcm"))))
                assert proc.returncode == 0 and "Failed" not in proc.stderr and "A700" not in proc.stderr, proc.stderr

            def study_of(folder: Path) -> str:
                return str(dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)

            keep_dirs = {"pending": ("BURNSTATION_TE", "PENDING"), "archive": ("BURNSTATION", "ARCHIVE")}
            kept = {}
            for name, (called, patient) in keep_dirs.items():
                folder = tmp_path / name
                write_study(folder, n_series=1, per_series=6, patient_id=patient, rows=512, cols=512)
                send(folder, called)
                kept[name] = study_of(folder)
            conn = db.connect(data)
            settings = Settings(data)
            wait_for(lambda: routing.studies_in_pending_groups(conn), what="the delayed group")
            burned = []
            start = time.time()
            for i in range(16):
                folder = tmp_path / f"s{i}"
                write_study(folder, n_series=1, per_series=6, patient_id=f"B{i:02}", rows=512, cols=512)
                send(folder, "BURNSTATION")
                study = study_of(folder)
                shutil.rmtree(folder)
                _burn(data, study, start + i)  # its disc finished (oldest first: in order)
                burned.append(study)

                def settled() -> bool:
                    disk = retention.disk_usage(data)
                    return disk.free >= retention.water_marks(settings, disk)[0]
                wait_for(settled, timeout=60, what="the burner purging under the high water mark")
            left = {s["study_uid"] for s in index.study_overview(conn)}
            assert kept["pending"] in left and kept["archive"] in left
            purged = [s for s in burned if s not in left]
            assert purged and purged == burned[:len(purged)], "oldest burned studies first"
            assert len(purged) >= 4
            assert "A700" not in station.log() and "refusing C-STORE" not in station.log()
            proc, found = findscu(station.port, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": purged[0]},
                                  tmp_path / "find")
            assert proc.returncode == 0 and "Final Find Response (Success)" in proc.stderr and found == []
            proc, found = findscu(station.port, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": burned[-1]},
                                  tmp_path / "find")
            assert [str(ds.StudyInstanceUID) for ds in found] == [burned[-1]]
            audit = (data / "logs" / trail.TRAIL_FILE).read_text()
            assert all(s in audit for s in purged)
            conn.close()


def test_timer_backs_off_when_nothing_may_go(data: Path) -> None:
    """Above the mark with nothing deletable, the burner does not re-assess every study every 2 s."""
    configure(data, "storage.high_water_percent=2", "storage.low_water_percent=1")  # any real disk is above
    now = [0.0]
    timer = retention.Timer(Settings(data), data, check_seconds=2, age_seconds=300, idle_seconds=60,
                            clock=lambda: now[0])
    assert timer.due()  # the first pass applies the age rules
    timer.done([])
    now[0] += 2
    assert not timer.due()  # above the mark, but nothing could go a moment ago
    now[0] += 60
    assert timer.due()  # looks again after idle_seconds
    timer.done([{"study_uid": "x"}])  # something went: check again at the next tick
    now[0] += 2
    assert timer.due()
    configure(data, "storage.high_water_percent=99", "storage.low_water_percent=98")
    timer.done([])
    now[0] += 2
    assert timer.due() == (retention.disk_usage(data).used_percent > 99)


@pytest.mark.station
def test_burned_by_the_pipeline_then_purged(tmp_path: Path) -> None:
    """Through the real pipeline: a study sent to _E is burned by the folder robot; only then may it
    go (purge --older-than-days 0), with its disc image; sent again, it is unburned until its new
    disc is done."""
    data = tmp_path / "data"
    usb = tmp_path / "usb"
    usb.mkdir()
    station = Station(data, burn__keep_discs_hours=0)
    burnstation(data, "robots", "add", "usb", "--driver", "folder", "--path", str(usb), "--role", "epson")
    files = write_study(tmp_path / "in", n_series=1, per_series=3, patient_id="P-PIPE")
    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    def send() -> None:
        proc = dcmtk("storescu", "-aet", "MODALITY", "-aec", "BURNSTATION_E", "127.0.0.1", str(station.port),
                     *map(str, files))
        assert proc.returncode == 0, proc.stderr

    def job_states() -> list[str]:
        return [j["state"] for j in json.loads(burnstation(data, "jobs", "list", "--json").stdout)["jobs"]]

    def purge_now() -> list[str]:
        out = json.loads(burnstation(data, "storage", "purge", "--older-than-days", "0", "--json").stdout)
        return [s["study_uid"] for s in out["studies"]]

    with station:
        send()
        wait_for(lambda: job_states() and all(s not in jobs.ACTIVE for s in job_states()), timeout=120,
                 what="the first disc")
        assert job_states() == ["done"]
        first_job = json.loads(burnstation(data, "jobs", "list", "--json").stdout)["jobs"][0]["id"]
        assert (data / "discs" / first_job).is_dir()
        send()  # sent again: unburned until its second disc is done
        conn = db.connect(data)
        verdict = retention.assess(conn, Settings(data), older_than_days=0)[0]
        states = job_states()  # read after the verdict: a second disc not done now was not done then
        assert verdict.study_uid == study
        if len(states) < 2 or states[0] != "done":
            assert verdict.kind == "unburned" and verdict.protected, verdict
        wait_for(lambda: job_states() == ["done", "done"], timeout=120, what="the second disc")
        assert purge_now() == [study]
        assert index.study_overview(conn) == []
        assert not (data / "discs" / first_job).exists()  # its disc image (and previews) went with it
        assert not (data / "storage" / study).exists()
        assert job_states() == ["done", "done"]  # the job history stays
        conn.close()


def test_a_pass_deletes_at_most_its_limit_then_goes_on(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "PASS_LIMIT", 1)
    configure(data, "storage.high_water_percent=99", "storage.low_water_percent=98", "dicom.min_free_mb=0")
    now = time.time()
    studies = []
    for i in range(2):
        study = _ingest(data, "BURNSTATION_P", patient=f"L{i}", at=now - 90 * DAY)
        _burn(data, study, now - (80 - i) * DAY)
        studies.append(study)
    conn = db.connect(data)
    settings = Settings(data)
    clock = [0.0]
    timer = retention.Timer(settings, data, clock=lambda: clock[0])
    assert timer.due()
    first = retention.run_once(conn, settings, data)
    assert [d["study_uid"] for d in first] == studies[:1]
    timer.done(first)
    clock[0] += 2
    assert timer.due()  # the limit was reached: a full pass again at the next tick
    assert [d["study_uid"] for d in retention.run_once(conn, settings, data)] == studies[1:]
    conn.close()
