"""Routing by called AE title: which received instances become which disc job, and when.

The DICOM process only indexes what it receives (the index records what each association received,
`index.association_sop_uids`, never rewritten when another association stores the same instance);
the burner polls state.db here, so receiving never waits for burning. The same instances sent to
`_E` and `_P`, or twice, make a disc each, each with everything its association received (the file
stored last for each instance).

- `<AET>_E` / `<AET>_P` ("per association"): when the association is *released*, everything it
  delivered becomes one job for the Epson / Primera role (nothing delivered: no job). An association
  that was *aborted* (A-ABORT) is not burned automatically (the sender usually retries, and half a
  study on a disc is worse than none): it is kept as `held` with a note, listed by
  `burnstation jobs list`, and a technician burns it on demand (`jobs burn --assoc N`). So is one
  whose connection dropped without a release ("connection closed"); the DICOM layer tells a
  completed release from a drop by the protocol state (`appliance.dicom.context.closing_reason`).
- `<AET>_TE` / `<AET>_TP` ("delayed"): each instance joins the pending group of its key (Patient ID,
  or Study Instance UID with `burn.group_by=study`; an empty Patient ID falls back to the study).
  Every arrival for the group, so every new series, pushes its deadline to arrival + `burn.delay_seconds`
  (a series still in transfer is never cut). The deadline is stored as wall-clock time, so after a
  restart the group resumes with the right remaining time. When it passes, the group becomes one
  job in the same transaction that marks it `job`. An instance arriving after that starts a new
  group whose `follows_job` names the earlier job; so does an instance re-sent (by another
  association) after its group became a job. Instances of an aborted delayed association
  still join their group (each was stored and acknowledged; the delay covers the sender's retry).

Exactly-once: associations are discovered through a persistent cursor over `associations.id`
(ids are assigned in commit order) into `burn_assocs`; an `_E`/`_P` association is claimed by the
`open → job` update of its row in the job's transaction; a delayed instance is claimed by its
`burn_claims (sop_uid, assoc_id)` row, written in the transaction that adds it to a group, with the
arrival it claimed (an instance the same association stores again is a new arrival, claimed again).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

from appliance import db, index
from appliance.burn import jobs
from appliance.config import Settings

LOG = logging.getLogger("burnstation.burner.routing")

# an association still "open" with nothing received for this long was cut by a station crash
STALE_SECONDS = 3600.0
# on the very first start, associations that ended longer ago than this are history, not work
HISTORY_SECONDS = 3600.0
# a new group names the job of the previous group of its key when that job is at most this old
FOLLOWS_WINDOW_SECONDS = 86400.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS burn_cursor (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS burn_assocs (
    assoc_id   INTEGER PRIMARY KEY,
    called_aet TEXT NOT NULL,
    role       TEXT NOT NULL,
    mode       TEXT NOT NULL,
    state      TEXT NOT NULL DEFAULT 'open',
    job_id     TEXT NOT NULL DEFAULT '',
    note       TEXT NOT NULL DEFAULT '',
    seen_at    REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS burn_assocs_state ON burn_assocs(state);
CREATE TABLE IF NOT EXISTS burn_groups (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    role            TEXT NOT NULL,
    group_by        TEXT NOT NULL,
    group_key       TEXT NOT NULL,
    patient_id      TEXT NOT NULL DEFAULT '',
    study_uid       TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL DEFAULT 'pending',
    instances       INTEGER NOT NULL DEFAULT 0,
    series          INTEGER NOT NULL DEFAULT 0,
    size            INTEGER NOT NULL DEFAULT 0,
    created_at      REAL NOT NULL,
    last_arrival_at REAL NOT NULL,
    deadline_at     REAL NOT NULL,
    job_id          TEXT NOT NULL DEFAULT '',
    follows_job     TEXT NOT NULL DEFAULT '',
    updated_at      REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS burn_groups_pending ON burn_groups(role, group_key) WHERE state='pending';
CREATE INDEX IF NOT EXISTS burn_groups_due ON burn_groups(state, deadline_at);
CREATE INDEX IF NOT EXISTS burn_groups_key ON burn_groups(role, group_key, state);
CREATE TABLE IF NOT EXISTS burn_group_items (
    group_id   INTEGER NOT NULL,
    sop_uid    TEXT NOT NULL,
    series_uid TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (group_id, sop_uid)
);
CREATE TABLE IF NOT EXISTS burn_claims (
    sop_uid    TEXT NOT NULL,
    assoc_id   INTEGER NOT NULL,
    group_id   INTEGER NOT NULL,
    claimed_at REAL NOT NULL,
    arrival_id INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sop_uid, assoc_id)
);
CREATE INDEX IF NOT EXISTS burn_claims_assoc ON burn_claims(assoc_id);
"""


