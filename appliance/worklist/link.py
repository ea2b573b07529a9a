"""Link worklist items to what happens to their studies.

The hl7 service polls: new arrivals (what associations received, `index.arrivals_since`, past a
high-water mark, so the C-STORE path is never slowed; a re-sent instance, e.g. with a corrected
Accession Number, is a new arrival) are matched to open items by Study Instance UID or Accession
Number; a matched
item is marked done (SPS status COMPLETED) and the RIS gets ORC-5=IP. When the burn pipeline's
`jobs` table shows a finished disc holding the item's study, the RIS gets ORC-5=CM. Messages are
queued only when an HL7 destination is configured.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time

from appliance import db, index
from appliance.config import Settings
from appliance.hl7 import outbox
from appliance.worklist import items
from appliance.worklist import record as rec

LOG = logging.getLogger("burnstation.worklist")

HWM_KEY = "arrivals_id"  # index.arrivals_since's cursor
OLD_HWM_KEY = "instances_rowid"  # before arrivals: the rowid of `instances`, which a re-sent instance keeps
ITEMS_KEY = "items_checked_id"
JOBS_KEY = "jobs_done_at"  # updated_at of the last finished job looked at  # orders that arrive after their images are matched once, on arrival


def _table_columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _values(row: sqlite3.Row) -> dict[str, str]:
    record = rec.from_json(row["dataset"])
    sps = record.get(0x00400100, ("SQ", [{}]))[1]
    step = sps[0] if sps else {}
    protocol = step.get(0x00400008, ("SQ", []))[1]
    code = protocol[0] if protocol else {}
    procedure = "^".join([rec.get(code, 0x00080100), rec.get(code, 0x00080104), rec.get(code, 0x00080102)]).strip("^")
    return {
        "patient_id": rec.get(record, 0x00100020), "issuer": rec.get(record, 0x00100021),
        "patient_name": rec.get(record, 0x00100010), "placer": row["placer"], "filler": row["filler"],
        "accession": row["accession"], "study_uid": row["study_uid"], "rp_id": rec.get(record, 0x00401001),
        "sps_id": rec.get(step, 0x00400009), "modality": rec.get(step, 0x00080060), "procedure": procedure,
        "charset": rec.get(record, rec.CHARSET),
    }


def _notify(conn: sqlite3.Connection, settings: Settings, row: sqlite3.Row, order_status: str) -> None:
    if not settings.get("hl7.destination_host"):
        return
    values = _values(row)
    charset = values["charset"] or None
    message = outbox.status_message(values, order_status, sending_application=settings.get("hl7.sending_application"),
                                    sending_facility=settings.get("hl7.sending_facility"), charset=charset)
    outbox.queue(conn, row["id"], order_status, message, charset or "")


def link_images(conn: sqlite3.Connection, settings: Settings, now: float | None = None) -> int:
    """Mark open items done whose images arrived (new instances since the last call, or new items whose
    study is already stored); returns how many."""
    now = now or time.time()
    hwm = items.meta_get(conn, HWM_KEY, -1)
    if hwm < 0:  # first call: from the start, or after an upgrade from where the old cursor left off
        hwm = index.last_arrival_id(conn) if items.meta_get(conn, OLD_HWM_KEY) else 0
        items.meta_set(conn, HWM_KEY, hwm)
    rows = index.arrivals_since(conn, hwm)
    new_hwm = rows[-1][0] if rows else hwm
    study_uids = {r[1] for r in rows if r[1]}
    accessions = set()
    has_studies = bool(_table_columns(conn, "studies"))
    if has_studies:
        for uid in study_uids:
            found = conn.execute("SELECT accession FROM studies WHERE study_uid=?", (uid,)).fetchone()
            if found and found[0]:
                accessions.add(found[0])
    items_hwm = items.meta_get(conn, ITEMS_KEY)
    newest_item = conn.execute("SELECT COALESCE(MAX(id), 0) FROM worklist_items").fetchone()[0]
    if not rows and newest_item == items_hwm:
        return 0
    marked = 0
    with db.transaction(conn):
        candidates: dict[int, sqlite3.Row] = {}
        for uid in study_uids:
            for row in conn.execute("SELECT * FROM worklist_items WHERE study_uid=? AND status IN (?, ?)",
                                    (uid, *items.OPEN_STATUSES)):
                candidates[row["id"]] = row
        for acc in accessions:
            for row in conn.execute("SELECT * FROM worklist_items WHERE accession=? AND status IN (?, ?)",
                                    (acc, *items.OPEN_STATUSES)):
                candidates[row["id"]] = row
        if has_studies and newest_item > items_hwm:
            for row in conn.execute(
                    "SELECT w.* FROM worklist_items w WHERE w.id > ? AND w.status IN (?, ?) AND EXISTS "
                    "(SELECT 1 FROM studies s WHERE s.study_uid=w.study_uid OR (w.accession<>'' AND "
                    "s.accession=w.accession))", (items_hwm, *items.OPEN_STATUSES)):
                candidates[row["id"]] = row
        for row in candidates.values():
            items.set_item_status(conn, row, "COMPLETED", now)
            conn.execute("UPDATE worklist_items SET images_at=? WHERE id=?", (now, row["id"]))
            _notify(conn, settings, row, "IP")
            marked += 1
            LOG.info("worklist item %s (accession %s) done: its images arrived", row["id"], row["accession"])
        items.meta_set(conn, HWM_KEY, new_hwm)
        items.meta_set(conn, ITEMS_KEY, newest_item)
    return marked


def link_discs(conn: sqlite3.Connection, settings: Settings, now: float | None = None) -> int:
    """Notify CM for items whose study is on a disc finished since the last call (the burn pipeline's
    `jobs` table, read only if it exists with the expected columns)."""
    now = now or time.time()
    if not {"state", "study_uids", "updated_at"} <= _table_columns(conn, "jobs"):
        return 0
    row = conn.execute("SELECT value FROM worklist_meta WHERE key=?", (JOBS_KEY,)).fetchone()
    since = float(row[0]) if row else 0.0  # stored as REAL: the exact updated_at of the last job seen
    jobs = conn.execute("SELECT study_uids, updated_at FROM jobs WHERE state='done' AND updated_at > ? "
                        "ORDER BY updated_at", (since,)).fetchall()
    if not jobs:
        return 0
    study_uids: set[str] = set()
    for job in jobs:
        try:
            study_uids.update(u for u in json.loads(job[0] or "[]") if isinstance(u, str) and u)
        except ValueError:
            continue
    notified = 0
    with db.transaction(conn):
        for uid in study_uids:
            for row in conn.execute("SELECT * FROM worklist_items WHERE study_uid=? AND images_at IS NOT NULL "
                                    "AND disc_done_at IS NULL", (uid,)).fetchall():
                conn.execute("UPDATE worklist_items SET disc_done_at=? WHERE id=?", (now, row["id"]))
                _notify(conn, settings, row, "CM")
                notified += 1
                LOG.info("worklist item %s (accession %s): disc done", row["id"], row["accession"])
        conn.execute("INSERT INTO worklist_meta(key, value) VALUES(?, ?) "
                     "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (JOBS_KEY, float(jobs[-1][1])))
    return notified
