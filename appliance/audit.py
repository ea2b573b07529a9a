"""The audit log in state.db (owner of `audit`): who changed which setting, burned, cancelled, deleted,
logged in or failed to. Web users appear by name, command-line changes as `cli:<unix user>`.
"""

from __future__ import annotations

import getpass
import json
import sqlite3
import time
from typing import Any

from appliance import db

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      REAL NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL DEFAULT '',
    detail  TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
"""
db.register_schema("audit", SCHEMA)


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli:?"


def record(conn: sqlite3.Connection, actor: str, action: str, target: str = "", detail: str = "",
           address: str = "") -> None:
    conn.execute("INSERT INTO audit (at, actor, action, target, detail, address) VALUES (?, ?, ?, ?, ?, ?)",
                 (time.time(), actor[:64], action[:64], str(target)[:500], str(detail)[:2000], address[:64]))


def record_settings(conn: sqlite3.Connection, actor: str, old: dict[str, Any], new: dict[str, Any],
                    address: str = "") -> None:
    """One row per changed key: `old -> new` (JSON values, so "" and false stay visible)."""
    for key, value in new.items():
        if old.get(key) != value:
            record(conn, actor, "setting", key, f"{json.dumps(old.get(key))} -> {json.dumps(value)}", address)


def page(conn: sqlite3.Connection, *, search: str = "", offset: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
    """Newest first; `search` matches actor, action, target or detail."""
    where, args = "", []
    if search:
        where = "WHERE actor LIKE ? OR action LIKE ? OR target LIKE ? OR detail LIKE ?"
        args = [f"%{search}%"] * 4
    total = conn.execute(f"SELECT COUNT(*) FROM audit {where}", args).fetchone()[0]
    rows = conn.execute(f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ? OFFSET ?",
                        (*args, limit, offset)).fetchall()
    return [dict(r) for r in rows], total
