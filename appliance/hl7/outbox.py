"""Outbound HL7: order status messages to the RIS, through a retry queue in state.db.

A message is queued in the same transaction as the status change it reports, and is delivered
in order by the hl7 service. A RIS that is down, refuses the connection or times out does not
lose anything: the message waits with a growing delay (up to `MAX_DELAY`) and is retried; an
AR/CR answer (the RIS rejects the message as such) marks it failed, an AE/CE is retried a few
times first.
"""

from __future__ import annotations

import logging
import sqlite3
import time

from appliance.config import python_codec
from appliance.hl7 import message as hl7msg
from appliance.hl7 import mllp

LOG = logging.getLogger("burnstation.hl7")

SCHEMA = """
CREATE TABLE IF NOT EXISTS hl7_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id     INTEGER,
    event       TEXT NOT NULL DEFAULT '',
    message     TEXT NOT NULL,
    charset     TEXT NOT NULL DEFAULT '',
    state       TEXT NOT NULL DEFAULT 'pending',
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     REAL NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL,
    sent_at     REAL,
    last_error  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS hl7_outbox_state ON hl7_outbox(state, next_at);
"""

MIGRATIONS: tuple = ()  # applied by db.connect after SCHEMA (see appliance.db)

MAX_DELAY = 300.0
MAX_AE_ATTEMPTS = 5


def queue(conn: sqlite3.Connection, item_id: int | None, event: str, message: str, charset: str) -> int:
    """Queue one message (call inside the transaction of the change it reports)."""
    cur = conn.execute("INSERT INTO hl7_outbox(item_id, event, message, charset, created_at) VALUES(?,?,?,?,?)",
                       (item_id, event, message, charset, time.time()))
    return int(cur.lastrowid or 0)


def pending(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM hl7_outbox WHERE state='pending' ORDER BY id").fetchall()


def _ack_code(reply: bytes) -> tuple[str, str]:
    text = reply.decode("latin_1", "replace")
    for segment in text.replace("\n", "\r").split("\r"):
        if segment.startswith("MSA"):
            fields = segment.split(segment[3:4] or "|")
            code = fields[1].strip() if len(fields) > 1 else ""
            return code, fields[3].strip() if len(fields) > 3 else ""
    return "", "reply without MSA segment"


def deliver(conn: sqlite3.Connection, host: str, port: int, timeout: float = 10.0) -> int:
    """Send what is due, in order; stops at the first unreachable attempt. Returns messages sent."""
    sent = 0
    for row in pending(conn):
        now = time.time()
        if row["next_at"] > now:
            break  # keep the order: nothing after a waiting message goes first
        payload = row["message"].encode(python_codec(row["charset"]) if row["charset"] else "ascii", "replace")
        try:
            reply = mllp.send(host, port, payload, timeout=timeout)
        except OSError as exc:
            _retry(conn, row, f"{host}:{port} unreachable: {exc}")
            LOG.warning("RIS %s:%s unreachable (%s); %d message(s) wait", host, port, exc, len(pending(conn)))
            break
        code, text = _ack_code(reply or b"")
        if code in ("AA", "CA"):
            conn.execute("UPDATE hl7_outbox SET state='sent', sent_at=?, attempts=attempts+1, last_error='' "
                         "WHERE id=?", (now, row["id"]))
            sent += 1
            continue
        if code in ("AR", "CR") or row["attempts"] + 1 >= MAX_AE_ATTEMPTS:
            conn.execute("UPDATE hl7_outbox SET state='failed', attempts=attempts+1, last_error=? WHERE id=?",
                         (f"{code or 'no ACK'}: {text}"[:500], row["id"]))
            LOG.error("RIS refused the %s message for item %s: %s %s", row["event"], row["item_id"], code, text)
            continue
        _retry(conn, row, f"{code or 'no ACK'}: {text}")
        break
    return sent


def _retry(conn: sqlite3.Connection, row: sqlite3.Row, error: str) -> None:
    delay = min(MAX_DELAY, 2.0 ** min(row["attempts"], 10))
    conn.execute("UPDATE hl7_outbox SET attempts=attempts+1, next_at=?, last_error=? WHERE id=?",
                 (time.time() + delay, error[:500], row["id"]))


def status_message(record_values: dict[str, str], order_status: str, *, sending_application: str,
                   sending_facility: str, charset: str | None) -> str:
    """ORM^O01 with ORC-1=SC and ORC-5 = the order status (IP: images arrived, CM: disc done)."""
    v = record_values
    esc = hl7msg.escape

    def xpn(pn: str) -> str:
        parts = (pn.split("=")[0].split("^") + [""] * 5)[:5]
        family, given, middle, prefix, suffix = (esc(p) for p in parts)
        return "^".join([family, given, middle, suffix, prefix]).rstrip("^")

    pid3 = esc(v.get("patient_id", ""))
    if v.get("issuer"):
        pid3 += "^^^" + esc(v["issuer"])
    segments = [
        hl7msg.msh(sending_application, sending_facility, "", "", "ORM^O01", "2.3.1", charset),
        f"PID|1||{pid3}||{xpn(v.get('patient_name', ''))}",
        "|".join(["ORC", "SC", esc(v.get("placer", "")), esc(v.get("filler", "")), "", order_status]),
        "|".join(["OBR", "1", esc(v.get("placer", "")), esc(v.get("filler", "")), esc(v.get("procedure", ""))]
                 + [""] * 13 + [esc(v.get("accession", "")), esc(v.get("rp_id", "")), esc(v.get("sps_id", ""))]
                 + ["", hl7msg.timestamp(), "", esc(v.get("modality", ""))]),
        f"ZDS|{esc(v.get('study_uid', ''))}^^Application^DICOM",
    ]
    return "\r".join(segments) + "\r"