def _add_claim_arrival(conn: sqlite3.Connection) -> None:
    """Databases made before `burn_claims.arrival_id`: what was claimed then was the newest arrival of
    its instance (so nothing already grouped is grouped again)."""
    if "arrival_id" in {r[1] for r in conn.execute("PRAGMA table_info(burn_claims)")}:
        return
    with db.transaction(conn):
        conn.execute("ALTER TABLE burn_claims ADD COLUMN arrival_id INTEGER NOT NULL DEFAULT 0")
        conn.execute("UPDATE burn_claims SET arrival_id=?", (index.last_arrival_id(conn),))


# applied by db.connect after every owner's SCHEMA, and after index's migrations (SCHEMA_OWNERS order)
MIGRATIONS = (("burn_routing.burn_claims.arrival_id", _add_claim_arrival),)

# derived_aets() role → (job role, mode)
_ROUTES = {"epson": ("epson", "assoc"), "primera": ("primera", "assoc"),
           "epson-delayed": ("epson", "delayed"), "primera-delayed": ("primera", "delayed")}


def routes(settings: Settings) -> dict[str, tuple[str, str]]:
    """Called AE title → (job role, "assoc" | "delayed") for the titles that burn."""
    return {aet: _ROUTES[kind] for aet, kind in settings.derived_aets().items() if kind in _ROUTES}


