"""state.db: the SQLite (WAL) database that several station processes share.

Each subsystem owns its tables and creates them with `CREATE TABLE IF NOT EXISTS` through
`register_schema`; `connect` applies every registered schema once per process and database file.
WAL with synchronous=NORMAL survives any process crash (kill -9) without losing a committed
transaction; after a power cut the index can be rebuilt from the files (`burnstation reindex`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

DB_FILE = "state.db"

_SCHEMAS: list[tuple[str, str]] = []
_MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = []
_applied: set[tuple[str, str]] = set()
_lock = threading.Lock()


def register_schema(name: str, sql: str) -> None:
    """Declare a subsystem's tables; applied by every later `connect`."""
    if not any(existing == name for existing, _ in _SCHEMAS):
        _SCHEMAS.append((name, sql))


def register_migration(name: str, migrate: Callable[[sqlite3.Connection], None]) -> None:
    """Declare a change to existing tables (run once per process and file, after every schema)."""
    if not any(existing == name for existing, _ in _MIGRATIONS):
        _MIGRATIONS.append((name, migrate))


def db_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / DB_FILE


def connect(data_dir: str | os.PathLike[str], *, timeout: float = 30.0) -> sqlite3.Connection:
    """Open state.db in WAL mode with every registered schema applied.

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
        for name, sql in _SCHEMAS:
            key = (str(path.resolve()), name)
            if key not in _applied:
                conn.executescript(sql)
                _applied.add(key)
        for name, migrate in _MIGRATIONS:
            key = (str(path.resolve()), "migrate:" + name)
            if key not in _applied:
                migrate(conn)
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
