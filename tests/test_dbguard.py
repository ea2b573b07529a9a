"""state.db protection (appliance/dbguard.py, db.backup): online backups, and a damaged file
restored from the newest backup with the files stored since indexed again and what is lost named.

The unit tests damage real SQLite files the way a failing disk does (pages overwritten with
garbage); the station test does the same between two runs of a real station fed by storescu.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from support import Station, burnstation, dcmtk, findscu, make_dataset, wait_dicom, wait_for

from appliance import db, dbguard, diagnostics, index
from appliance.burn import jobs
from appliance.config import SettingError, Settings
from appliance.panel import screen
from appliance.portal import tokens

INDEX_TABLES = ("patients", "studies", "series", "instances")


def store_files(data: Path, n: int, patient: str) -> list[str]:
    """Write `n` instances of one new study into storage/ as C-STORE would; returns their SOP UIDs."""
    ds0 = make_dataset(patient_id=patient)
    uids = []
    for i in range(n):
        ds = make_dataset(patient_id=patient, study_uid=ds0.StudyInstanceUID, series_uid=ds0.SeriesInstanceUID,
                          instance_number=i + 1)
        folder = data / "storage" / ds.StudyInstanceUID / ds.SeriesInstanceUID
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        uids.append(str(ds.SOPInstanceUID))
    return uids


def index_all(data: Path) -> None:
    conn = db.connect(data)
    try:
        index.sync_with_files(conn, data / "storage")
    finally:
        conn.close()


def damage(data: Path, tables: tuple[str, ...] = INDEX_TABLES) -> None:
    """Overwrite the pages of these tables and their indexes with garbage (the station stopped)."""
    path = db.db_path(data)
    conn = sqlite3.connect(str(path))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    marks = ",".join("?" * len(tables))
    pages = [r[0] for r in conn.execute(f"SELECT rootpage FROM sqlite_master WHERE tbl_name IN ({marks}) "
                                        "AND rootpage > 1", tables)]
    conn.close()
    garbage = bytes((i * 37 + 11) % 256 for i in range(size))
    with open(path, "r+b") as fh:
        for page in pages:
            fh.seek((page - 1) * size)
            fh.write(garbage)


def test_backup_is_a_sound_copy_and_old_ones_are_pruned(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store_files(data, 3, "P1")
    index_all(data)
    made = [dbguard.backup_now(data) for _ in range(db.BACKUP_KEEP + 2)]
    kept = db.backups(data)
    assert kept == sorted(made, reverse=True)[:db.BACKUP_KEEP]
    copy = sqlite3.connect(str(kept[0]))
    assert copy.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    assert copy.execute("SELECT count(*) FROM instances").fetchone()[0] == 3
    copy.close()
    assert not list(db.backup_dir(data).glob(".*tmp"))  # written then renamed: no temp file left


def test_damaged_db_restored_reindexed_and_losses_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    before = store_files(data, 3, "P1")
    index_all(data)
    backup = dbguard.backup_now(data)
    after = store_files(data, 2, "P2")
    index_all(data)
    conn = db.connect(data)
    study = index.studies_of(conn, after)[after[0]]
    _, lost_token = tokens.create(conn, study, 30)  # newer than the backup: cannot come back
    lost_job = jobs.create_job(conn, role="any", sop_uids=after, source="test")
    conn.close()
    damage(data)
    assert dbguard.damaged(data) is not None

    report = dbguard.recover_if_damaged(data)
    assert report is not None
    assert report["backup"] == str(backup)
    assert report["indexed"] == 2 and report["forgotten"] == 0
    assert report["not_recovered"] == {"download tokens": 1, "burn jobs": 1}
    assert report["ids_not_carried"] == []
    assert Path(report["broken"]).exists() and Path(report["broken"]).name.startswith("state.db.broken-")
    assert dbguard.damaged(data) is None
    conn = db.connect(data)
    try:
        assert index.indexed_sop_uids(conn, before + after) == set(before + after)
        # the lost job's and token's ids are never handed out again (their files, their link)
        assert jobs.create_job(conn, role="any", sop_uids=after, source="test") > lost_job
        assert tokens.create(conn, study, 30)[1].id > lost_token.id
    finally:
        conn.close()
    text = "\n".join(dbguard.status(data)["last_recovery_text"])
    assert "burn jobs 1, download tokens 1" in text and "2 stored files indexed" in text
    assert json.loads((db.backup_dir(data) / dbguard.REPORT_FILE).read_text())["indexed"] == 2
    assert screen.station_state(data, Settings(data), None) == ("DB RESTORED", "lost: 1 burn jobs,1 download tokens")
    assert dbguard.recover_if_damaged(data) is None  # sound now: nothing more to do


def test_files_deleted_since_the_backup_are_forgotten(tmp_path: Path) -> None:
    data = tmp_path / "data"
    kept = store_files(data, 2, "P1")
    gone = store_files(data, 2, "P2")
    index_all(data)
    dbguard.backup_now(data)
    for path in (data / "storage").rglob("*.dcm"):
        if path.stem in gone:
            path.unlink()
    damage(data)
    report = dbguard.recover_if_damaged(data)
    assert report is not None and report["forgotten"] == 2 and report["indexed"] == 0
    conn = db.connect(data)
    try:
        assert index.indexed_sop_uids(conn, kept + gone) == set(kept)
    finally:
        conn.close()


def test_unreadable_file_without_backup_starts_empty_and_indexes_every_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    uids = store_files(data, 3, "P1")
    index_all(data)
    db.db_path(data).write_bytes(b"\x00garbage" * 4096)  # not even a header
    report = dbguard.recover_if_damaged(data)
    assert report is not None and report["backup"] is None and report["indexed"] == 3
    assert "-" in report["not_recovered"]
    assert any("everything written after the backup" in line for line in dbguard.describe(report))
    conn = db.connect(data)
    try:
        assert index.indexed_sop_uids(conn, uids) == set(uids)
    finally:
        conn.close()


def test_a_query_that_meets_damage_leaves_the_note(tmp_path: Path) -> None:
    data = tmp_path / "data"
    uids = store_files(data, 2, "P1")
    index_all(data)
    damage(data)
    conn = db.connect(data)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="malformed"):
            index.indexed_sop_uids(conn, uids)
    finally:
        conn.close()
    assert (data / db.DAMAGE_NOTE).exists()
    assert dbguard.status(data)["damage_noted"]


def test_status_reports_a_damaged_db_instead_of_failing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Settings(data).update({"dicom.aet": "STATUSTEST"})
    conn = db.connect(data)
    jobs.create_job(conn, role="any", sop_uids=[], source="test")  # the queue is read from the jobs table
    conn.close()
    damage(data, ("jobs",))
    report = diagnostics.collect(data)
    assert "malformed" in report["state_db"]["error"]
    assert report["queue"] is None
    assert "state.db cannot be read: database disk image is malformed" in diagnostics.render(report)
    assert (data / db.DAMAGE_NOTE).exists()


def test_sound_db_with_a_stale_note_is_left_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    index_all(data)
    db.note_damage(data, sqlite3.DatabaseError("database disk image is malformed"))
    assert dbguard.recover_if_damaged(data) is None
    assert not (data / db.DAMAGE_NOTE).exists()
    assert not list(db.backup_dir(data).glob("state.db.broken-*"))


def test_backup_before_a_schema_change(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store_files(data, 1, "P1")
    index_all(data)
    assert db.backups(data) == []  # a new database is no reason for a backup
    conn = sqlite3.connect(str(db.db_path(data)))
    conn.execute("PRAGMA user_version=1")  # as an older version of the schema left it
    conn.close()
    db._applied.clear()
    db.connect(data).close()
    found = db.backups(data)
    assert len(found) == 1
    copy = sqlite3.connect(str(found[0]))
    assert copy.execute("PRAGMA user_version").fetchone()[0] == 1  # the state before the migration
    copy.close()
    db._applied.clear()
    db.connect(data).close()
    assert len(db.backups(data)) == 1  # the same schema again: no new backup


def test_backup_hours_setting_is_validated(tmp_path: Path) -> None:
    settings = Settings(tmp_path / "data")
    for bad in ("0", "169", "hourly", "-1"):
        with pytest.raises(SettingError, match="db.backup_hours"):
            settings.update({"db.backup_hours": bad})
    settings.update({"db.backup_hours": "24"})
    assert settings.get("db.backup_hours") == 24


def test_keeper_backs_up_when_due_and_stops_on_damage(tmp_path: Path) -> None:
    data = tmp_path / "data"
    index_all(data)
    damaged = threading.Event()
    keeper = dbguard.Keeper(data, damaged.set, poll=0.05)
    keeper.start()
    try:
        wait_for(lambda: db.backups(data), 10, "the first backup")
        assert not keeper.due()  # db.backup_hours (1) has not passed
        db.note_damage(data, sqlite3.DatabaseError("database disk image is malformed"))
        wait_for(damaged.is_set, 10, "the keeper to call for a restore")
    finally:
        keeper.stop.set()
        keeper.join(5)
    assert len(db.backups(data)) == 1


# --------------------------------------------------------------------------- a real station


def study_counts(st: Station, out: Path) -> dict[str, int]:
    """Patient ID → instances of its study, as findscu (C-FIND, study level) sees them."""
    proc, found = findscu(st.port, {"QueryRetrieveLevel": "STUDY", "PatientID": "", "StudyInstanceUID": "",
                                    "NumberOfStudyRelatedInstances": ""}, out)
    assert proc.returncode == 0, proc.stderr
    return {str(d.PatientID): int(d.NumberOfStudyRelatedInstances) for d in found}


@pytest.mark.station
def test_station_restores_a_damaged_db_and_finds_every_instance(tmp_path: Path) -> None:
    data = tmp_path / "data"
    st = Station(data)
    burnstation(data, "nodes", "add", "FINDSCU", "127.0.0.1", "104")  # allowed to query
    first, second = tmp_path / "first", tmp_path / "second"
    studies = {}
    for folder, patient, n in ((first, "FIRST", 4), (second, "SECOND", 3)):
        folder.mkdir()
        ds0 = make_dataset(patient_id=patient)
        studies[patient] = str(ds0.StudyInstanceUID)
        for i in range(n):
            make_dataset(patient_id=patient, study_uid=ds0.StudyInstanceUID, instance_number=i + 1).save_as(
                folder / f"{i}.dcm", enforce_file_format=True)
    with st:
        r = dcmtk("storescu", "-aec", st.aet, "127.0.0.1", str(st.port), *map(str, sorted(first.iterdir())))
        assert r.returncode == 0, r.stderr
        burnstation(data, "db-backup")
        r = dcmtk("storescu", "-aec", st.aet, "127.0.0.1", str(st.port), *map(str, sorted(second.iterdir())))
        assert r.returncode == 0, r.stderr
        wait_for(lambda: study_counts(st, tmp_path / "q0") == {"FIRST": 4, "SECOND": 3}, 30, "both studies indexed")
        burnstation(data, "tokens", "create", "--study", studies["SECOND"])
    damage(data)
    assert dbguard.damaged(data) is not None
    with st:
        assert study_counts(st, tmp_path / "q1") == {"FIRST": 4, "SECOND": 3}
        status = burnstation(data, "status").stdout
        assert "last restore: state.db was damaged" in status, status
        assert "3 stored files indexed that the backup did not list" in status, status
        assert "not recovered (newer than the backup): download tokens 1" in status, status
        log = st.log()
        assert "restoring it from the newest backup" in log and "download tokens 1" in log
        wait_for(lambda: len(db.backups(data)) >= 2, 30, "a backup of the restored database")
    broken = list(db.backup_dir(data).glob("state.db.broken-*Z"))  # kept for inspection (with its -wal)
    assert len(broken) == 1 and os.path.getsize(broken[0]) > 0


@pytest.mark.station
def test_damage_met_at_runtime_stops_restores_and_restarts_the_station(tmp_path: Path) -> None:
    """A C-FIND that meets a damaged index leaves the note; the station stops its processes, restores
    state.db and starts them again, with every stored instance findable."""
    data = tmp_path / "data"
    st = Station(data)
    burnstation(data, "nodes", "add", "FINDSCU", "127.0.0.1", "104")
    files = tmp_path / "in"
    files.mkdir()
    ds0 = make_dataset(patient_id="RUNTIME")
    for i in range(5):
        make_dataset(patient_id="RUNTIME", study_uid=ds0.StudyInstanceUID, instance_number=i + 1).save_as(
            files / f"{i}.dcm", enforce_file_format=True)
    paths = sorted(map(str, files.iterdir()))
    with st:
        assert dcmtk("storescu", "-aec", st.aet, "127.0.0.1", str(st.port), *paths[:3]).returncode == 0
        burnstation(data, "db-backup")
        assert dcmtk("storescu", "-aec", st.aet, "127.0.0.1", str(st.port), *paths[3:]).returncode == 0
        wait_for(lambda: study_counts(st, tmp_path / "q0") == {"RUNTIME": 5}, 30, "the study indexed")
        damage(data)
        findscu(st.port, {"QueryRetrieveLevel": "STUDY", "PatientID": "", "StudyInstanceUID": ""}, tmp_path / "q1")
        wait_for(lambda: "every process stopped for the state.db restore" in st.log(), 60, "the restore")
        wait_dicom(st.port, timeout=60)
        assert study_counts(st, tmp_path / "q2") == {"RUNTIME": 5}
        status = burnstation(data, "status").stdout
        assert "2 stored files indexed that the backup did not list" in status, status
        assert st.proc is not None and st.proc.poll() is None


def test_a_new_state_db_with_a_reused_inode_number_gets_its_tables(tmp_path: Path) -> None:
    """Found by the full suite: `reindex` after removing state.db, in the same process, met an empty
    new file that the file system had given the old file's inode number, so db.connect took it for the
    file it had already set up and gave it no tables."""
    db.connect(tmp_path).close()
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    (tmp_path / "state.db").touch()
    st = (tmp_path / "state.db").stat()
    db._applied.add((str((tmp_path / "state.db").resolve()), st.st_dev, st.st_ino))  # as an inode reuse leaves it
    conn = db.connect(tmp_path)
    assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0