class Router:
    """One pass = discover new associations, claim delayed arrivals, turn due groups into jobs."""

    def __init__(self, conn: sqlite3.Connection, settings: Settings) -> None:
        self.conn = conn
        self.settings = settings

    def run_once(self, now: float | None = None) -> list[str]:
        """Do all routing work that is due; returns the ids of the jobs created."""
        now = time.time() if now is None else now
        created: list[str] = []
        self.discover(now)
        # a `stale` association is still followed: it may be alive after all (the wall clock jumped
        # ahead), and when it ends or delivers more it is routed as any other
        for row in self.conn.execute("SELECT * FROM burn_assocs WHERE state IN ('open', 'stale') "
                                     "ORDER BY assoc_id").fetchall():
            job_id = self._follow(dict(row), now)
            if job_id:
                created.append(job_id)
        created.extend(self.finalize_due(now))
        return created

    # -- discovery

    def discover(self, now: float) -> None:
        conn = self.conn
        cursor = conn.execute("SELECT value FROM burn_cursor WHERE name='associations'").fetchone()
        if cursor is None:
            first = index.first_association_since(conn, now - HISTORY_SECONDS)
            start = (first - 1) if first is not None else index.last_association_id(conn)
            conn.execute("INSERT OR IGNORE INTO burn_cursor (name, value) VALUES ('associations', ?)", (start,))
            last = start
        else:
            last = cursor["value"]
        rows = index.associations_after(conn, last, limit=1000)
        if not rows:
            return
        table = routes(self.settings)
        with db.transaction(conn):
            for row in rows:
                route = table.get(row["called_aet"])
                if route is not None:
                    conn.execute("INSERT OR IGNORE INTO burn_assocs (assoc_id, called_aet, role, mode, seen_at, "
                                 "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                                 (row["id"], row["called_aet"], route[0], route[1], now, now))
            conn.execute("UPDATE burn_cursor SET value=? WHERE name='associations' AND value < ?",
                         (rows[-1]["id"], rows[-1]["id"]))

    # -- one association

    def _follow(self, item: dict[str, Any], now: float) -> str | None:
        conn = self.conn
        assoc = index.association(conn, item["assoc_id"])
        if assoc is None:
            self._set_assoc(item["assoc_id"], "done", note="association row vanished")
            return None
        ended = assoc["ended_at"] is not None
        if item["mode"] == "delayed":
            self.claim_delayed(item, now, ended)
            if not ended:
                self._check_stale(item, assoc, now)
            return None
        if not ended:
            self._check_stale(item, assoc, now)
            return None
        uids = index.association_sop_uids(conn, assoc["id"])
        if not uids:
            self._set_assoc(assoc["id"], "empty", note=f"{assoc['result']}: nothing received")
            return None
        if assoc["result"] != "released":
            self._set_assoc(assoc["id"], "held", note=(
                f"association {assoc['result']} after {len(uids)} instance(s): not burned automatically; "
                f"burn it with `burnstation jobs burn --assoc {assoc['id']}`"))
            LOG.warning("association %s to %s was %s: %d instances held, not burned", assoc["id"],
                        assoc["called_aet"], assoc["result"], len(uids))
            return None
        if assoc["failed"]:  # a disc without the refused objects would look complete to whoever gets it
            self._set_assoc(assoc["id"], "held", note=(
                f"association released with {assoc['failed']} object(s) refused and {len(uids)} stored: not "
                f"burned automatically (the disc would lack them); let the sender send again, or burn what "
                f"arrived with `burnstation jobs burn --assoc {assoc['id']}`"))
            LOG.warning("association %s to %s: %d instance(s) refused, %d stored; held, not burned", assoc["id"],
                        assoc["called_aet"], assoc["failed"], len(uids))
            return None
        with db.transaction(conn):
            claimed = conn.execute("UPDATE burn_assocs SET state='job', updated_at=? WHERE assoc_id=? "
                                   "AND state IN ('open', 'stale')",
                                   (now, assoc["id"])).rowcount
            if not claimed:
                return None
            job_id = jobs.create_job_in(
                conn, role=item["role"], sop_uids=uids, source="assoc", assoc_id=assoc["id"],
                copies=self.settings.get("burn.default_copies"), verify=self.settings.get("burn.verify"),
                message=f"from association {assoc['id']} ({assoc['calling_aet']} → {assoc['called_aet']})")
            conn.execute("UPDATE burn_assocs SET job_id=? WHERE assoc_id=?", (job_id, assoc["id"]))
        LOG.info("job %s: %d instances of association %s (%s)", job_id, len(uids), assoc["id"], assoc["called_aet"])
        return job_id

    def _set_assoc(self, assoc_id: int, state: str, note: str = "") -> None:
        self.conn.execute("UPDATE burn_assocs SET state=?, note=?, updated_at=? WHERE assoc_id=? "
                          "AND state IN ('open', 'stale')",
                          (state, note[:1000], time.time(), assoc_id))

    def _check_stale(self, item: dict[str, Any], assoc: sqlite3.Row, now: float) -> None:
        if item["state"] == "stale" or now - assoc["started_at"] < STALE_SECONDS:
            return
        last = index.association_last_arrival(self.conn, assoc["id"]) or assoc["started_at"]
        if now - last >= STALE_SECONDS:
            what = "its instances so far joined their group" if item["mode"] == "delayed" else (
                f"not burned; burn it with `burnstation jobs burn --assoc {assoc['id']}`")
            self._set_assoc(assoc["id"], "stale", note=f"never closed (station stopped during it?): {what}")

    # -- delayed groups

    def claim_delayed(self, item: dict[str, Any], now: float, ended: bool) -> int:
        """Put the not yet claimed instances of a delayed association into their groups."""
        conn = self.conn
        group_by = self.settings.get("burn.group_by")
        delay = float(self.settings.get("burn.delay_seconds"))
        assoc_id = item["assoc_id"]
        if not ended and index.association_last_arrival_id(conn, assoc_id) <= self._last_claimed(assoc_id):
            return 0  # the cheap common case: nothing new on an open association
        with db.transaction(conn):  # read again under the write lock: a second burner cannot claim the same rows
            claimed = {r["sop_uid"]: r["arrival_id"] for r in conn.execute(
                "SELECT sop_uid, arrival_id FROM burn_claims WHERE assoc_id=?", (assoc_id,))}
            # new instances, and instances this association stored again since they were claimed
            rows = [r for r in index.association_arrivals(conn, assoc_id)
                    if r["arrival_id"] > claimed.get(r["sop_uid"], -1)]
            for row in rows:
                patient_id = row["patient_id"] or ""
                if group_by == "patient" and patient_id:
                    key = f"patient:{patient_id}"
                else:
                    key = f"study:{row['study_uid']}"
                group = self._pending_group(item["role"], group_by, key, patient_id, row["study_uid"], now)
                added = conn.execute("INSERT OR IGNORE INTO burn_group_items (group_id, sop_uid, series_uid) "
                                     "VALUES (?, ?, ?)", (group, row["sop_uid"], row["series_uid"])).rowcount
                conn.execute("INSERT INTO burn_claims (sop_uid, assoc_id, group_id, claimed_at, arrival_id) "
                             "VALUES (?, ?, ?, ?, ?) ON CONFLICT(sop_uid, assoc_id) DO UPDATE SET "
                             "group_id=excluded.group_id, claimed_at=excluded.claimed_at, arrival_id=excluded.arrival_id",
                             (row["sop_uid"], assoc_id, group, now, row["arrival_id"]))
                arrival = min(float(row["received_at"] or now), now)
                conn.execute(
                    "UPDATE burn_groups SET instances=instances+?, size=size+?, "
                    "series=(SELECT COUNT(DISTINCT series_uid) FROM burn_group_items WHERE group_id=?), "
                    "last_arrival_at=MAX(last_arrival_at, ?), deadline_at=MAX(deadline_at, ?), updated_at=? "
                    "WHERE id=?", (added, row["size"] if added else 0, group, arrival, arrival + delay, now, group))
            if ended:
                conn.execute("UPDATE burn_assocs SET state='done', updated_at=? WHERE assoc_id=? "
                             "AND state IN ('open', 'stale')",
                             (now, item["assoc_id"]))
        return len(rows)

    def _last_claimed(self, assoc_id: int) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(arrival_id), 0) FROM burn_claims WHERE assoc_id=?",
                                     (assoc_id,)).fetchone()[0])

    def _pending_group(self, role: str, group_by: str, key: str, patient_id: str, study_uid: str, now: float) -> int:
        conn = self.conn
        row = conn.execute("SELECT id FROM burn_groups WHERE role=? AND group_key=? AND state='pending'",
                           (role, key)).fetchone()
        if row is not None:
            return int(row["id"])
        prev = conn.execute("SELECT job_id FROM burn_groups WHERE role=? AND group_key=? AND state='job' "
                            "AND updated_at >= ? ORDER BY id DESC LIMIT 1",
                            (role, key, now - FOLLOWS_WINDOW_SECONDS)).fetchone()
        cur = conn.execute(
            "INSERT INTO burn_groups (role, group_by, group_key, patient_id, study_uid, created_at, last_arrival_at, "
            "deadline_at, follows_job, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?, ?)",
            (role, group_by, key, patient_id, study_uid, now, prev["job_id"] if prev else "", now))
        return int(cur.lastrowid or 0)

    def finalize_due(self, now: float) -> list[str]:
        """Every pending group whose deadline passed becomes one job (one transaction each).

        A deadline more than `burn.delay_seconds` ahead can only come from a wall clock that went
        back since it was set (NTP correcting a clock that ran an hour ahead): it is brought back to
        now + delay, so the group does not wait out the jump."""
        conn = self.conn
        created = []
        delay = float(self.settings.get("burn.delay_seconds"))
        moved = conn.execute("UPDATE burn_groups SET deadline_at=?, updated_at=? WHERE state='pending' AND deadline_at > ?",
                             (now + delay, now, now + delay + 1)).rowcount
        if moved:
            LOG.warning("%d delayed group(s) had a deadline beyond now + burn.delay_seconds (the clock went "
                        "back): they burn %g s from now", moved, delay)
        due = conn.execute("SELECT id FROM burn_groups WHERE state='pending' AND deadline_at <= ? ORDER BY deadline_at",
                           (now,)).fetchall()
        for row in due:
            with db.transaction(conn):
                group = conn.execute("SELECT * FROM burn_groups WHERE id=? AND state='pending' AND deadline_at <= ?",
                                     (row["id"], now)).fetchone()
                if group is None:
                    continue
                uids = [r["sop_uid"] for r in conn.execute(
                    "SELECT sop_uid FROM burn_group_items WHERE group_id=?", (group["id"],))]
                note = f"delayed group {group['id']} ({group['group_by']} {group['group_key'].split(':', 1)[1]})"
                if group["follows_job"]:
                    note += f"; arrived after job {group['follows_job']} was made"
                job_id = jobs.create_job_in(
                    conn, role=group["role"], sop_uids=uids, source="delayed", group_id=group["id"],
                    follows_job=group["follows_job"], copies=self.settings.get("burn.default_copies"),
                    verify=self.settings.get("burn.verify"), message=note)
                conn.execute("UPDATE burn_groups SET state='job', job_id=?, updated_at=? WHERE id=?",
                             (job_id, now, group["id"]))
            LOG.info("job %s: %s with %d instances", job_id, note, len(uids))
            created.append(job_id)
        return created


