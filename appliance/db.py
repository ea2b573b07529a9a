"""state.db: the SQLite (WAL) database that several station processes share.

Every table has one owner module, the only code that writes it or names it in SQL (others call
its functions). `SCHEMA_OWNERS` lists those modules: `connect` applies each one's `SCHEMA`
(`CREATE ... IF NOT EXISTS`) and then its `MIGRATIONS` (changes to tables made by older versions,
each a no-op once done) on the first connection of a process to a database file, whatever the
process imported.
WAL with synchronous=NORMAL survives any process crash (kill -9) without losing a committed
transaction; after a power cut the index can be rebuilt from the files (`burnstation reindex`).
"""

from __future__ import annotations

import importlib
import os
import sqlite3
import threading
from pathlib import Path

DB_FILE = "state.db"

# The modules that own state.db's tables, in the order their schemas are applied. Each defines
# SCHEMA (str) and MIGRATIONS (a sequence of (name, function(conn))). They are imported on the
# first `connect` (not here: they import this module for `connect` and `transaction`).
SCHEMA_OWNERS = (
    "appliance.index",          # patients, studies, series, instances, associations, association_instances
    "appliance.burn.jobs",      # jobs, job_items, job_seq
    "appliance.burn.routing",   # burn_cursor, burn_assocs, burn_groups, burn_group_items, burn_claims
    "appliance.burn.robots",    # robot_status
    "appliance.worklist.items",  # worklist_items, worklist_meta
    "appliance.hl7.outbox",     # hl7_outbox
    "appliance.accounts",       # users, sessions
    "appliance.audit",          # audit
    "appliance.transfer.jobs",  # transfers, transfer_items, transfer_seq, transfer_requests, forward_items,
                                # forward_cursor
    "appliance.portal.tokens",  # tokens, token_uses
)

_applied: set[tuple[str, int, int]] = set()  # (path, device, inode) of files this process set up
_lock = threading.Lock()


def apply_schema(conn: sqlite3.Connection) -> None:
    """Create every table that is missing and migrate the ones an older version made."""
    owners = [importlib.import_module(name) for name in SCHEMA_OWNERS]
    for owner in owners:
        conn.executescript(owner.SCHEMA)
    for owner in owners:
        for _name, migrate in owner.MIGRATIONS:
            migrate(conn)


def db_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / DB_FILE


def connect(data_dir: str | os.PathLike[str], *, timeout: float = 30.0) -> sqlite3.Connection:
    """Open state.db in WAL mode with every owner's schema and migrations applied.

    The connection runs in autocommit mode (isolation_level=None): use `with transaction(conn):`
    or explicit BEGIN/COMMIT for multi-statement changes.
    """
    path = db_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    with _lock:
        st = os.stat(path)
        key = (str(path.resolve()), st.st_dev, st.st_ino)  # a state.db deleted and made again is set up again
        if key not in _applied:
            apply_schema(conn)
            _applied.add(key)
    return conn


class transaction:  # noqa: N801 - used as a context manager, reads like a keyword
    """`with transaction(conn):` → BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
