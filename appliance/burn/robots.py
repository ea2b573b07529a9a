"""Robot configuration (TinyDB table `robots` in settings.json) and the robots' live status in state.db.

A robot document says which driver talks to it, which role it serves (the `_E` titles feed the
"epson" role, `_P` the "primera" role; "any" serves both), which media it is loaded with and where
its spool folder is. The driver service heartbeats each robot's status into `robot_status`; the
burner assigns jobs only to robots whose heartbeat is fresh.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from typing import Any

from tinydb import Query

from appliance import db
from appliance.config import SettingError, Settings
from appliance.publish import MEDIA_ORDER, RobotStatus
from drivers.encoding import check_codepage

DRIVERS = ("epson", "primera", "folder")
ROLES = ("epson", "primera", "any")
MODES = ("image", "data")
SOURCES = ("manual", "udev", "simulated")
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# a heartbeat older than this means the driver is not running (the driver beats every ~2 s)
HEARTBEAT_FRESH_SECONDS = 15.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS robot_status (
    name         TEXT PRIMARY KEY,
    online       INTEGER NOT NULL DEFAULT 0,
    message      TEXT NOT NULL DEFAULT '',
    status       TEXT NOT NULL DEFAULT '{}',
    heartbeat_at REAL NOT NULL DEFAULT 0,
    pid          INTEGER NOT NULL DEFAULT 0
);
"""
db.register_schema("robots", SCHEMA)


def _media(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value or [])
    media = []
    for item in items:
        name = str(item).strip().upper()
        if not name:
            continue
        if name not in MEDIA_ORDER:
            raise SettingError(f"robot media: unknown {name!r}; choose from {', '.join(MEDIA_ORDER)}")
        media.append(name)
    if not media:
        raise SettingError(f"robot media: give at least one of {', '.join(MEDIA_ORDER)}")
    return [m for m in MEDIA_ORDER if m in media]


def _abs_path(key: str, value: Any, *, allow_empty: bool) -> str:
    text = str(value or "")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise SettingError(f"robot {key}: must not contain control characters (line breaks, tabs)")
    text = text.strip()
    if not text:
        if allow_empty:
            return ""
        raise SettingError(f"robot {key}: must not be empty")
    if key == "spool" and not os.path.isabs(text):
        raise SettingError(f"robot {key}: must be an absolute path, got {text!r}")
    return text


def default_media(driver: str) -> list[str]:
    return list(MEDIA_ORDER) if driver == "folder" else ["CD", "DVD"]


def validate_robot(doc: dict[str, Any]) -> dict[str, Any]:
    """A complete, checked robot document; SettingError says which field is wrong and why."""
    name = str(doc.get("name", "")).strip()
    if not NAME_RE.match(name):
        raise SettingError(f"robot name: 1 to 32 of A-Z a-z 0-9 _ -, got {name!r}")
    driver = str(doc.get("driver", "")).strip()
    if driver not in DRIVERS:
        raise SettingError(f"robot driver: one of {', '.join(DRIVERS)}, got {driver!r}")
    role = str(doc.get("role") or (driver if driver != "folder" else "any")).strip()
    if role not in ROLES:
        raise SettingError(f"robot role: one of {', '.join(ROLES)}, got {role!r}")
    mode = str(doc.get("mode") or "image").strip()
    if mode not in MODES:
        raise SettingError(f"robot mode: one of {', '.join(MODES)}, got {mode!r}")
    source = str(doc.get("source") or "manual").strip()
    if source not in SOURCES:
        raise SettingError(f"robot source: one of {', '.join(SOURCES)}, got {source!r}")
    verify = doc.get("verify", True)
    if not isinstance(verify, bool):
        raise SettingError(f"robot verify: true or false, got {verify!r}")
    out = {
        "name": name,
        "driver": driver,
        "role": role,
        "media": _media(doc.get("media") or default_media(driver)),
        "spool": _abs_path("spool", doc.get("spool"), allow_empty=False),
        "engine_path": _abs_path("engine_path", doc.get("engine_path"), allow_empty=True),
        "mode": mode,
        "verify": verify,
        "source": source,
    }
    # folder export only, for tests: seconds to wait after each copied file (a slow "robot")
    delay = doc.get("copy_delay", 0)
    try:
        delay = float(delay or 0)
    except (TypeError, ValueError):
        raise SettingError(f"robot copy_delay: a number of seconds, got {delay!r}") from None
    if not 0 <= delay <= 60:
        raise SettingError(f"robot copy_delay: from 0 to 60 seconds, got {delay}")
    if delay:
        out["copy_delay"] = delay
    out.update(_driver_options(doc))
    return out