# --------------------------------------------------------------------------- on demand and listings


def burn_study(conn: sqlite3.Connection, settings: Settings, study_uid: str, role: str = "any",
               copies: int | None = None, priority: int = 0) -> str:
    """A job for every instance of a study in the index (burn on demand)."""
    uids = jobs.study_sop_uids(conn, study_uid)
    if not uids:
        raise jobs.JobError(f"no instances of study {study_uid!r} in the index")
    return jobs.create_job(conn, role=role, sop_uids=uids, source="manual", priority=priority,
                           copies=copies or settings.get("burn.default_copies"), verify=settings.get("burn.verify"),
                           message=f"on demand: study {study_uid}")


def burn_association(conn: sqlite3.Connection, settings: Settings, assoc_id: int, role: str | None = None,
                     copies: int | None = None, priority: int = 0) -> str:
    """A job for what one association delivered (e.g. a held, aborted `_E` association), whatever
    other associations delivered of the same instances since."""
    uids = index.association_sop_uids(conn, assoc_id)
    if not uids:
        raise jobs.JobError(f"association {assoc_id} delivered no instances that are still in the index")
    item = conn.execute("SELECT role FROM burn_assocs WHERE assoc_id=?", (assoc_id,)).fetchone()
    role = role or (item["role"] if item else "any")
    with db.transaction(conn):
        job_id = jobs.create_job_in(conn, role=role, sop_uids=uids, source="manual", assoc_id=assoc_id,
                                    copies=copies or settings.get("burn.default_copies"),
                                    verify=settings.get("burn.verify"), priority=priority,
                                    message=f"on demand: association {assoc_id}")
        conn.execute("UPDATE burn_assocs SET state='job', job_id=?, updated_at=? WHERE assoc_id=? "
                     "AND state IN ('open', 'held', 'stale')", (job_id, time.time(), assoc_id))
    return job_id


