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

from appliance import db, index

QUEUED, BUILDING, BUILT, SUBMITTED, BURNING = "queued", "building", "built", "submitted", "burning"
DONE, FAILED, CANCELLED = "done", "failed", "cancelled"
STATES = (QUEUED, BUILDING, BUILT, SUBMITTED, BURNING, DONE, FAILED, CANCELLED)
ACTIVE = (QUEUED, BUILDING, BUILT, SUBMITTED, BURNING)
FINAL = (DONE, FAILED, CANCELLED)
IN_ROBOT = (SUBMITTED, BURNING)
CURRENT_ORDER = (BURNING, SUBMITTED, BUILDING, BUILT, QUEUED)  # which active job the panel shows
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
MIGRATIONS: tuple = ()  # applied by db.connect after SCHEMA (see appliance.db)


class JobError(ValueError):
    """A job request was refused (unknown job, wrong state); the message says why."""


def id_sequence(conn: sqlite3.Connection) -> dict[str, int]:
    """Day → the last job number handed out (read from a damaged state.db by appliance.dbguard)."""
    return {row[0]: int(row[1]) for row in conn.execute("SELECT day, n FROM job_seq")}


def keep_ids_above(conn: sqlite3.Connection, sequence: dict[str, int]) -> None:
    """Never hand out again a job id that `sequence` (a damaged copy's `id_sequence`) says was
    used: a job lost with the damaged file keeps its id (and its files) to itself."""
    for day, n in sequence.items():
        conn.execute("INSERT INTO job_seq (day, n) VALUES (?, ?) ON CONFLICT(day) DO UPDATE SET n=max(n, excluded.n)",
                     (day, int(n)))


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
    summary = index.summarize(conn, uids)
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
    uids = [r["sop_uid"] for r in conn.execute("SELECT sop_uid FROM job_items WHERE job_id=?", (job_id,))]
    return index.instances_of(conn, uids)


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
    return index.study_sop_uids(conn, study_uid)


def active_jobs_with_study(conn: sqlite3.Connection, study_uid: str) -> list[str]:
    """Ids of unfinished jobs that burn an instance of the study (it must not be deleted under them)."""
    uids = index.study_sop_uids(conn, study_uid)
    found: set[str] = set()
    for start in range(0, len(uids), 500):
        chunk = uids[start:start + 500]
        found.update(r["id"] for r in conn.execute(
            f"SELECT DISTINCT j.id FROM jobs j JOIN job_items ji ON ji.job_id=j.id "
            f"WHERE ji.sop_uid IN ({','.join('?' * len(chunk))}) AND j.state IN ({','.join('?' * len(ACTIVE))})",
            (*chunk, *ACTIVE)))
    return sorted(found)


# --------------------------------------------------------------------------- transitions and reads for
# the burner (dispatch), the driver service, the panel, diagnostics and the worklist: the only SQL on jobs


def _decode_all(rows: Iterable[sqlite3.Row]) -> list[dict[str, Any]]:
    return [_decode(r) for r in rows]


