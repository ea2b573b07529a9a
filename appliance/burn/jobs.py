"""The job queue in state.db: one row per disc job, moved through its states by conditional updates.

State machine (every move is `UPDATE … WHERE id=? AND state IN (…)`, so two processes never
both win one transition):

    queued ──burner──▶ building ──▶ built ──burner assigns `robot`──▶ (built, robot set)
       ▲                  │                       │ driver: built → submitted, then Publisher.submit
       │                  ▼                       ▼
       │               failed ◀── submitted ──▶ burning ──▶ done
       │                  │            │            │
       └──── retry ───────┘            └────────────┴──▶ failed / cancelled

- cancel: queued / building / built → cancelled at once; submitted / burning → `cancel_requested`
  = 1, the driver asks the publisher (then 2 = delivered) and the publisher's CANCELLED ends it.
- retry: failed / cancelled → queued, attempts + 1, the robot that failed is remembered in
  `exclude_robot` (skipped when another robot of the role is online), the disc is built again.
- The robot sees `robot_job_id`: the job id on the first attempt, `<id>-<attempt>` after a retry,
  so a vendor engine never sees one id twice and a restarted driver re-attaches by that id.
- A job never deletes what was received; its discs live in `<data>/discs/<job id>/`.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

from appliance import db, index  # noqa: F401 - index registers the tables jobs refer to

QUEUED, BUILDING, BUILT, SUBMITTED, BURNING = "queued", "building", "built", "submitted", "burning"
DONE, FAILED, CANCELLED = "done", "failed", "cancelled"
STATES = (QUEUED, BUILDING, BUILT, SUBMITTED, BURNING, DONE, FAILED, CANCELLED)
ACTIVE = (QUEUED, BUILDING, BUILT, SUBMITTED, BURNING)
FINAL = (DONE, FAILED, CANCELLED)
IN_ROBOT = (SUBMITTED, BURNING)
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id               TEXT PRIMARY KEY,
    state            TEXT NOT NULL DEFAULT 'queued',
    role             TEXT NOT NULL DEFAULT 'any',
    robot            TEXT NOT NULL DEFAULT '',
    exclude_robot    TEXT NOT NULL DEFAULT '',
    priority         INTEGER NOT NULL DEFAULT 0,
    copies           INTEGER NOT NULL DEFAULT 1,
    verify           INTEGER NOT NULL DEFAULT 1,
    progress         REAL NOT NULL DEFAULT 0,
    message          TEXT NOT NULL DEFAULT '',
    error            TEXT NOT NULL DEFAULT '',
    error_code       TEXT NOT NULL DEFAULT '',
    attempts         INTEGER NOT NULL DEFAULT 1,
    robot_job_id     TEXT NOT NULL DEFAULT '',
    robot_ack        INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    discs            TEXT NOT NULL DEFAULT '[]',
    source           TEXT NOT NULL DEFAULT 'manual',
    assoc_id         INTEGER,
    group_id         INTEGER,
    follows_job      TEXT NOT NULL DEFAULT '',
    patient_id       TEXT NOT NULL DEFAULT '',
    patient_name     TEXT NOT NULL DEFAULT '',
    study_uids       TEXT NOT NULL DEFAULT '[]',
    instances        INTEGER NOT NULL DEFAULT 0,
    size             INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    build_started_at REAL,
    built_at         REAL,
    submitted_at     REAL,
    finished_at      REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, priority, created_at);
CREATE INDEX IF NOT EXISTS jobs_robot ON jobs(robot, state);
CREATE TABLE IF NOT EXISTS job_items (
    job_id  TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    PRIMARY KEY (job_id, sop_uid)
);
CREATE INDEX IF NOT EXISTS job_items_sop ON job_items(sop_uid);
CREATE TABLE IF NOT EXISTS job_seq (
    day TEXT PRIMARY KEY,
    n   INTEGER NOT NULL
);
"""
db.register_schema("jobs", SCHEMA)


class JobError(ValueError):
    """A job request was refused (unknown job, wrong state); the message says why."""


def _new_id(conn: sqlite3.Connection, now: float) -> str:
    day = time.strftime("%Y%m%d", time.gmtime(now))
    conn.execute("INSERT INTO job_seq (day, n) VALUES (?, 1) ON CONFLICT(day) DO UPDATE SET n=n+1", (day,))
    n = conn.execute("SELECT n FROM job_seq WHERE day=?", (day,)).fetchone()["n"]
    return f"J{day}-{n:04d}"


