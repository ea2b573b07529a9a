"""The study index in state.db: patients, studies, series, instances and the association log.

One row per instance remembers the file stored last for its SOP Instance UID (and the association
and called AE title that stored that file). What each association received is its own relation,
`association_instances` (this module is its only owner): a later store of the same SOP Instance UID,
by another association, replaces the file and the `instances` row but never what an earlier
association received, so the burn pipeline reads an association's instances from there.
Patient/study/series rows carry the attributes C-FIND matches on; everything else is read from the
files when a query asks for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance import db

LOG = logging.getLogger("burnstation.index")

if TYPE_CHECKING:  # pydicom is imported where a dataset is read: the hl7 process uses this module without one
    from pydicom.dataset import Dataset

    from appliance.storage import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
    patient_id   TEXT PRIMARY KEY,  -- the key: Patient ID, or a made-up key for a patient without one
    id_value     TEXT NOT NULL DEFAULT '',  -- the Patient ID as received ('' when there is none)
    patient_name TEXT NOT NULL DEFAULT '',
    birth_date   TEXT NOT NULL DEFAULT '',
    sex          TEXT NOT NULL DEFAULT '',
    issuer       TEXT NOT NULL DEFAULT '',
    charset      TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid     TEXT PRIMARY KEY,
    patient_id    TEXT NOT NULL,
    study_date    TEXT NOT NULL DEFAULT '',
    study_time    TEXT NOT NULL DEFAULT '',
    accession     TEXT NOT NULL DEFAULT '',
    study_id      TEXT NOT NULL DEFAULT '',
    description   TEXT NOT NULL DEFAULT '',
    referring     TEXT NOT NULL DEFAULT '',
    institution   TEXT NOT NULL DEFAULT '',
    charset       TEXT NOT NULL DEFAULT '',
    updated_at    REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS studies_patient ON studies(patient_id);
CREATE INDEX IF NOT EXISTS studies_date ON studies(study_date);
CREATE INDEX IF NOT EXISTS studies_accession ON studies(accession);
CREATE TABLE IF NOT EXISTS series (
    series_uid    TEXT PRIMARY KEY,
    study_uid     TEXT NOT NULL,
    modality      TEXT NOT NULL DEFAULT '',
    series_number TEXT NOT NULL DEFAULT '',
    description   TEXT NOT NULL DEFAULT '',
    body_part     TEXT NOT NULL DEFAULT '',
    series_date   TEXT NOT NULL DEFAULT '',
    series_time   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid         TEXT PRIMARY KEY,
    series_uid      TEXT NOT NULL,
    study_uid       TEXT NOT NULL,
    sop_class       TEXT NOT NULL DEFAULT '',
    instance_number TEXT NOT NULL DEFAULT '',
    transfer_syntax TEXT NOT NULL DEFAULT '',
    path            TEXT NOT NULL,
    size            INTEGER NOT NULL DEFAULT 0,
    assoc_id        INTEGER,  -- the association that stored this file (what each received: association_instances)
    called_aet      TEXT NOT NULL DEFAULT '',
    calling_aet     TEXT NOT NULL DEFAULT '',
    received_at     REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE INDEX IF NOT EXISTS instances_assoc ON instances(assoc_id);
CREATE TABLE IF NOT EXISTS associations (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    calling_aet  TEXT NOT NULL DEFAULT '',
    called_aet   TEXT NOT NULL DEFAULT '',
    peer_host    TEXT NOT NULL DEFAULT '',
    peer_port    INTEGER NOT NULL DEFAULT 0,
    tls          INTEGER NOT NULL DEFAULT 0,
    started_at   REAL NOT NULL,
    ended_at     REAL,
    stored       INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0,
    services     TEXT NOT NULL DEFAULT '',
    result       TEXT NOT NULL DEFAULT 'open',
    detail       TEXT NOT NULL DEFAULT '',
    worker       INTEGER NOT NULL DEFAULT 1  -- the dicom worker process that served it (1..dicom.workers)
);
CREATE INDEX IF NOT EXISTS associations_started ON associations(started_at);
-- what each association received, one row per (association, SOP Instance UID); never rewritten by
-- a later association storing the same instance. `id` is the order of arrival (a cursor for pollers;
-- the same association storing an instance again gives its row a new id).
CREATE TABLE IF NOT EXISTS association_instances (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    assoc_id    INTEGER NOT NULL,
    sop_uid     TEXT NOT NULL,
    received_at REAL NOT NULL DEFAULT 0,
    UNIQUE (assoc_id, sop_uid)
);
CREATE INDEX IF NOT EXISTS association_instances_sop ON association_instances(sop_uid);
"""


NO_ID_PREFIX = "\x1fnoid:"  # a control character: no real Patient ID (VR LO) can start with it


def _add_id_value(conn: sqlite3.Connection) -> None:
    """Databases made before `id_value` existed: add it (every key then was a real Patient ID)."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(patients)")}
    if "id_value" not in columns:
        conn.execute("ALTER TABLE patients ADD COLUMN id_value TEXT NOT NULL DEFAULT ''")
        conn.execute("UPDATE patients SET id_value=patient_id")


def _fill_association_instances(conn: sqlite3.Connection) -> None:
    """Databases made before `association_instances` existed: each association received (at least)
    the instances whose `instances.assoc_id` still names it. Runs when the relation is empty while
    instances name associations, which only an older database can be (every store writes both)."""
    if conn.execute("SELECT 1 FROM association_instances LIMIT 1").fetchone() is not None:
        return
    if conn.execute("SELECT 1 FROM instances WHERE assoc_id IS NOT NULL LIMIT 1").fetchone() is None:
        return
    with db.transaction(conn):
        conn.execute("INSERT OR IGNORE INTO association_instances (assoc_id, sop_uid, received_at) "
                     "SELECT assoc_id, sop_uid, received_at FROM instances WHERE assoc_id IS NOT NULL "
                     "ORDER BY received_at, rowid")


def _add_association_worker(conn: sqlite3.Connection) -> None:
    """Databases made before several dicom workers: every association was served by the one process."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(associations)")}
    if "worker" not in columns:
        conn.execute("ALTER TABLE associations ADD COLUMN worker INTEGER NOT NULL DEFAULT 1")


# applied by db.connect after every owner's SCHEMA, in this order
MIGRATIONS = (("index.patients.id_value", _add_id_value),
              ("index.association_instances.fill", _fill_association_instances),
              ("index.associations.worker", _add_association_worker))


def patient_key(patient: dict[str, str]) -> str:
    """The index key of a patient: its Patient ID, or for a patient without one a key made from
    name and birth date, so two ID-less patients never share a record (nor a name in C-FIND)."""
    pid = patient.get("patient_id", "")
    if pid:
        return pid
    seed = f"{patient.get('patient_name', '')}\x00{patient.get('birth_date', '')}".encode("utf-8", "surrogateescape")
    return NO_ID_PREFIX + hashlib.sha1(seed).hexdigest()[:24]