def claim_next_build(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """Move the most urgent queued job to `building`; None when nothing is queued."""
    while True:
        row = conn.execute("SELECT id FROM jobs WHERE state='queued' ORDER BY priority DESC, created_at, id LIMIT 1"
                           ).fetchone()
        if row is None:
            return None
        if move(conn, row["id"], (QUEUED,), BUILDING, build_started_at=time.time(), message="building the disc"):
            return get_job(conn, row["id"])


def any_queued(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM jobs WHERE state='queued' LIMIT 1").fetchone() is not None


def requeue_interrupted_builds(conn: sqlite3.Connection) -> int:
    """After a burner restart, every job left `building` goes back to `queued`; returns how many."""
    return conn.execute("UPDATE jobs SET state='queued', message='build interrupted; queued again', updated_at=? "
                        "WHERE state='building'", (time.time(),)).rowcount


def finished_between(conn: sqlite3.Connection, start: float, end: float) -> list[str]:
    """Ids of the jobs that ended (done, failed, cancelled) between two times."""
    return [r["id"] for r in conn.execute(
        "SELECT id FROM jobs WHERE state IN ('done', 'failed', 'cancelled') AND finished_at BETWEEN ? AND ?",
        (start, end))]


def robots_of(conn: sqlite3.Connection, states: Sequence[str]) -> list[tuple[str, str]]:
    """(job id, robot) of every job in `states` (robot '' when none is assigned)."""
    return [(r["id"], r["robot"]) for r in conn.execute(
        f"SELECT id, robot FROM jobs WHERE state IN ({','.join('?' * len(states))})", tuple(states))]


def awaiting_robot(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Built jobs no robot has been given yet, most urgent first."""
    return _decode_all(conn.execute(
        "SELECT * FROM jobs WHERE state='built' AND robot='' ORDER BY priority DESC, created_at, id"))


def robot_load(conn: sqlite3.Connection) -> dict[str, int]:
    """Per robot, how many jobs it holds (built and assigned, submitted or burning)."""
    return {r["robot"]: r["n"] for r in conn.execute(
        "SELECT robot, COUNT(*) AS n FROM jobs WHERE state IN ('built', 'submitted', 'burning') AND robot != '' "
        "GROUP BY robot")}


def assign(conn: sqlite3.Connection, job_id: str, robot: str, message: str) -> bool:
    """Give a built, unassigned job to a robot; False when it was taken or changed meanwhile."""
    return conn.execute("UPDATE jobs SET robot=?, message=?, updated_at=? WHERE id=? AND state='built' AND robot=''",
                        (robot, message, time.time(), job_id)).rowcount == 1


def unassign(conn: sqlite3.Connection, job_id: str, robot: str) -> bool:
    """Take a built job back from `robot` (gone or silent) so another robot can have it."""
    return conn.execute("UPDATE jobs SET robot='', updated_at=? WHERE id=? AND state='built' AND robot=?",
                        (time.time(), job_id, robot)).rowcount == 1


def for_robot(conn: sqlite3.Connection, robot: str) -> list[dict[str, Any]]:
    """The jobs a robot's driver handles: built and assigned to it, submitted or burning there."""
    return _decode_all(conn.execute(
        "SELECT * FROM jobs WHERE robot=? AND state IN ('built', 'submitted', 'burning') "
        "ORDER BY priority DESC, created_at, id", (robot,)))


def claim_submit(conn: sqlite3.Connection, job_id: str, robot: str) -> bool:
    """built → submitted for the robot it is assigned to, before the publisher is called (a crash in
    between leaves "submitted", which the driver's re-attach resolves); False when it was not there."""
    now = time.time()
    return conn.execute("UPDATE jobs SET state='submitted', submitted_at=?, updated_at=?, message=? "
                        "WHERE id=? AND state='built' AND robot=?",
                        (now, now, f"submitting to {robot}", job_id, robot)).rowcount == 1


def current(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The job the station is busiest with: burning first, then submitted, building, built, queued;
    the oldest of its state. None when no job is active."""
    order = " ".join(f"WHEN '{state}' THEN {i}" for i, state in enumerate(CURRENT_ORDER))
    row = conn.execute(f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(CURRENT_ORDER))}) "
                       f"ORDER BY CASE state {order} END, created_at, id LIMIT 1", CURRENT_ORDER).fetchone()
    return _decode(row) if row else None


def state_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many jobs are in each state (states with none are missing)."""
    return {r["state"]: r["n"] for r in conn.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}


def waiting_reasons(conn: sqlite3.Connection, limit: int = 10) -> list[tuple[str, str, int]]:
    """(state, message, count) of the queued and built jobs, the most common first: why jobs wait."""
    return [(r["state"], r["message"], r["n"]) for r in conn.execute(
        "SELECT state, message, COUNT(*) AS n FROM jobs WHERE state IN ('queued', 'built') "
        "GROUP BY state, message ORDER BY n DESC LIMIT ?", (limit,))]


def done_since(conn: sqlite3.Connection, since: float) -> list[tuple[list[str], float]]:
    """(study uids, updated_at) of the jobs done after `since`, oldest first (the worklist's CM)."""
    out = []
    for r in conn.execute("SELECT study_uids, updated_at FROM jobs WHERE state='done' AND updated_at > ? "
                          "ORDER BY updated_at", (since,)):
        try:
            uids = [u for u in json.loads(r["study_uids"] or "[]") if isinstance(u, str) and u]
        except ValueError:
            uids = []
        out.append((uids, float(r["updated_at"])))
    return out




def study_burn_facts(conn: sqlite3.Connection, study_uid: str | None = None,
                     burn_aets: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Per study (or just `study_uid`), what retention needs of its disc jobs: `unburned` (instances
    whose file stored last is on no disc of a done job made after it arrived: a re-sent instance is
    unburned again) and of those `unburned_for_burning` (received on one of `burn_aets`),
    `last_done` (when its last done job finished), `active` and `failed` job counts, and the ids of
    its done jobs (whose disc images go with it)."""
    arrivals = index.instance_arrivals(conn, study_uid)  # sop_uid, study_uid, called_aet, received_at
    wanted = {row["sop_uid"] for row in arrivals}
    by_sop: dict[str, list[sqlite3.Row]] = {}
    for row in conn.execute("SELECT ji.sop_uid, j.id, j.state, j.created_at, j.finished_at FROM job_items ji "
                            "JOIN jobs j ON j.id=ji.job_id"):
        if row["sop_uid"] in wanted:
            by_sop.setdefault(row["sop_uid"], []).append(row)
    aets = set(burn_aets)
    facts: dict[str, dict[str, Any]] = {}
    seen_jobs: dict[str, set[str]] = {}
    for arrival in arrivals:
        item = facts.setdefault(arrival["study_uid"], {"unburned": 0, "unburned_for_burning": 0, "last_done": None,
                                                       "active": 0, "failed": 0, "done_jobs": []})
        job_rows = by_sop.get(arrival["sop_uid"], [])
        burned = any(j["state"] == DONE and j["created_at"] >= arrival["received_at"] for j in job_rows)
        if not burned:
            item["unburned"] += 1
            if arrival["called_aet"] in aets:
                item["unburned_for_burning"] += 1
        seen = seen_jobs.setdefault(arrival["study_uid"], set())
        for j in job_rows:
            if j["id"] in seen:
                continue
            seen.add(j["id"])
            if j["state"] == DONE:
                item["done_jobs"].append(j["id"])
                item["last_done"] = max(item["last_done"] or 0.0, j["finished_at"] or 0.0)
            elif j["state"] in ACTIVE:
                item["active"] += 1
            elif j["state"] == FAILED:
                item["failed"] += 1
    return facts