def create_job_in(conn: sqlite3.Connection, *, role: str, sop_uids: Iterable[str], source: str,
                  copies: int = 1, priority: int = 0, verify: bool = True, assoc_id: int | None = None,
                  group_id: int | None = None, follows_job: str = "", message: str = "") -> str:
    """Create a queued job inside the caller's transaction; returns its id."""
    if role not in ("epson", "primera", "any"):
        raise JobError(f"job role: epson, primera or any, not {role!r}")
    if not 1 <= int(copies) <= 1000:
        raise JobError(f"job copies: from 1 to 1000, not {copies}")
    now = time.time()
    job_id = _new_id(conn, now)
    uids = list(dict.fromkeys(sop_uids))
    conn.executemany("INSERT OR IGNORE INTO job_items (job_id, sop_uid) VALUES (?, ?)", [(job_id, u) for u in uids])
    summary = conn.execute(
        "SELECT COUNT(*) AS n, COALESCE(SUM(i.size), 0) AS size, MIN(p.id_value) AS patient_id, "
        "MIN(p.patient_name) AS patient_name, COUNT(DISTINCT st.patient_id) AS patients, "
        "json_group_array(DISTINCT i.study_uid) AS studies "
        "FROM job_items j JOIN instances i ON i.sop_uid=j.sop_uid "
        "LEFT JOIN studies st ON st.study_uid=i.study_uid LEFT JOIN patients p ON p.patient_id=st.patient_id "
        "WHERE j.job_id=?", (job_id,)).fetchone()
    patient_name = summary["patient_name"] or ""
    if summary["patients"] > 1:  # one disc, several patients (e.g. one association to _E): say so
        patient_name += f" (+{summary['patients'] - 1} more)"
    conn.execute(
        "INSERT INTO jobs (id, state, role, priority, copies, verify, message, source, assoc_id, group_id, "
        "follows_job, patient_id, patient_name, study_uids, instances, size, robot_job_id, created_at, updated_at) "
        "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (job_id, role, int(priority), int(copies), int(bool(verify)), message, source, assoc_id, group_id,
         follows_job, summary["patient_id"] or "", patient_name, summary["studies"] or "[]",
         summary["n"], summary["size"], job_id, now, now),
    )
    return job_id


def create_job(conn: sqlite3.Connection, **kw: Any) -> str:
    with db.transaction(conn):
        return create_job_in(conn, **kw)


def get_job(conn: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
    return _decode(row) if row else None


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    job = dict(row)
    job["discs"] = json.loads(job["discs"] or "[]")
    job["study_uids"] = [u for u in json.loads(job["study_uids"] or "[]") if u]
    return job


def list_jobs(conn: sqlite3.Connection, states: Sequence[str] | None = None, limit: int = 200) -> list[dict[str, Any]]:
    if states:
        rows = conn.execute(f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(states))}) "
                            "ORDER BY created_at DESC, id DESC LIMIT ?", (*states, limit)).fetchall()
    else:
        rows = conn.execute("SELECT * FROM jobs ORDER BY created_at DESC, id DESC LIMIT ?", (limit,)).fetchall()
    return [_decode(r) for r in rows]


