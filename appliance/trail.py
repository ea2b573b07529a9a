"""The audit trail's one call site for retention, network and configuration changes.

`record(action, target, detail)` writes each entry to the audit log in state.db (appliance/audit.py,
what the web UI's audit page shows), to the station log and, as one JSON line, to
`<data>/logs/audit-trail.log` (readable while state.db is not).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from appliance import audit, db

LOG = logging.getLogger("burnstation.audit")
TRAIL_FILE = "audit-trail.log"  # in <data>/logs/


def record(action: str, target: str, detail: dict[str, Any], data_dir: str | Path, actor: str = "system") -> None:
    entry = {"at": time.time(), "action": action, "target": target, "actor": actor, **detail}
    LOG.info("audit %s %s %s", action, target, json.dumps(detail, sort_keys=True, default=str))
    logs = Path(data_dir) / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / TRAIL_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
    except OSError as exc:
        LOG.error("cannot write the audit trail: %s", exc)
    try:  # the audit log the web UI shows (state.db), beside the file
        conn = db.connect(data_dir)
        try:
            audit.record(conn, actor, action, target, json.dumps(detail, sort_keys=True, default=str))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        LOG.error("cannot write the audit log: %s", exc)