def pending_groups(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute("SELECT * FROM burn_groups WHERE state='pending' ORDER BY deadline_at")]


def studies_in_pending_groups(conn: sqlite3.Connection) -> set[str]:
    """Study Instance UIDs with an instance waiting in a pending delayed group (retention keeps them)."""
    waiting = [r[0] for r in conn.execute(
        "SELECT DISTINCT gi.sop_uid FROM burn_groups g JOIN burn_group_items gi ON gi.group_id=g.id "
        "WHERE g.state='pending'")]
    return set(index.studies_of(conn, waiting).values())


def held_associations(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(
        "SELECT * FROM burn_assocs WHERE state IN ('held', 'stale') ORDER BY assoc_id DESC LIMIT 100")]


def pending_groups_with_study(conn: sqlite3.Connection, study_uid: str) -> list[int]:
    """Ids of delayed groups still waiting that hold an instance of the study."""
    uids = index.study_sop_uids(conn, study_uid)
    found: set[int] = set()
    for start in range(0, len(uids), 900):
        chunk = uids[start:start + 900]
        found.update(r["id"] for r in conn.execute(
            "SELECT DISTINCT g.id FROM burn_groups g JOIN burn_group_items gi ON gi.group_id=g.id "
            f"WHERE gi.sop_uid IN ({','.join('?' * len(chunk))}) AND g.state='pending'", tuple(chunk)))
    return sorted(found)


def group_of_job(conn: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM burn_groups WHERE job_id=?", (job_id,)).fetchone()
    return dict(row) if row else None
