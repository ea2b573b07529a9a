"""Keeping state.db safe: scheduled online backups, and recovery from a damaged file.

`recover_if_damaged` runs in `burnstation run` before the supervisor starts any process (nothing
else has the file open then): `PRAGMA quick_check` on state.db (and a damage note a process left,
`db.DAMAGE_NOTE`). A damaged file is moved aside as db-backup/state.db.broken-<time> (with its
-wal/-shm), the newest backup is copied in, and the index is made to match the stored files
(`index.sync_with_files`: files stored since the backup are indexed, files deleted since are
forgotten), so no stored instance is lost. What the backup cannot bring back (rows newer than it:
jobs, burn groups, tokens, transfers, users, ...) is counted from the damaged file where it can
still be read, and named. The report goes to the log, to db-backup/last-recovery.json (which
`burnstation status` and the front panel show) and is returned.

`Keeper` runs in the supervisor's process while the station runs: a backup every
`db.backup_hours` (and one at start when there is none), and, when a process notes damage,
it stops the station's processes so `recover_if_damaged` can run before they start again.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from appliance import atomicfile, db, index
from appliance.atomicfile import fsync_dir, write_text
from appliance.config import Settings

LOG = logging.getLogger("burnstation.dbguard")
REPORT_FILE = "last-recovery.json"
REPORT_SHOWN_SECONDS = 7 * 24 * 3600  # the panel shows a recovery for a week
# tables whose rows a restore cannot bring back, as the report names them (the others by table name)
KINDS = {"jobs": "burn jobs", "burn_groups": "burn groups", "tokens": "download tokens",
         "transfers": "transfers", "users": "web users", "associations": "logged associations",
         "worklist_items": "worklist items", "hl7_outbox": "HL7 messages to send", "audit": "audit entries"}
# rebuilt from the stored files: never "lost"
REBUILT = {"patients", "studies", "series", "instances"}
# bookkeeping that follows other tables: not worth naming
QUIET = {"sessions", "job_seq", "transfer_seq", "sqlite_sequence", "worklist_meta", "forward_cursor",
         "burn_cursor", "token_uses", "association_instances", "job_items", "burn_group_items", "burn_claims",
         "burn_assocs", "transfer_items", "robot_status"}


def damaged(data_dir: str | os.PathLike[str]) -> str | None:
    """Why state.db is damaged (quick_check's verdict, or the error opening it); None when sound or absent."""
    path = db.db_path(data_dir)
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(str(path), timeout=30)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if not db.is_damage(exc) and "locked" in str(exc):
            raise
        return str(exc)
    return None if rows == ["ok"] else "; ".join(rows[:3])


def _backup_time(path: Path | None) -> float | None:
    if path is None:
        return None
    stamp = path.stem.removeprefix("state-").rstrip("Z")
    try:
        return float(calendar.timegm(time.strptime(stamp[:15], "%Y%m%dT%H%M%S")))
    except ValueError:
        return path.stat().st_mtime


def _max_rowids(path: Path) -> dict[str, int]:
    """table → its largest rowid, in a sound copy (the backup)."""
    out: dict[str, int] = {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
            with contextlib.suppress(sqlite3.Error):
                out[name] = conn.execute(f'SELECT coalesce(max(rowid), 0) FROM "{name}"').fetchone()[0]
    finally:
        conn.close()
    return out


def not_recovered(broken: Path, backup: Path | None) -> dict[str, Any]:
    """What the damaged file holds that the backup does not: {kind: count newer than the backup,
    or "unreadable"}, and "-" when the damaged file cannot be read at all."""
    known = _max_rowids(backup) if backup is not None else {}
    lost: dict[str, Any] = {}
    try:
        conn = sqlite3.connect(f"file:{broken}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return {"-": f"the damaged file cannot be read ({exc})"}
    try:
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()]
        except sqlite3.Error as exc:
            return {"-": f"the damaged file's table list cannot be read ({exc})"}
        for name in tables:
            if name in REBUILT or name in QUIET or name.startswith("sqlite_"):
                continue
            kind = KINDS.get(name, name)
            try:
                n = conn.execute(f'SELECT count(*) FROM "{name}" WHERE rowid > ?', (known.get(name, 0),)).fetchone()[0]
            except sqlite3.Error:
                lost[kind] = "unreadable"
                continue
            if n:
                lost[kind] = n
    finally:
        conn.close()
    return lost


def carry_ids(broken: Path, conn: sqlite3.Connection) -> list[str]:
    """Keep the restored database from handing out again an id the damaged file had used (a lost
    job's disc folder and robot files, a lost token's link): job and transfer numbers of the day
    and SQLite's AUTOINCREMENT counters are raised to the damaged file's. Returns what could not be
    read (those ids may be handed out again)."""
    from appliance.burn import jobs
    from appliance.transfer import jobs as transfer_jobs

    missed = []
    try:
        old = sqlite3.connect(f"file:{broken}?mode=ro", uri=True)
    except sqlite3.Error:
        return ["every id counter"]
    try:
        for name, owner in (("job numbers", jobs), ("transfer numbers", transfer_jobs)):
            try:
                owner.keep_ids_above(conn, owner.id_sequence(old))
            except sqlite3.Error:
                missed.append(name)
        try:
            counters = old.execute("SELECT name, seq FROM sqlite_sequence").fetchall()
        except sqlite3.Error:
            missed.append("row counters")
            counters = []
        for name, seq in counters:
            if conn.execute("UPDATE sqlite_sequence SET seq=max(seq, ?) WHERE name=?", (seq, name)).rowcount == 0:
                conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (name, seq))
    finally:
        old.close()
    return missed


def _move_aside(data_dir: Path, stamp: str) -> Path:
    """state.db (and its -wal/-shm, which belong to it) to db-backup/state.db.broken-<stamp>."""
    folder = db.backup_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    aside = folder / f"state.db.broken-{stamp}"
    live = db.db_path(data_dir)
    for suffix in ("-wal", "-shm", ""):
        src = live.with_name(live.name + suffix)
        if src.exists():
            os.replace(src, aside.with_name(aside.name + suffix))
    fsync_dir(folder)
    fsync_dir(data_dir)
    return aside


def _restore(data_dir: Path, backup: Path) -> None:
    """Copy the backup to state.db atomically (temp file, fsync, rename)."""
    live = db.db_path(data_dir)
    tmp = live.with_name(f".{live.name}.restore.tmp")
    shutil.copyfile(backup, tmp)
    atomicfile.install(tmp, live)


def describe(report: dict[str, Any]) -> list[str]:
    """The report in sentences (log, `burnstation status`)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report["at"]))
    lines = [f"state.db was damaged ({report['problem']}); on {when} it was moved aside to {report['broken']}"]
    if report["backup"]:
        taken = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report["backup_at"]))
        lines.append(f"restored from the backup of {taken} ({report['backup']})")
    else:
        lines.append("no backup existed: started from an empty database")
    lines.append(f"index: {report['indexed']} stored files indexed that the backup did not list, "
                 f"{report['forgotten']} entries of files deleted since forgotten"
                 + (f", {report['unreadable']} unreadable files left alone" if report["unreadable"] else "")
                 + "; no stored instance is lost")
    lost = report["not_recovered"]
    if "-" in lost:
        lines.append(f"not recovered: everything written after the backup ({lost['-']})")
    elif lost:
        lines.append("not recovered (newer than the backup): "
                     + ", ".join(f"{kind} {n}" for kind, n in sorted(lost.items())))
    else:
        lines.append("nothing newer than the backup was found in the damaged file")
    lines.append("changes the backup does not hold (e.g. job states) are as they were at the backup")
    if report.get("ids_not_carried"):
        lines.append("unreadable in the damaged file, so ids may be handed out again: "
                     + ", ".join(report["ids_not_carried"]))
    return lines


def recover_if_damaged(data_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Check state.db; when damaged, restore it (see the module docstring). Returns the report, or
    None when the file was sound. Call it only while no station process has state.db open."""
    data_dir = Path(data_dir)
    note = data_dir / db.DAMAGE_NOTE
    noted = note.read_text(errors="replace").strip() if note.exists() else ""
    problem = damaged(data_dir)
    if problem is None:
        if noted:
            LOG.warning("a process reported state.db damaged (%s) but it passes its check now", noted)
            note.unlink(missing_ok=True)
        return None
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    LOG.error("state.db is damaged: %s; restoring it from the newest backup", problem)
    aside = _move_aside(data_dir, stamp)
    found = db.backups(data_dir)
    source = found[0] if found else None
    if source is not None:
        _restore(data_dir, source)
    conn = db.connect(data_dir)
    try:
        missed_ids = carry_ids(aside, conn)
        added, forgotten, bad = index.sync_with_files(conn, data_dir / "storage")
    finally:
        conn.close()
    report = {"at": now, "problem": problem, "noted": noted, "broken": str(aside),
              "backup": str(source) if source else None, "backup_at": _backup_time(source),
              "indexed": added, "forgotten": forgotten, "unreadable": bad,
              "not_recovered": not_recovered(aside, source), "ids_not_carried": missed_ids}
    write_text(db.backup_dir(data_dir) / REPORT_FILE, json.dumps(report, indent=1, sort_keys=True))
    for line in describe(report):
        LOG.warning("%s", line)
    note.unlink(missing_ok=True)
    return report


def last_recovery(data_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = db.backup_dir(data_dir) / REPORT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def status(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """For `burnstation status`: the newest backup, a pending damage note, the last recovery."""
    found = db.backups(data_dir)
    note = Path(data_dir) / db.DAMAGE_NOTE
    report = last_recovery(data_dir)
    return {"latest_backup": str(found[0]) if found else None, "latest_backup_at": _backup_time(found[0]) if found
            else None, "backups": len(found),
            "damage_noted": note.read_text(errors="replace").strip() if note.exists() else None,
            "last_recovery": report, "last_recovery_text": describe(report) if report else []}


def backup_now(data_dir: str | os.PathLike[str], reason: str = "on request") -> Path:
    conn = db.connect(data_dir)
    try:
        return db.backup(conn, data_dir, reason)
    finally:
        conn.close()


class Keeper(threading.Thread):
    """In `burnstation run`: backups every `db.backup_hours`; `on_damage` when a process notes damage."""

    def __init__(self, data_dir: Path, on_damage: Any, poll: float = 2.0) -> None:
        super().__init__(name="dbguard", daemon=True)
        self.data_dir = Path(data_dir)
        self.settings = Settings(self.data_dir)
        self.on_damage = on_damage
        self.poll = poll
        self.stop = threading.Event()

    def due(self) -> bool:
        found = db.backups(self.data_dir)
        if not found:
            return True
        taken = _backup_time(found[0]) or 0
        return time.time() - taken >= int(self.settings.get("db.backup_hours")) * 3600

    def run(self) -> None:
        while not self.stop.is_set():
            if (self.data_dir / db.DAMAGE_NOTE).exists():
                LOG.error("state.db damage noted by a process: stopping the station's processes to restore it")
                self.on_damage()
                return
            try:
                if self.due():
                    backup_now(self.data_dir, "scheduled")
            except (sqlite3.Error, OSError) as exc:
                LOG.error("state.db backup failed: %s", exc)
                if db.is_damage(exc):
                    db.note_damage(self.data_dir, exc)
                    continue
                self.stop.wait(60)  # e.g. the disk is full: try again later, not every poll
            self.stop.wait(self.poll)