def _plain_text(ds: Dataset, keyword: str) -> str:
    """An attribute as plain text ('' when absent or empty); multi-values joined with a backslash."""
    elem = ds.get(keyword)
    if elem is None or elem == "" or elem is None:
        return ""
    if hasattr(elem, "__iter__") and not isinstance(elem, str | bytes) and not hasattr(elem, "family_name"):
        return "\\".join(str(v) for v in elem)
    return str(elem).strip()


@dataclass
class InstanceRecord:
    """What the index keeps about one stored instance."""

    sop_uid: str
    sop_class: str
    series_uid: str
    study_uid: str
    path: str
    size: int
    transfer_syntax: str
    patient: dict[str, str] = field(default_factory=dict)
    study: dict[str, str] = field(default_factory=dict)
    series: dict[str, str] = field(default_factory=dict)
    instance_number: str = ""
    assoc_id: int | None = None
    called_aet: str = ""
    calling_aet: str = ""
    received_at: float = 0.0


_text = _plain_text


def record_from_dataset(ds: Dataset, path: str, size: int, transfer_syntax: str) -> InstanceRecord:
    """Extract the indexed attributes from a dataset (names decoded with its character set); the
    store handler's raw parser (dicom/rawparse.IndexAttributes) brings its own `index_texts`."""
    from pydicom.dataset import Dataset

    texts = ds.index_texts() if not isinstance(ds, Dataset) and hasattr(ds, "index_texts") else None
    if texts is not None:
        def _text(_ds: Any, keyword: str) -> str:
            return texts[keyword]
    else:
        _text = _plain_text
    charset = _text(ds, "SpecificCharacterSet")
    patient_id = _text(ds, "PatientID")
    return InstanceRecord(
        sop_uid=_text(ds, "SOPInstanceUID"),
        sop_class=_text(ds, "SOPClassUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        path=path,
        size=size,
        transfer_syntax=transfer_syntax,
        instance_number=_text(ds, "InstanceNumber"),
        patient={
            "patient_id": patient_id,
            "patient_name": _text(ds, "PatientName"),
            "birth_date": _text(ds, "PatientBirthDate"),
            "sex": _text(ds, "PatientSex"),
            "issuer": _text(ds, "IssuerOfPatientID"),
            "charset": charset,
        },
        study={
            "study_date": _text(ds, "StudyDate"),
            "study_time": _text(ds, "StudyTime"),
            "accession": _text(ds, "AccessionNumber"),
            "study_id": _text(ds, "StudyID"),
            "description": _text(ds, "StudyDescription"),
            "referring": _text(ds, "ReferringPhysicianName"),
            "institution": _text(ds, "InstitutionName"),
            "charset": charset,
        },
        series={
            "modality": _text(ds, "Modality"),
            "series_number": _text(ds, "SeriesNumber"),
            "description": _text(ds, "SeriesDescription"),
            "body_part": _text(ds, "BodyPartExamined"),
            "series_date": _text(ds, "SeriesDate"),
            "series_time": _text(ds, "SeriesTime"),
        },
    )


# BURNSTATION_FASTPATH part "lean_index": a lone arrival's transaction without a savepoint, and the
# patient and series rows rewritten only when they changed
_FASTPATH = os.environ.get("BURNSTATION_FASTPATH", "1").strip()
LEAN_INDEX = _FASTPATH in ("1", "") or "lean_index" in {p.strip() for p in _FASTPATH.split(",")}
_UPSERT_SQL: dict[tuple[str, str, tuple[str, ...], bool], str] = {}


def _upsert(conn: sqlite3.Connection, table: str, key: str, values: dict[str, Any], only_changed: bool = False) -> None:
    """INSERT or UPDATE one row; `only_changed`: an existing row equal to `values` is left alone, so
    its page is not rewritten to the WAL in every arrival's commit (the same patient and series
    come with every instance of a study)."""
    cols = tuple(values)
    sql = _UPSERT_SQL.get((table, key, cols, only_changed))
    if sql is None:
        others = [c for c in cols if c != key]
        updates = ", ".join(f"{c}=excluded.{c}" for c in others)
        sql = (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
               f"ON CONFLICT({key}) DO UPDATE SET {updates}")
        if only_changed and others:
            sql += (f" WHERE ({', '.join(others)}) IS NOT "
                    f"({', '.join('excluded.' + c for c in others)})")
        _UPSERT_SQL[(table, key, cols, only_changed)] = sql
    conn.execute(sql, [values[c] for c in cols])


def add_instance(conn: sqlite3.Connection, rec: InstanceRecord, *, arrival: bool = True) -> str | None:
    """Index one instance (replacing an older copy of the same SOP Instance UID), and with
    `arrival` and `rec.assoc_id` record that this association received it (`reindex` passes
    arrival=False: rebuilding the index receives nothing).

    Returns the path of the replaced file when it differs from the new one, so the caller can
    delete it once the new copy is safe.
    """
    with db.transaction(conn):
        return _add_instance_in(conn, rec, arrival, time.time())


def add_instances(conn: sqlite3.Connection, recs: Sequence[InstanceRecord]) -> list[str | None | Exception]:
    """Index several arrivals in ONE transaction (the dicom workers' group commit): per record, the
    replaced path (as `add_instance`) or the exception that record raised. A failing record is
    rolled back to its own savepoint and does not take the others with it; an error of the
    transaction itself (BEGIN or COMMIT) raises, and then nothing of the batch is committed."""
    now = time.time()
    out: list[str | None | Exception] = []
    if len(recs) == 1 and LEAN_INDEX:  # alone, it needs no savepoint: the ROLLBACK undoes its part
        failed: list[Exception] = []
        try:
            with db.transaction(conn):
                try:
                    return [_add_instance_in(conn, recs[0], True, now)]
                except sqlite3.Error as exc:
                    failed.append(exc)
                    raise
        except sqlite3.Error:
            if not failed:  # BEGIN or COMMIT: the transaction's own error raises, as for a batch
                raise
            return [failed[0]]
    with db.transaction(conn):
        for rec in recs:
            conn.execute("SAVEPOINT arrival")
            try:
                out.append(_add_instance_in(conn, rec, True, now))
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK TO arrival")
                out.append(exc)
            conn.execute("RELEASE arrival")
    return out


def _add_instance_in(conn: sqlite3.Connection, rec: InstanceRecord, arrival: bool, now: float) -> str | None:
    """`add_instance` inside the caller's transaction."""
    old_path = None
    # what is there now: the instance (its old copy) and the patient its study belongs to, in one statement
    found = conn.execute("SELECT i.path, i.series_uid, i.study_uid, "
                         "(SELECT patient_id FROM studies WHERE study_uid=?) AS study_patient "
                         "FROM (SELECT 1) LEFT JOIN instances i ON i.sop_uid=?", (rec.study_uid, rec.sop_uid)).fetchone()
    row = found if found["path"] is not None else None
    if row is not None and row["path"] != rec.path:
        old_path = row["path"]
    study_patient = found["study_patient"]
    key = patient_key(rec.patient)
    _upsert(conn, "patients", "patient_id", {**rec.patient, "patient_id": key,
                                             "id_value": rec.patient.get("patient_id", "")}, LEAN_INDEX)
    if LEAN_INDEX:  # the study's indexed columns rewritten only when they changed (each index: a page per commit)
        _upsert(conn, "studies", "study_uid", {"study_uid": rec.study_uid, "patient_id": key, **rec.study}, True)
        conn.execute("UPDATE studies SET updated_at=? WHERE study_uid=?", (now, rec.study_uid))
    else:
        _upsert(conn, "studies", "study_uid",
                {"study_uid": rec.study_uid, "patient_id": key, **rec.study, "updated_at": now})
    _upsert(conn, "series", "series_uid", {"series_uid": rec.series_uid, "study_uid": rec.study_uid, **rec.series},
            LEAN_INDEX)
    _upsert(conn, "instances", "sop_uid", {
        "sop_uid": rec.sop_uid, "series_uid": rec.series_uid, "study_uid": rec.study_uid,
        "sop_class": rec.sop_class, "instance_number": rec.instance_number,
        "transfer_syntax": rec.transfer_syntax, "path": rec.path, "size": rec.size,
        "assoc_id": rec.assoc_id, "called_aet": rec.called_aet, "calling_aet": rec.calling_aet,
        "received_at": rec.received_at or now,
    })
    if arrival and rec.assoc_id is not None:
        # stored again by the same association: one row still, but a new arrival (a new id)
        conn.execute("INSERT OR REPLACE INTO association_instances (assoc_id, sop_uid, received_at) "
                     "VALUES (?, ?, ?)", (rec.assoc_id, rec.sop_uid, rec.received_at or now))
    # a re-sent object that moved (other series/study, or the study to another patient) must
    # not leave an empty series, study or patient behind for C-FIND to list
    if row is not None and (row["series_uid"], row["study_uid"]) != (rec.series_uid, rec.study_uid):
        _prune(conn, row["series_uid"], row["study_uid"])
    if study_patient is not None and study_patient != key:
        conn.execute("DELETE FROM patients WHERE patient_id=? AND NOT EXISTS "
                     "(SELECT 1 FROM studies WHERE patient_id=?)", (study_patient, study_patient))
    return old_path


def instance_path(conn: sqlite3.Connection, sop_uid: str) -> str | None:
    """The path the index names for a SOP Instance UID now (None when it is not indexed)."""
    row = conn.execute("SELECT path FROM instances WHERE sop_uid=?", (sop_uid,)).fetchone()
    return None if row is None else row["path"]


def _prune(conn: sqlite3.Connection, series_uid: str, study_uid: str) -> None:
    """Delete the series, study and patient rows that no instance belongs to any more."""
    conn.execute("DELETE FROM series WHERE series_uid=? AND NOT EXISTS (SELECT 1 FROM instances WHERE series_uid=?)",
                 (series_uid, series_uid))
    owner = conn.execute("SELECT patient_id FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
    conn.execute("DELETE FROM studies WHERE study_uid=? AND NOT EXISTS (SELECT 1 FROM instances WHERE study_uid=?)",
                 (study_uid, study_uid))
    if owner is not None:
        conn.execute("DELETE FROM patients WHERE patient_id=? AND NOT EXISTS (SELECT 1 FROM studies WHERE patient_id=?)",
                     (owner["patient_id"], owner["patient_id"]))


# --------------------------------------------------------------------------- retention (appliance/retention.py)


def study_overview(conn: sqlite3.Connection, study_uid: str | None = None) -> list[dict[str, Any]]:
    """One row per indexed study (or just `study_uid`): patient, date, description, instance count,
    bytes, the last arrival and the called AE titles it arrived on (what retention decides on)."""
    where, args = ("WHERE i.study_uid=?", (study_uid,)) if study_uid is not None else ("", ())
    rows = conn.execute(
        "SELECT i.study_uid, COUNT(*) AS instances, COALESCE(SUM(i.size), 0) AS size, "
        "MAX(i.received_at) AS last_received, group_concat(DISTINCT i.called_aet) AS called_aets, "
        "COALESCE(p.id_value, '') AS patient_id, COALESCE(p.patient_name, '') AS patient_name, "
        "COALESCE(st.study_date, '') AS study_date, COALESCE(st.description, '') AS description "
        f"FROM instances i LEFT JOIN studies st ON st.study_uid=i.study_uid "
        f"LEFT JOIN patients p ON p.patient_id=st.patient_id {where} GROUP BY i.study_uid", args).fetchall()
    out = []
    for row in rows:
        item = dict(row)
        item["called_aets"] = sorted(set((item["called_aets"] or "").split(",")))
        out.append(item)
    return out


def instances_of_study(conn: sqlite3.Connection, study_uid: str) -> list[sqlite3.Row]:
    """The index rows of a study's instances."""
    return conn.execute("SELECT * FROM instances WHERE study_uid=? ORDER BY series_uid, sop_uid",
                        (study_uid,)).fetchall()


def delete_study_in(conn: sqlite3.Connection, study_uid: str) -> list[str]:
    """Delete a study's instance, series and study rows (and its patient when no other study is
    left) inside the caller's transaction; returns the paths of its files for the caller to unlink.
    What associations received (`association_instances`) and the association log stay: history."""
    paths = [r["path"] for r in conn.execute("SELECT path FROM instances WHERE study_uid=?", (study_uid,))]
    owner = conn.execute("SELECT patient_id FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
    conn.execute("DELETE FROM instances WHERE study_uid=?", (study_uid,))
    conn.execute("DELETE FROM series WHERE study_uid=?", (study_uid,))
    conn.execute("DELETE FROM studies WHERE study_uid=?", (study_uid,))
    if owner is not None:
        conn.execute("DELETE FROM patients WHERE patient_id=? AND NOT EXISTS (SELECT 1 FROM studies WHERE patient_id=?)",
                     (owner["patient_id"], owner["patient_id"]))
    return paths


# --------------------------------------------------------------------------- association log


def open_association(conn: sqlite3.Connection, calling: str, called: str, host: str, port: int,
                     tls: bool, worker: int = 1) -> int:
    cur = conn.execute(
        "INSERT INTO associations (calling_aet, called_aet, peer_host, peer_port, tls, started_at, worker) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (calling, called, host, port, int(tls), time.time(), worker),
    )
    return int(cur.lastrowid or 0)


def close_association(conn: sqlite3.Connection, assoc_id: int, *, stored: int, failed: int,
                      services: Iterable[str], result: str, detail: str = "") -> None:
    conn.execute(
        "UPDATE associations SET ended_at=?, stored=?, failed=?, services=?, result=?, detail=? WHERE id=?",
        (time.time(), stored, failed, ",".join(sorted(set(services))), result, detail[:1000], assoc_id),
    )


_LEFT_OPEN = "result='open' AND (worker=? OR (?=1 AND (worker>? OR worker<1)))"  # worker, worker, workers


def close_interrupted_associations(conn: sqlite3.Connection, worker: int = 1, workers: int = 1) -> int:
    """Mark associations still 'open' from before a crash as 'interrupted', with what they stored.

    Call once when dicom worker `worker` (of `workers`) starts, before it accepts anything: its
    'open' rows belong to its own process that is gone. Worker 1 also closes those of workers
    numbered above `workers` (the setting was lowered: nobody else will).
    """
    cur = conn.execute(
        "UPDATE associations SET result='interrupted', ended_at=?, detail='the station stopped during it', "
        "stored=(SELECT COUNT(*) FROM association_instances a WHERE a.assoc_id=associations.id) "
        f"WHERE {_LEFT_OPEN}", (time.time(), worker, worker, workers))
    return cur.rowcount


def interrupted_since(conn: sqlite3.Connection, worker: int = 1, workers: int = 1) -> float | None:
    """When the earliest association that `close_interrupted_associations` would close started
    (None: there is none, the last stop of this worker was clean)."""
    row = conn.execute(f"SELECT MIN(started_at) FROM associations WHERE {_LEFT_OPEN}",
                       (worker, worker, workers)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def paths_received_since(conn: sqlite3.Connection, since: float) -> set[str]:
    """The paths the index names for instances received at or after `since`."""
    return {r[0] for r in conn.execute("SELECT path FROM instances WHERE received_at >= ?", (since,))}


def recent_associations(conn: sqlite3.Connection, limit: int = 100) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM associations ORDER BY id DESC LIMIT ?", (limit,)).fetchall()


def instances_of_association(conn: sqlite3.Connection, assoc_id: int) -> list[sqlite3.Row]:
    """The index rows (the file stored last) of every instance the association received that is
    still in the index, whichever association stored it since."""
    return conn.execute("SELECT i.* FROM association_instances a JOIN instances i ON i.sop_uid=a.sop_uid "
                        "WHERE a.assoc_id=? ORDER BY i.study_uid, i.series_uid, "
                        "CAST(i.instance_number AS INTEGER), i.sop_uid", (assoc_id,)).fetchall()


def association_sop_uids(conn: sqlite3.Connection, assoc_id: int) -> list[str]:
    """SOP Instance UIDs the association received that are still in the index, in arrival order."""
    return [r["sop_uid"] for r in conn.execute(
        "SELECT a.sop_uid FROM association_instances a JOIN instances i ON i.sop_uid=a.sop_uid "
        "WHERE a.assoc_id=? ORDER BY a.id", (assoc_id,))]


def association_arrivals(conn: sqlite3.Connection, assoc_id: int) -> list[sqlite3.Row]:
    """What delayed grouping needs of each instance the association received (still in the index),
    in arrival order: arrival_id, sop_uid, series_uid, study_uid, size (of the file stored last),
    received_at (when this association delivered it) and patient_id (as received, '' if none)."""
    return conn.execute(
        "SELECT a.id AS arrival_id, a.sop_uid, i.series_uid, i.study_uid, i.size, a.received_at, p.id_value AS patient_id "
        "FROM association_instances a JOIN instances i ON i.sop_uid=a.sop_uid "
        "LEFT JOIN studies st ON st.study_uid=i.study_uid LEFT JOIN patients p ON p.patient_id=st.patient_id "
        "WHERE a.assoc_id=? ORDER BY a.id", (assoc_id,)).fetchall()


def association_last_arrival_id(conn: sqlite3.Connection, assoc_id: int) -> int:
    """The newest arrival id among the association's instances still in the index (0: none)."""
    return int(conn.execute("SELECT COALESCE(MAX(a.id), 0) FROM association_instances a "
                            "JOIN instances i ON i.sop_uid=a.sop_uid WHERE a.assoc_id=?", (assoc_id,)).fetchone()[0])


def association_last_arrival(conn: sqlite3.Connection, assoc_id: int) -> float | None:
    """When the association last delivered an instance (None: nothing yet)."""
    return conn.execute("SELECT MAX(received_at) FROM association_instances WHERE assoc_id=?",
                        (assoc_id,)).fetchone()[0]


def arrivals_since(conn: sqlite3.Connection, after: int, limit: int = 20000) -> list[tuple[int, str]]:
    """(arrival id, Study Instance UID) of instances received after arrival `after`, in order; a re-sent
    instance is a new arrival (its study as the index has it now, '' when no longer indexed). For pollers
    such as the worklist link."""
    return [(int(r[0]), str(r[1])) for r in conn.execute(
        "SELECT a.id, COALESCE(i.study_uid, '') FROM association_instances a "
        "LEFT JOIN instances i ON i.sop_uid=a.sop_uid WHERE a.id > ? ORDER BY a.id LIMIT ?", (after, limit))]


def last_arrival_id(conn: sqlite3.Connection) -> int:
    """The newest arrival id (0 when nothing arrived)."""
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM association_instances").fetchone()[0])


def _contains(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with the user's % and _ taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def search_studies(conn: sqlite3.Connection, *, name: str = "", patient_id: str = "", date_from: str = "",
                   date_to: str = "", modality: str = "", accession: str = "", offset: int = 0,
                   limit: int = 50) -> tuple[list[dict[str, Any]], int]:
    """Studies for the web UI's list, newest study date first, with the total count for paging.

    Name and ID match anywhere (case-insensitive), dates are YYYYMMDD bounds, modality is exact.
    """
    where, args = [], []
    if name:
        where.append("p.patient_name LIKE ? ESCAPE '\\'")
        args.append(_contains(name))
    if patient_id:
        where.append("p.id_value LIKE ? ESCAPE '\\'")
        args.append(_contains(patient_id))
    if date_from:
        where.append("st.study_date >= ?")
        args.append(date_from)
    if date_to:
        where.append("st.study_date <= ?")
        args.append(date_to)
    if accession:
        where.append("st.accession LIKE ? ESCAPE '\\'")
        args.append(_contains(accession))
    if modality:
        where.append("EXISTS (SELECT 1 FROM series se WHERE se.study_uid=st.study_uid AND se.modality=?)")
        args.append(modality)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    base = f"FROM studies st LEFT JOIN patients p ON p.patient_id=st.patient_id {clause}"
    total = conn.execute(f"SELECT COUNT(*) {base}", args).fetchone()[0]
    order = "ORDER BY st.study_date DESC, st.study_time DESC, st.study_uid"
    # pick the page first, then count series and instances for those rows only (not for every match)
    rows = conn.execute(
        f"SELECT st.*, p.patient_name, p.id_value, p.birth_date, p.sex, "
        f"(SELECT group_concat(DISTINCT se.modality) FROM series se WHERE se.study_uid=st.study_uid) AS modalities, "
        f"(SELECT COUNT(*) FROM instances i WHERE i.study_uid=st.study_uid) AS instances "
        f"FROM studies st LEFT JOIN patients p ON p.patient_id=st.patient_id "
        f"WHERE st.study_uid IN (SELECT st.study_uid {base} {order} LIMIT ? OFFSET ?) {order}",
        (*args, limit, offset)).fetchall()
    return [dict(r) for r in rows], total


def recent_studies(conn: sqlite3.Connection, since: float, limit: int = 50) -> list[dict[str, Any]]:
    """Studies that received an instance after `since` (epoch seconds), newest arrival first."""
    rows = conn.execute(
        "SELECT st.*, p.patient_name, p.id_value, MAX(i.received_at) AS last_received, COUNT(*) AS instances "
        "FROM instances i JOIN studies st ON st.study_uid=i.study_uid "
        "LEFT JOIN patients p ON p.patient_id=st.patient_id WHERE i.received_at >= ? "
        "GROUP BY st.study_uid ORDER BY last_received DESC LIMIT ?", (since, limit)).fetchall()
    return [dict(r) for r in rows]


def association(conn: sqlite3.Connection, assoc_id: int) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM associations WHERE id=?", (assoc_id,)).fetchone()


def associations_after(conn: sqlite3.Connection, after: int, limit: int = 1000) -> list[sqlite3.Row]:
    """Associations logged after id `after`, oldest first (id, called_aet, ...)."""
    return conn.execute("SELECT * FROM associations WHERE id > ? ORDER BY id LIMIT ?", (after, limit)).fetchall()


def first_association_since(conn: sqlite3.Connection, since: float) -> int | None:
    """The id of the oldest association still open or ended after `since` (None when there is none)."""
    return conn.execute("SELECT MIN(id) AS id FROM associations WHERE ended_at IS NULL OR ended_at >= ?",
                        (since,)).fetchone()["id"]


def last_association_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) AS id FROM associations").fetchone()["id"])


def forget_association(conn: sqlite3.Connection, assoc_id: int) -> None:
    """Drop an association from the log (one that only queried the worklist: nothing to keep)."""
    conn.execute("DELETE FROM associations WHERE id=?", (assoc_id,))


# --------------------------------------------------------------------------- reads for other owners
# (jobs, the worklist, the web UI): they ask here instead of naming the index tables in SQL


def instances_of(conn: sqlite3.Connection, sop_uids: Iterable[str]) -> list[dict[str, Any]]:
    """The index rows of these instances (those still indexed), in disc order: study, series,
    instance number, SOP Instance UID."""
    rows = conn.execute(
        "SELECT i.* FROM instances i WHERE i.sop_uid IN (SELECT value FROM json_each(?)) "
        "ORDER BY i.study_uid, i.series_uid, CAST(i.instance_number AS INTEGER), i.sop_uid",
        (json.dumps(list(sop_uids)),)).fetchall()
    return [dict(r) for r in rows]


def summarize(conn: sqlite3.Connection, sop_uids: Iterable[str]) -> dict[str, Any]:
    """What a set of instances holds, for a job's listing: `n`, `size`, `patient_id` (as received),
    `patient_name`, `patients` (how many) and `studies` (a JSON array of Study Instance UIDs)."""
    row = conn.execute(
        "SELECT COUNT(*) AS n, COALESCE(SUM(i.size), 0) AS size, MIN(p.id_value) AS patient_id, "
        "MIN(p.patient_name) AS patient_name, COUNT(DISTINCT st.patient_id) AS patients, "
        "json_group_array(DISTINCT i.study_uid) AS studies "
        "FROM instances i LEFT JOIN studies st ON st.study_uid=i.study_uid "
        "LEFT JOIN patients p ON p.patient_id=st.patient_id "
        "WHERE i.sop_uid IN (SELECT value FROM json_each(?))", (json.dumps(list(sop_uids)),)).fetchone()
    return dict(row)


_STUDY_LIST = (
    "SELECT st.*, p.id_value AS patient_id_value, p.patient_name, p.birth_date, p.sex, "
    "(SELECT COUNT(*) FROM series se WHERE se.study_uid=st.study_uid) AS series_count, "
    "(SELECT COUNT(*) FROM instances i WHERE i.study_uid=st.study_uid) AS instance_count, "
    "(SELECT COALESCE(SUM(i.size), 0) FROM instances i WHERE i.study_uid=st.study_uid) AS size, "
    "(SELECT group_concat(DISTINCT se.modality) FROM series se WHERE se.study_uid=st.study_uid) AS modalities "
    "FROM studies st LEFT JOIN patients p ON p.patient_id=st.patient_id ")


def list_studies(conn: sqlite3.Connection, *, patient_key: str | None = None, limit: int = 100,
                 offset: int = 0) -> list[dict[str, Any]]:
    """Studies in the index, the most recently updated first (for listings such as the web UI):
    the study columns plus `patient_id_value` (the Patient ID as received), `patient_name`,
    `birth_date`, `sex`, `series_count`, `instance_count`, `size` and `modalities` ("CT,MR")."""
    where, args = ("WHERE st.patient_id=? ", (patient_key,)) if patient_key is not None else ("", ())
    rows = conn.execute(_STUDY_LIST + where + "ORDER BY st.updated_at DESC, st.study_uid LIMIT ? OFFSET ?",
                        (*args, int(limit), int(offset))).fetchall()
    return [dict(r) for r in rows]


def get_study(conn: sqlite3.Connection, study_uid: str) -> dict[str, Any] | None:
    """A study with its patient's attributes (`patient_name`, `id_value`, `birth_date`, `sex`) and its
    series (each with `instances` / `instance_count` and `size`)."""
    row = conn.execute("SELECT st.*, p.patient_name, p.id_value, p.birth_date, p.sex FROM studies st "
                       "LEFT JOIN patients p ON p.patient_id=st.patient_id WHERE st.study_uid=?",
                       (study_uid,)).fetchone()
    if row is None:
        return None
    study = dict(row)
    study["series"] = [dict(r) for r in conn.execute(
        "SELECT se.*, (SELECT COUNT(*) FROM instances i WHERE i.series_uid=se.series_uid) AS instances, "
        "(SELECT COUNT(*) FROM instances i WHERE i.series_uid=se.series_uid) AS instance_count, "
        "(SELECT COALESCE(SUM(i.size), 0) FROM instances i WHERE i.series_uid=se.series_uid) AS size "
        "FROM series se WHERE se.study_uid=? ORDER BY CAST(se.series_number AS INTEGER), se.series_uid",
        (study_uid,))]
    return study


def associations_page(conn: sqlite3.Connection, *, search: str = "", offset: int = 0,
                      limit: int = 50) -> tuple[list[dict[str, Any]], int]:
    """The association log, newest first; `search` matches AE titles, host, result or detail."""
    where, args = "", []
    if search:
        where = "WHERE calling_aet LIKE ? OR called_aet LIKE ? OR peer_host LIKE ? OR result LIKE ? OR detail LIKE ?"
        args = [f"%{search}%"] * 5
    total = conn.execute(f"SELECT COUNT(*) FROM associations {where}", args).fetchone()[0]
    rows = conn.execute(f"SELECT * FROM associations {where} ORDER BY id DESC LIMIT ? OFFSET ?",
                        (*args, limit, offset)).fetchall()
    return [dict(r) for r in rows], total


def series_instances(conn: sqlite3.Connection, series_uid: str) -> list[dict[str, Any]]:
    """A series' instance rows in instance-number order (previews, contents lists)."""
    return [dict(r) for r in conn.execute(
        "SELECT * FROM instances WHERE series_uid=? ORDER BY CAST(instance_number AS INTEGER), sop_uid",
        (series_uid,))]


def delete_study(conn: sqlite3.Connection, study_uid: str) -> list[str]:
    """Remove a study from the index (its patient too when it has no other study); returns the
    paths of its files, which the caller deletes after this commit (a crash in between leaves
    files that `reindex` would bring back, never index rows without files)."""
    with db.transaction(conn):
        row = conn.execute("SELECT patient_id FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
        paths = [r["path"] for r in conn.execute("SELECT path FROM instances WHERE study_uid=?", (study_uid,))]
        conn.execute("DELETE FROM instances WHERE study_uid=?", (study_uid,))
        conn.execute("DELETE FROM series WHERE study_uid=?", (study_uid,))
        conn.execute("DELETE FROM studies WHERE study_uid=?", (study_uid,))
        if row is not None:
            conn.execute("DELETE FROM patients WHERE patient_id=? AND NOT EXISTS "
                         "(SELECT 1 FROM studies WHERE patient_id=?)", (row["patient_id"], row["patient_id"]))
    return paths


def study_sop_uids(conn: sqlite3.Connection, study_uid: str) -> list[str]:
    """Every instance of a study in the index."""
    return [r["sop_uid"] for r in conn.execute("SELECT sop_uid FROM instances WHERE study_uid=?", (study_uid,))]


def sop_uids_of(conn: sqlite3.Connection, study_uid: str = "", series_uid: str = "",
               instance_uid: str = "") -> list[str]:
    """SOP Instance UIDs in the index for a study, series or instance (the narrowest given)."""
    if instance_uid:
        rows = conn.execute("SELECT sop_uid FROM instances WHERE sop_uid=?", (instance_uid,))
    elif series_uid:
        rows = conn.execute("SELECT sop_uid FROM instances WHERE series_uid=?", (series_uid,))
    else:
        rows = conn.execute("SELECT sop_uid FROM instances WHERE study_uid=?", (study_uid,))
    return [r["sop_uid"] for r in rows]


def _chunks(items: Sequence[str], size: int = 900) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def instances_by_uid(conn: sqlite3.Connection, sop_uids: Iterable[str]) -> list[dict[str, Any]]:
    """Index rows of those instances still in the index, in sending order (study, series, number)."""
    rows: list[dict[str, Any]] = []
    for chunk in _chunks(list(sop_uids)):
        rows += [dict(r) for r in conn.execute(
            f"SELECT * FROM instances WHERE sop_uid IN ({','.join('?' * len(chunk))})", tuple(chunk))]

    def number(row: dict[str, Any]) -> int:
        try:
            return int(str(row.get("instance_number") or "0").strip() or 0)
        except ValueError:
            return 0
    rows.sort(key=lambda r: (r["study_uid"], r["series_uid"], number(r), r["sop_uid"]))
    return rows


def indexed_sop_uids(conn: sqlite3.Connection, sop_uids: Iterable[str]) -> set[str]:
    """Which of these SOP Instance UIDs are in the index."""
    found: set[str] = set()
    for chunk in _chunks(list(sop_uids)):
        found.update(r["sop_uid"] for r in conn.execute(
            f"SELECT sop_uid FROM instances WHERE sop_uid IN ({','.join('?' * len(chunk))})", tuple(chunk)))
    return found


def last_instance_rowid(conn: sqlite3.Connection) -> int:
    """The newest instance row (a cursor for pollers such as the forwarding rules)."""
    return int(conn.execute("SELECT COALESCE(MAX(rowid), 0) AS n FROM instances").fetchone()["n"])


def instances_between_rowids(conn: sqlite3.Connection, after: int, upto: int, *, called: str = "",
                             calling: str = "", modalities: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Instances with `after < rowid <= upto`, filtered by called / calling AE title and modality
    (sop_uid, study_uid, received_at)."""
    where, args = ["i.rowid > ?", "i.rowid <= ?"], [after, upto]
    if called:
        where.append("i.called_aet=?")
        args.append(called)
    if calling:
        where.append("i.calling_aet=?")
        args.append(calling)
    if modalities:
        where.append(f"s.modality IN ({','.join('?' * len(modalities))})")
        args += list(modalities)
    return [dict(r) for r in conn.execute(
        "SELECT i.sop_uid, i.study_uid, i.received_at FROM instances i LEFT JOIN series s "
        f"ON s.series_uid=i.series_uid WHERE {' AND '.join(where)}", args)]


def studies_of(conn: sqlite3.Connection, sop_uids: Iterable[str]) -> dict[str, str]:
    """SOP Instance UID -> Study Instance UID for those in the index."""
    out: dict[str, str] = {}
    for chunk in _chunks(list(sop_uids)):
        out.update((r["sop_uid"], r["study_uid"]) for r in conn.execute(
            f"SELECT sop_uid, study_uid FROM instances WHERE sop_uid IN ({','.join('?' * len(chunk))})",
            tuple(chunk)))
    return out


def instance_arrivals(conn: sqlite3.Connection, study_uid: str | None = None) -> list[dict[str, Any]]:
    """sop_uid, study_uid, called_aet and received_at of every instance (or a study's), for retention."""
    where, args = ("WHERE study_uid=?", (study_uid,)) if study_uid is not None else ("", ())
    return [dict(r) for r in conn.execute(
        f"SELECT sop_uid, study_uid, called_aet, received_at FROM instances {where}", args)]


def study_accession(conn: sqlite3.Connection, study_uid: str) -> str:
    """The Accession Number of an indexed study ('' when unknown or empty)."""
    row = conn.execute("SELECT accession FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
    return (row[0] or "") if row else ""


def study_stored(conn: sqlite3.Connection, study_uid: str, accession: str) -> bool:
    """True when the index has the study, by Study Instance UID or (when given) Accession Number."""
    return conn.execute("SELECT 1 FROM studies WHERE study_uid=? OR (?<>'' AND accession=?) LIMIT 1",
                        (study_uid, accession, accession)).fetchone() is not None


# --------------------------------------------------------------------------- rebuild


def iter_files(storage_dir: Path) -> Iterator[Path]:
    for root, _dirs, files in os.walk(storage_dir):
        for name in files:
            if name.endswith(".dcm"):
                yield Path(root) / name


def reindex(conn: sqlite3.Connection, storage_dir: Path) -> tuple[int, int]:
    """Rebuild patients/studies/series/instances from the files; returns (indexed, unreadable).

    Instances already indexed keep their association and called AE title. The association log and
    what each association received (`association_instances`) are facts of the past, not of the
    files: left as they are.
    """
    from pydicom import dcmread

    keep = {r["sop_uid"]: r for r in conn.execute(
        "SELECT sop_uid, assoc_id, called_aet, calling_aet, received_at FROM instances")}
    with db.transaction(conn):
        for table in ("instances", "series", "studies", "patients"):
            conn.execute(f"DELETE FROM {table}")
    indexed = bad = 0
    for path in iter_files(storage_dir):
        try:
            ds = dcmread(path, stop_before_pixels=True)
            ts = str(ds.file_meta.TransferSyntaxUID)
        except Exception:
            bad += 1
            continue
        rec = record_from_dataset(ds, str(path), path.stat().st_size, ts)
        if not rec.sop_uid:
            bad += 1
            continue
        old = keep.get(rec.sop_uid)
        if old is not None:
            rec.assoc_id, rec.called_aet = old["assoc_id"], old["called_aet"]
            rec.calling_aet, rec.received_at = old["calling_aet"], old["received_at"]
        else:
            rec.received_at = path.stat().st_mtime
        add_instance(conn, rec, arrival=False)
        indexed += 1
    return indexed, bad


def index_file(conn: sqlite3.Connection, path: Path) -> bool:
    """Index one stored file as it is on disk (no arrival: nothing was received); False when the
    file is not a DICOM instance this index can hold."""
    from pydicom import dcmread

    try:
        ds = dcmread(path, stop_before_pixels=True)
        ts = str(ds.file_meta.TransferSyntaxUID)
        st = path.stat()
    except Exception:
        return False
    rec = record_from_dataset(ds, str(path), st.st_size, ts)
    if not rec.sop_uid:
        return False
    rec.received_at = st.st_mtime
    add_instance(conn, rec, arrival=False)
    return True


def sync_with_files(conn: sqlite3.Connection, storage_dir: Path) -> tuple[int, int, int]:
    """Make an index restored from an older copy match the files: index every stored file it does
    not list, forget rows whose file is gone (deleted since). Returns (added, forgotten, unreadable).
    Rows it already has keep their association and called AE title."""
    known: dict[str, tuple[str, str, str]] = {}
    for row in conn.execute("SELECT sop_uid, path, series_uid, study_uid FROM instances"):
        known[os.path.realpath(row["path"])] = (row["sop_uid"], row["series_uid"], row["study_uid"])
    added = bad = 0
    for path in iter_files(storage_dir):
        real = os.path.realpath(path)
        if known.pop(real, None) is not None:
            continue
        if index_file(conn, Path(real)):
            added += 1
        else:
            bad += 1
    gone = [(sop, series, study) for path, (sop, series, study) in known.items() if not os.path.exists(path)]
    for sop, series, study in gone:
        with db.transaction(conn):
            conn.execute("DELETE FROM instances WHERE sop_uid=?", (sop,))
            _prune(conn, series, study)
    return added, len(gone), bad


UNACKNOWLEDGED_SLACK = 5.0  # seconds: file times come from the kernel's coarse clock (a few ms behind time.time())
# and index times are taken moments after the file's write: both are compared with this margin


def remove_unacknowledged(conn: sqlite3.Connection, store: Store, since: float) -> int:
    """Delete the stored files written since `since` that the index does not name, and return how
    many.

    Why: a file is written (and renamed into place) before its index commit, so a worker killed
    between the two leaves a file whose arrival was never acknowledged. The sender sends it again,
    usually to the same path; if it does not, nothing else would ever remove it (retention and the
    burner see only indexed instances). Called after a stop that interrupted associations (a dicom
    worker) or C-GET retrievals (the transfer process), with the earliest one's start: files written
    since then are the only candidates.

    Race-free with arrivals going on meanwhile (other workers, the transfer process): a candidate is
    removed by `Store.remove_unless_named`, under the purge lock held exclusively, which waits for
    every arrival between its file and its index row. The index read under it is the final word:
    the path the index names for the file's own SOP Instance UID, compared as real paths (a data
    folder given as a relative path or through a symbolic link names the same file). A file whose
    UID cannot be read is no complete arrival (one that was acknowledged was read in full).
    """
    since -= UNACKNOWLEDGED_SLACK
    named = {os.path.abspath(p) for p in paths_received_since(conn, since)}
    removed = 0
    for path in store.files_written_since(since):
        if os.path.abspath(path) in named:
            continue

        def named_now(path: str = path) -> str | None:
            sop = _sop_uid_of(path)
            indexed = instance_path(conn, sop) if sop else None
            return path if indexed is not None and os.path.realpath(indexed) == os.path.realpath(path) else None

        if store.remove_unless_named(path, named_now):
            removed += 1
            LOG.warning("removed %s: written, but its arrival was neither indexed nor acknowledged "
                        "(the last stop cut it off)", path)
    return removed


def start_removing_unacknowledged(data_dir: Path, store: Store, since: float) -> threading.Thread:
    """`remove_unacknowledged` in a thread of its own (on a connection of its own), logged: a
    process starting after an interrupted stop runs it while it already serves."""
    def run() -> None:
        conn = db.connect(data_dir)
        try:
            removed = remove_unacknowledged(conn, store, since)
        except Exception:
            LOG.exception("could not look for files the last stop left unindexed")
            return
        finally:
            conn.close()
        LOG.info("files written since the interrupted work began and never indexed: %d removed", removed)

    thread = threading.Thread(target=run, name="unacknowledged", daemon=True)
    thread.start()
    return thread


def _sop_uid_of(path: str) -> str | None:
    """The SOP Instance UID a stored file holds (None: unreadable or absent)."""
    from pydicom import dcmread

    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except Exception:
        return None
    return str(ds.get("SOPInstanceUID", "") or "").strip() or None


# --- the query model's reads (C-FIND, C-MOVE, C-GET) ---------------------------------------------
# appliance/dicom/query.py turns an identifier into conditions on these columns (aliases p, st, se,
# i for patients, studies, series, instances); the statements on the tables are built here.

QUERY_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_QUERY_KEY = {"PATIENT": "p.patient_id", "STUDY": "st.study_uid", "SERIES": "se.series_uid", "IMAGE": "i.sop_uid"}

# keyword → (level, column): what C-FIND matches on and returns from the index
QUERY_COLUMNS: dict[str, tuple[str, str]] = {
    "PatientID": ("PATIENT", "p.id_value"),
    "PatientName": ("PATIENT", "p.patient_name"),
    "PatientBirthDate": ("PATIENT", "p.birth_date"),
    "PatientSex": ("PATIENT", "p.sex"),
    "IssuerOfPatientID": ("PATIENT", "p.issuer"),
    "StudyInstanceUID": ("STUDY", "st.study_uid"),
    "StudyDate": ("STUDY", "st.study_date"),
    "StudyTime": ("STUDY", "st.study_time"),
    "AccessionNumber": ("STUDY", "st.accession"),
    "StudyID": ("STUDY", "st.study_id"),
    "StudyDescription": ("STUDY", "st.description"),
    "ReferringPhysicianName": ("STUDY", "st.referring"),
    "InstitutionName": ("STUDY", "st.institution"),
    "SeriesInstanceUID": ("SERIES", "se.series_uid"),
    "Modality": ("SERIES", "se.modality"),
    "SeriesNumber": ("SERIES", "se.series_number"),
    "SeriesDescription": ("SERIES", "se.description"),
    "BodyPartExamined": ("SERIES", "se.body_part"),
    "SeriesDate": ("SERIES", "se.series_date"),
    "SeriesTime": ("SERIES", "se.series_time"),
    "SOPInstanceUID": ("IMAGE", "i.sop_uid"),
    "SOPClassUID": ("IMAGE", "i.sop_class"),
    "InstanceNumber": ("IMAGE", "i.instance_number"),
}

# computed attributes: keyword → (minimum level, SQL expression)
QUERY_COMPUTED: dict[str, tuple[str, str]] = {
    "NumberOfPatientRelatedStudies": ("PATIENT", "(SELECT COUNT(*) FROM studies x WHERE x.patient_id=p.patient_id)"),
    "NumberOfPatientRelatedSeries": ("PATIENT", "(SELECT COUNT(*) FROM series x JOIN studies y ON "
                                                "x.study_uid=y.study_uid WHERE y.patient_id=p.patient_id)"),
    "NumberOfPatientRelatedInstances": ("PATIENT", "(SELECT COUNT(*) FROM instances x JOIN studies y ON "
                                                   "x.study_uid=y.study_uid WHERE y.patient_id=p.patient_id)"),
    "NumberOfStudyRelatedSeries": ("STUDY", "(SELECT COUNT(*) FROM series x WHERE x.study_uid=st.study_uid)"),
    "NumberOfStudyRelatedInstances": ("STUDY", "(SELECT COUNT(*) FROM instances x WHERE x.study_uid=st.study_uid)"),
    "ModalitiesInStudy": ("STUDY", "(SELECT group_concat(DISTINCT x.modality) FROM series x "
                                   "WHERE x.study_uid=st.study_uid AND x.modality<>'')"),
    "SOPClassesInStudy": ("STUDY", "(SELECT group_concat(DISTINCT x.sop_class) FROM instances x "
                                   "WHERE x.study_uid=st.study_uid)"),
    "NumberOfSeriesRelatedInstances": ("SERIES", "(SELECT COUNT(*) FROM instances x "
                                                 "WHERE x.series_uid=se.series_uid)"),
}

_QUERY_FROM = {
    "PATIENT": "patients p",
    "STUDY": "studies st JOIN patients p ON p.patient_id=st.patient_id",
    "SERIES": "series se JOIN studies st ON st.study_uid=se.study_uid JOIN patients p ON p.patient_id=st.patient_id",
    "IMAGE": "instances i JOIN series se ON se.series_uid=i.series_uid JOIN studies st ON st.study_uid=i.study_uid "
             "JOIN patients p ON p.patient_id=st.patient_id",
}

_QUERY_REPRESENTATIVE = {
    "PATIENT": "(SELECT x.path FROM instances x JOIN studies y ON x.study_uid=y.study_uid "
               "WHERE y.patient_id=p.patient_id LIMIT 1)",
    "STUDY": "(SELECT x.path FROM instances x WHERE x.study_uid=st.study_uid LIMIT 1)",
    "SERIES": "(SELECT x.path FROM instances x WHERE x.series_uid=se.series_uid LIMIT 1)",
    "IMAGE": "i.path",
}


def query_series_condition(matches: str) -> str:
    """A condition true for a study with a series for which `matches` (on alias x) holds
    (ModalitiesInStudy)."""
    return f"EXISTS (SELECT 1 FROM series x WHERE x.study_uid=st.study_uid AND ({matches}))"


def query_matches(conn: sqlite3.Connection, level: str, where: Sequence[str], args: Sequence[Any],
                  requested: Iterable[str]) -> Iterator[sqlite3.Row]:
    """The entities of `level` meeting every condition of `where`, ordered by key: the columns of
    their level and above by keyword, the computed attributes asked for (`requested`), and `_pkey`
    (the patient key), `_path` (a file of the entity), `_charset` (and `_ts` for an instance).
    The connection needs the matching functions of `appliance.dicom.query.install_functions`."""
    depth = QUERY_LEVELS.index(level)
    wanted = set(requested)
    select = [f"{col} AS {kw}" for kw, (lvl, col) in QUERY_COLUMNS.items() if QUERY_LEVELS.index(lvl) <= depth]
    select += [f"{expr} AS {kw}" for kw, (lvl, expr) in QUERY_COMPUTED.items()
               if QUERY_LEVELS.index(lvl) <= depth and kw in wanted]
    select.append("p.patient_id AS _pkey")  # the index key (PatientID may be empty)
    select.append(f"{_QUERY_REPRESENTATIVE[level]} AS _path")
    select.append("st.charset AS _charset" if depth >= 1 else "p.charset AS _charset")
    if depth == 3:
        select.append("i.transfer_syntax AS _ts")
    sql = f"SELECT {', '.join(select)} FROM {_QUERY_FROM[level]}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {_QUERY_KEY[level]}"
    yield from conn.execute(sql, list(args))


def query_instances(conn: sqlite3.Connection, level: str, keys: Sequence[str]) -> list[sqlite3.Row]:
    """The instances under the entities of `level` with these keys (`_pkey` for patients), in
    study, series and instance-number order (C-MOVE / C-GET)."""
    column = {"PATIENT": "st.patient_id", "STUDY": "i.study_uid", "SERIES": "i.series_uid", "IMAGE": "i.sop_uid"}[level]
    rows: list[sqlite3.Row] = []
    for start in range(0, len(keys), 500):
        chunk = list(keys[start:start + 500])
        rows.extend(conn.execute(
            f"SELECT i.* FROM instances i JOIN studies st ON st.study_uid=i.study_uid WHERE {column} IN "
            f"({', '.join('?' * len(chunk))}) ORDER BY i.study_uid, i.series_uid, CAST(i.instance_number AS INTEGER)",
            chunk).fetchall())
    return rows