def job_instances(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    """The index rows of the instances a job burns (those still in the index)."""
    rows = conn.execute(
        "SELECT i.* FROM job_items j JOIN instances i ON i.sop_uid=j.sop_uid WHERE j.job_id=? "
        "ORDER BY i.study_uid, i.series_uid, CAST(i.instance_number AS INTEGER), i.sop_uid", (job_id,)).fetchall()
    return [dict(r) for r in rows]


def move(conn: sqlite3.Connection, job_id: str, from_states: Sequence[str], to_state: str, **fields: Any) -> bool:
    """Move a job from one of `from_states` to `to_state`, setting `fields`; False when it was elsewhere."""
    fields = {"state": to_state, "updated_at": time.time(), **fields}
    if to_state in FINAL and "finished_at" not in fields:
        fields["finished_at"] = fields["updated_at"]
    sets = ", ".join(f"{k}=?" for k in fields)
    cur = conn.execute(f"UPDATE jobs SET {sets} WHERE id=? AND state IN ({','.join('?' * len(from_states))})",
                       (*_encode(fields).values(), job_id, *from_states))
    return cur.rowcount == 1


def update(conn: sqlite3.Connection, job_id: str, states: Sequence[str], **fields: Any) -> bool:
    """Change fields of a job that is in one of `states` (no state change)."""
    fields = {"updated_at": time.time(), **fields}
    sets = ", ".join(f"{k}=?" for k in fields)
    cur = conn.execute(f"UPDATE jobs SET {sets} WHERE id=? AND state IN ({','.join('?' * len(states))})",
                       (*_encode(fields).values(), job_id, *states))
    return cur.rowcount == 1


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in fields.items():
        if isinstance(value, list | dict):
            value = json.dumps(value, default=str)
        elif isinstance(value, bool):
            value = int(value)
        out[key] = value
    return out


def cancel_job(conn: sqlite3.Connection, job_id: str) -> str:
    """Cancel a job; returns what happened (text for the user). JobError when it cannot be."""
    job = get_job(conn, job_id)
    if job is None:
        raise JobError(f"no job {job_id!r}")
    if move(conn, job_id, (QUEUED, BUILDING, BUILT), CANCELLED, message="cancelled by the user"):
        return f"{job_id}: cancelled"
    if update(conn, job_id, IN_ROBOT, cancel_requested=1, message="cancel requested"):
        return f"{job_id}: cancel requested from robot {job['robot']}"
    job = get_job(conn, job_id) or job
    raise JobError(f"{job_id}: cannot cancel a job that is {job['state']}")


def retry_job(conn: sqlite3.Connection, job_id: str) -> str:
    """Queue a failed or cancelled job again (built afresh; the robot that failed is avoided if it can be)."""
    job = get_job(conn, job_id)
    if job is None:
        raise JobError(f"no job {job_id!r}")
    attempts = job["attempts"] + 1
    if move(conn, job_id, (FAILED, CANCELLED), QUEUED, attempts=attempts, exclude_robot=job["robot"] or "",
            robot="", robot_job_id=f"{job_id}-{attempts}", robot_ack=0, cancel_requested=0, progress=0.0,
            error="", error_code="", message=f"retry {attempts - 1}", finished_at=None, discs=[],
            build_started_at=None, built_at=None, submitted_at=None):
        return f"{job_id}: queued again (attempt {attempts})"
    raise JobError(f"{job_id}: only a failed or cancelled job can be retried; it is {job['state']}")


def study_sop_uids(conn: sqlite3.Connection, study_uid: str) -> list[str]:
    """Every instance of a study in the index (for burning on demand)."""
    return [r["sop_uid"] for r in conn.execute("SELECT sop_uid FROM instances WHERE study_uid=?", (study_uid,))]


def study_burn_facts(conn: sqlite3.Connection, study_uid: str | None = None,
                     burn_aets: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Per study (or just `study_uid`), what retention needs of its disc jobs: `unburned` (instances
    whose file stored last is on no disc of a done job made after it arrived: a re-sent instance is
    unburned again) and of those `unburned_for_burning` (received on one of `burn_aets`),
    `last_done` (when its last done job finished), `active` and `failed` job counts, and the ids of
    its done jobs (whose disc images go with it)."""
    where, args = ("WHERE i.study_uid=?", (study_uid,)) if study_uid is not None else ("", ())
    aets = list(burn_aets) or [""]
    marks = ",".join("?" * len(aets))
    facts: dict[str, dict[str, Any]] = {}
    for row in conn.execute(
            "SELECT study_uid, SUM(unburned) AS unburned, SUM(unburned AND called_aet IN "
            f"({marks})) AS unburned_for_burning FROM (SELECT i.study_uid, i.called_aet, NOT EXISTS "
            "(SELECT 1 FROM job_items ji JOIN jobs j ON j.id=ji.job_id WHERE ji.sop_uid=i.sop_uid "
            f"AND j.state='done' AND j.created_at >= i.received_at) AS unburned FROM instances i {where}) "
            "GROUP BY study_uid", (*aets, *args)):
        facts[row["study_uid"]] = {"unburned": int(row["unburned"]),
                                   "unburned_for_burning": int(row["unburned_for_burning"] or 0),
                                   "last_done": None, "active": 0, "failed": 0, "done_jobs": []}
    for row in conn.execute(
            "SELECT DISTINCT i.study_uid, j.id, j.state, j.finished_at FROM instances i "
            f"JOIN job_items ji ON ji.sop_uid=i.sop_uid JOIN jobs j ON j.id=ji.job_id {where}", args):
        item = facts.get(row["study_uid"])
        if item is None:
            continue
        if row["state"] == DONE:
            item["done_jobs"].append(row["id"])
            item["last_done"] = max(item["last_done"] or 0.0, row["finished_at"] or 0.0)
        elif row["state"] in ACTIVE:
            item["active"] += 1
        elif row["state"] == FAILED:
            item["failed"] += 1
    return facts