# optional settings of the vendor drivers (see drivers/epson/publisher.py, drivers/primera/publisher.py)
DRIVER_TEXT_OPTIONS = ("publisher", "robot_name", "label_template", "format", "client_id", "data_image_type",
                       "encoding")


def _driver_options(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in DRIVER_TEXT_OPTIONS:
        text = str(doc.get(key) or "").strip()
        if not text:
            continue
        if len(text) > 255 or "=" in text or any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise SettingError(f"robot {key}: at most 255 characters, no control characters and no '=' "
                               f"(it is written into the robot's job files), got {text!r}")
        if key == "encoding":  # the job files' code page (drivers/encoding.py)
            try:
                text = check_codepage(text)
            except ValueError as exc:
                raise SettingError(f"robot {exc}") from None
        out[key] = text
    if doc.get("status_timeout") not in (None, ""):
        try:
            timeout = float(doc["status_timeout"])
        except (TypeError, ValueError):
            raise SettingError(f"robot status_timeout: seconds, got {doc['status_timeout']!r}") from None
        if not 0 <= timeout <= 3600:
            raise SettingError(f"robot status_timeout: 0 (never offline) to 3600 seconds, got {timeout}")
        out["status_timeout"] = timeout
    if doc.get("merge_fields"):
        fields = doc["merge_fields"]
        fields = fields.split(",") if isinstance(fields, str) else list(fields)
        fields = [str(f).strip() for f in fields if str(f).strip()]
        if not all(re.fullmatch(r"[A-Za-z0-9_]{1,64}", f) for f in fields):
            raise SettingError(f"robot merge_fields: label field names (A-Z a-z 0-9 _), got {fields!r}")
        out["merge_fields"] = fields
    return out


def list_robots(settings: Settings) -> list[dict[str, Any]]:
    """Every configured robot, sorted by name."""
    return sorted(settings.table_all("robots"), key=lambda d: str(d.get("name", "")))


def get_robot(settings: Settings, name: str) -> dict[str, Any] | None:
    for doc in list_robots(settings):
        if doc.get("name") == name:
            return doc
    return None


def add_robot(settings: Settings, doc: dict[str, Any]) -> dict[str, Any]:
    """Add or replace a robot (by name); returns the stored document."""
    checked = validate_robot(doc)
    with settings.table("robots") as table:
        table.remove(Query().name == checked["name"])
        table.insert(checked)
    return checked


def delete_robot(settings: Settings, name: str) -> bool:
    with settings.table("robots") as table:
        return bool(table.remove(Query().name == name))


def robots_for_role(settings: Settings, role: str) -> list[dict[str, Any]]:
    """Robots that take jobs of `role` ("epson", "primera" or "any")."""
    return [r for r in list_robots(settings) if role == "any" or r.get("role") in (role, "any")]


def allowed_media(settings: Settings, role: str) -> list[str]:
    """Union of the media of the robots that serve `role`; every media when none is configured."""
    media: set[str] = set()
    for robot in robots_for_role(settings, role):
        media.update(robot.get("media") or [])
    return [m for m in MEDIA_ORDER if m in media] or list(MEDIA_ORDER)


# --------------------------------------------------------------------------- live status


def record_status(conn: sqlite3.Connection, name: str, status: RobotStatus | None, *,
                  message: str = "") -> None:
    """Heartbeat: store what the robot said (or that it could not be asked)."""
    if status is None:
        online, text, body = 0, message, {}
    else:
        online, text = int(bool(status.online)), status.message or message
        body = {"kind": status.kind, "media": list(status.media), "stackers": status.stackers,
                "ink": status.ink, "drives": status.drives, "faults": list(status.faults)}
    conn.execute(
        "INSERT INTO robot_status (name, online, message, status, heartbeat_at, pid) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(name) DO UPDATE SET online=excluded.online, message=excluded.message, "
        "status=excluded.status, heartbeat_at=excluded.heartbeat_at, pid=excluded.pid",
        (name, online, text[:1000], json.dumps(body, default=str), time.time(), os.getpid()),
    )


def mark_stopped(conn: sqlite3.Connection, name: str, message: str) -> None:
    conn.execute("UPDATE robot_status SET online=0, message=?, heartbeat_at=? WHERE name=?",
                 (message[:1000], time.time(), name))


def status_rows(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """name → {online, fresh, message, status, heartbeat_at, pid}."""
    now = time.time()
    out = {}
    for row in conn.execute("SELECT * FROM robot_status"):
        item = dict(row)
        item["status"] = json.loads(item["status"] or "{}")
        item["fresh"] = now - item["heartbeat_at"] <= HEARTBEAT_FRESH_SECONDS
        out[item["name"]] = item
    return out


def is_online(row: dict[str, Any] | None) -> bool:
    return bool(row and row["online"] and row["fresh"])
