"""Worklist items in state.db, changed by HL7 orders, read by the MWL C-FIND handler.

Every change bumps a generation counter (`worklist_meta`) and stamps the row with it, so a
reader can tell cheaply whether anything changed and reload only the rows that did.
Cancelled orders are deleted; completed and discontinued ones stay listed (with their
status) for `worklist.done_retention_hours`, then `purge_done` removes them.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable

from appliance import db
from appliance.hl7.message import HL7Error
from appliance.worklist import record as rec
from appliance.worklist.mapping import OrderUpdate, set_status

SCHEMA = """
CREATE TABLE IF NOT EXISTS worklist_items (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    placer      TEXT NOT NULL DEFAULT '',
    filler      TEXT NOT NULL DEFAULT '',
    accession   TEXT NOT NULL DEFAULT '',
    study_uid   TEXT NOT NULL DEFAULT '',
    patient_id  TEXT NOT NULL DEFAULT '',
    status      TEXT NOT NULL DEFAULT 'SCHEDULED',
    dataset     TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    done_at     REAL,
    images_at   REAL,
    disc_done_at REAL,
    rev         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS worklist_items_placer ON worklist_items(placer);
CREATE INDEX IF NOT EXISTS worklist_items_filler ON worklist_items(filler);
CREATE INDEX IF NOT EXISTS worklist_items_accession ON worklist_items(accession);
CREATE INDEX IF NOT EXISTS worklist_items_study ON worklist_items(study_uid);
CREATE INDEX IF NOT EXISTS worklist_items_status ON worklist_items(status);
CREATE TABLE IF NOT EXISTS worklist_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

MIGRATIONS: tuple = ()  # applied by db.connect after SCHEMA (see appliance.db)

OPEN_STATUSES = ("SCHEDULED", "STARTED")
DONE_STATUSES = ("COMPLETED", "DISCONTINUED")


def generation(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM worklist_meta WHERE key='generation'").fetchone()
    return int(row[0]) if row else 0


def _bump(conn: sqlite3.Connection) -> int:
    conn.execute("INSERT INTO worklist_meta(key, value) VALUES('generation', 1) "
                 "ON CONFLICT(key) DO UPDATE SET value=value+1")
    return generation(conn)


def meta_get(conn: sqlite3.Connection, key: str, default: int = 0) -> int:
    row = conn.execute("SELECT value FROM worklist_meta WHERE key=?", (key,)).fetchone()
    return int(row[0]) if row else default


def meta_set(conn: sqlite3.Connection, key: str, value: float) -> None:
    conn.execute("INSERT INTO worklist_meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                 (key, value))


def meta_get_float(conn: sqlite3.Connection, key: str, default: float = 0.0) -> float:
    """A mark stored as REAL (a time), read back exactly."""
    row = conn.execute("SELECT value FROM worklist_meta WHERE key=?", (key,)).fetchone()
    return float(row[0]) if row else default


def newest_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM worklist_items").fetchone()[0])


def open_items(conn: sqlite3.Connection, *, study_uid: str | None = None, accession: str | None = None,
               after_id: int | None = None) -> list[sqlite3.Row]:
    """Items still scheduled or started: of a study, of an accession number, or newer than an id."""
    if study_uid is not None:
        where, args = "study_uid=?", (study_uid,)
    elif accession is not None:
        where, args = "accession=?", (accession,)
    elif after_id is not None:
        where, args = "id > ?", (after_id,)
    else:
        raise ValueError("open_items: give study_uid, accession or after_id")
    return conn.execute(f"SELECT * FROM worklist_items WHERE {where} AND status IN (?, ?) ORDER BY id",
                        (*args, *OPEN_STATUSES)).fetchall()


def mark_images_arrived(conn: sqlite3.Connection, item_id: int, now: float) -> None:
    conn.execute("UPDATE worklist_items SET images_at=? WHERE id=?", (now, item_id))


def awaiting_disc(conn: sqlite3.Connection, study_uid: str) -> list[sqlite3.Row]:
    """Items of a study whose images arrived and whose disc is not reported done yet."""
    return conn.execute("SELECT * FROM worklist_items WHERE study_uid=? AND images_at IS NOT NULL "
                        "AND disc_done_at IS NULL", (study_uid,)).fetchall()


def mark_disc_done(conn: sqlite3.Connection, item_id: int, now: float) -> None:
    conn.execute("UPDATE worklist_items SET disc_done_at=? WHERE id=?", (now, item_id))


def find_order(conn: sqlite3.Connection, placer: str, filler: str, accession: str) -> sqlite3.Row | None:
    """The item of an order: by placer order number, else filler order number, else accession."""
    for column, value in (("placer", placer), ("filler", filler)):
        if value:
            row = conn.execute(f"SELECT * FROM worklist_items WHERE {column}=? ORDER BY id DESC LIMIT 1",
                               (value,)).fetchone()
            if row is not None:
                return row
    if accession and not (placer or filler):
        return conn.execute("SELECT * FROM worklist_items WHERE accession=? ORDER BY id DESC LIMIT 1",
                            (accession,)).fetchone()
    return None


def apply(conn: sqlite3.Connection, updates: Iterable[OrderUpdate], now: float | None = None,
          control_id: str = "") -> list[str]:
    """Apply the orders of one message, all or nothing; HL7Error(AE) when one refers to no item."""
    now = now or time.time()
    done: list[str] = []
    with db.transaction(conn):
        gen = _bump(conn)
        for update in updates:
            done.append(_apply_one(conn, update, now, gen, control_id))
    return done


def _apply_one(conn: sqlite3.Connection, u: OrderUpdate, now: float, gen: int, control_id: str) -> str:
    row = find_order(conn, u.placer, u.filler, u.accession)
    if u.action in ("new", "change"):
        record = u.record
        status = u.status
        if row is not None:
            old = rec.from_json(row["dataset"])
            if not u.study_uid_given and 0x0020000D in old:
                record[0x0020000D] = old[0x0020000D]
            status = status or row["status"]
        elif u.action == "change":
            pass  # an unknown order that is changed: take it as new (RIS often send XO for updates)
        if 0x0020000D not in record:
            # imported here: the hl7 process otherwise never needs pydicom (0.35 s of CPU to import)
            from pydicom.uid import generate_uid

            record[0x0020000D] = ("UI", generate_uid())
        status = status or "SCHEDULED"
        if status == "CANCELED":
            if row is not None:
                conn.execute("DELETE FROM worklist_items WHERE id=?", (row["id"],))
            return f"{u.describe()}: cancelled"
        set_status(record, status)
        done_at = ((row["done_at"] if row is not None else None) or now) if status in DONE_STATUSES else None
        values = (u.placer, u.filler, u.accession, rec.get(record, 0x0020000D), rec.get(record, 0x00100020), status,
                  rec.to_json(record), now, done_at, gen)
        if row is None:
            conn.execute("INSERT INTO worklist_items(placer, filler, accession, study_uid, patient_id, status, dataset, "
                         "updated_at, done_at, rev, created_at) VALUES(?,?,?,?,?,?,?,?,?,?,?)", (*values, now))
            return f"{u.describe()}: created"
        conn.execute("UPDATE worklist_items SET placer=?, filler=?, accession=?, study_uid=?, patient_id=?, status=?, "
                     "dataset=?, updated_at=?, done_at=?, rev=? WHERE id=?", (*values, row["id"]))
        return f"{u.describe()}: updated"
    if row is None:
        raise HL7Error("AE", f"unknown order (placer {u.placer!r}, filler {u.filler!r}, accession "
                       f"{u.accession!r}): nothing to {u.action}", control_id)
    status = {"cancel": "CANCELED", "discontinue": "DISCONTINUED"}.get(u.action) or u.status or "SCHEDULED"
    if status == "CANCELED":
        conn.execute("DELETE FROM worklist_items WHERE id=?", (row["id"],))
        return f"{u.describe()}: cancelled"
    set_item_status(conn, row, status, now, gen)
    return f"{u.describe()}: {status.lower()}"


def set_item_status(conn: sqlite3.Connection, row: sqlite3.Row, status: str, now: float, gen: int | None = None) -> None:
    record = rec.from_json(row["dataset"])
    set_status(record, status)
    done_at = (row["done_at"] or now) if status in DONE_STATUSES else None
    conn.execute("UPDATE worklist_items SET status=?, dataset=?, updated_at=?, done_at=?, rev=? WHERE id=?",
                 (status, rec.to_json(record), now, done_at, gen if gen is not None else _bump(conn), row["id"]))


def purge_done(conn: sqlite3.Connection, retention_hours: float, now: float | None = None) -> int:
    """Remove completed/discontinued items older than the retention time."""
    now = now or time.time()
    with db.transaction(conn):
        cur = conn.execute("DELETE FROM worklist_items WHERE status IN (?, ?) AND done_at IS NOT NULL AND done_at <= ?",
                           (*DONE_STATUSES, now - retention_hours * 3600))
        if cur.rowcount:
            _bump(conn)
    return cur.rowcount


def revisions(conn: sqlite3.Connection) -> dict[int, int]:
    return {row[0]: row[1] for row in conn.execute("SELECT id, rev FROM worklist_items")}


def load(conn: sqlite3.Connection, ids: list[int]) -> list[sqlite3.Row]:
    rows: list[sqlite3.Row] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        rows += conn.execute(f"SELECT id, rev, status, done_at, dataset FROM worklist_items WHERE id IN ({marks})",
                             chunk).fetchall()
    return rows
