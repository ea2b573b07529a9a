"""state.db: the SQLite (WAL) database that several station processes share.

Every table has one owner module, the only code that writes it or names it in SQL (others call
its functions). `SCHEMA_OWNERS` lists those modules: `connect` applies each one's `SCHEMA`
(`CREATE ... IF NOT EXISTS`) and then its `MIGRATIONS` (changes to tables made by older versions,
each a no-op once done) on the first connection of a process to a database file, whatever the
process imported.
WAL with synchronous=NORMAL survives any process crash (kill -9) without losing a committed
transaction; after a power cut the index can be rebuilt from the files (`burnstation reindex`).
A damaged file is another matter: `backup` keeps online copies (SQLite's backup API; on the
schedule of `appliance.dbguard` and here, before a schema change), and a query that finds the
file damaged leaves a note (`DAMAGE_NOTE`) so the station stops and restores (`appliance.dbguard`).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sqlite3
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Callable
from pathlib import Path

from appliance import atomicfile
from appliance.atomicfile import write_text

DB_FILE = "state.db"
BACKUP_DIR = "db-backup"                  # in the data folder: state-<UTC time>.db, newest kept
BACKUP_KEEP = 3
DAMAGE_NOTE = Path("run") / "statedb-damaged"  # written by a process whose query found the file damaged
DAMAGE_WORDS = ("malformed", "not a database", "disk image")
LOG = logging.getLogger("burnstation.db")

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


def schema_signature(owners: list | None = None) -> int:
    """A number that changes with any owner's SCHEMA or list of migrations (kept in PRAGMA user_version)."""
    owners = owners or [importlib.import_module(name) for name in SCHEMA_OWNERS]
    text = "\n".join(o.SCHEMA + "|" + ",".join(name for name, _ in o.MIGRATIONS) for o in owners)
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


def db_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / DB_FILE


def backup_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / BACKUP_DIR


def backups(data_dir: str | os.PathLike[str]) -> list[Path]:
    """The backups of state.db, newest first."""
    folder = backup_dir(data_dir)
    return sorted(folder.glob("state-*.db"), reverse=True) if folder.is_dir() else []


def backup(conn: sqlite3.Connection, data_dir: str | os.PathLike[str], reason: str = "scheduled") -> Path:
    """Copy the live database with SQLite's online backup API into db-backup/, atomically (a temp
    file checked with quick_check, then renamed); keeps the newest BACKUP_KEEP. Returns the copy."""
    folder = backup_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.6f}"[1:].replace(".", "")
    final = folder / f"state-{stamp}Z.db"
    tmp = folder / f".state-{uuid.uuid4().hex}.tmp"
    try:
        copy = sqlite3.connect(str(tmp))
        try:
            conn.backup(copy)
            verdict = copy.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"the backup copy fails its check: {verdict}")
        finally:
            copy.close()
        atomicfile.install(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    for old in backups(data_dir)[BACKUP_KEEP:]:
        with contextlib.suppress(OSError):
            old.unlink()
    LOG.info("state.db backed up to %s (%s)", final, reason)
    return final


def is_damage(exc: BaseException) -> bool:
    """Whether an sqlite3 error says the database file itself is damaged (not locked, not a bad query)."""
    return isinstance(exc, sqlite3.DatabaseError) and any(w in str(exc).lower() for w in DAMAGE_WORDS)


def note_damage(data_dir: str | os.PathLike[str], exc: BaseException) -> None:
    """Leave the note that makes the station stop and restore state.db (appliance.dbguard)."""
    path = Path(data_dir) / DAMAGE_NOTE
    if path.exists():
        return
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, f"{time.time():.0f} pid {os.getpid()}: {exc}\n")
        LOG.error("state.db is damaged (%s): the station will stop its processes and restore it", exc)


class Connection(sqlite3.Connection):
    """A connection that notices a damaged database file (see `note_damage`)."""

    data_dir: str = ""

    def execute(self, *args, **kwargs):  # type: ignore[no-untyped-def]  # noqa: ANN002, ANN003, ANN201
        try:
            return super().execute(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                note_damage(self.data_dir, exc)
            raise

    def executemany(self, *args, **kwargs):  # type: ignore[no-untyped-def]  # noqa: ANN002, ANN003, ANN201
        try:
            return super().executemany(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                note_damage(self.data_dir, exc)
            raise

    def executescript(self, *args, **kwargs):  # type: ignore[no-untyped-def]  # noqa: ANN002, ANN003, ANN201
        try:
            return super().executescript(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                note_damage(self.data_dir, exc)
            raise


def connect(data_dir: str | os.PathLike[str], *, timeout: float = 30.0) -> sqlite3.Connection:
    """Open state.db in WAL mode with every owner's schema and migrations applied.

    The connection runs in autocommit mode (isolation_level=None): use `with transaction(conn):`
    or explicit BEGIN/COMMIT for multi-statement changes.
    """
    path = db_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False,
                           factory=Connection)
    conn.data_dir = str(data_dir)
    conn.row_factory = sqlite3.Row
    # WAL is a property of the file, kept once set: setting it again on every connect needs a lock
    # that SQLite does not wait for, so a connect that met another connection's opening failed at
    # once with "database is locked" (a dicom worker's index writer opening beside a reader)
    deadline = time.monotonic() + timeout
    while str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        try:  # a new file: two connections setting it at once, one is refused without waiting
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    with _lock:
        st = os.stat(path)
        key = (str(path.resolve()), st.st_dev, st.st_ino)  # a state.db deleted and made again is set up again
        signature = schema_signature()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        # the version is read every time too: a file system may give a new state.db the inode number
        # of the one just deleted (seen on ext4: `reindex` after removing state.db, in one process)
        if key not in _applied or version != signature:
            if version != signature:
                if conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is not None:
                    backup(conn, data_dir, "before a schema change")
                apply_schema(conn)
                conn.execute(f"PRAGMA user_version={signature}")
            else:
                apply_schema(conn)
            _applied.add(key)
    return conn


class PerThread:
    """One state.db connection per thread (the servers run a thread per association, MLLP connection
    or request), closed when its thread ends. A sqlite3 connection sits in a reference cycle (its
    statement cache) and only the garbage collector frees one that is merely dropped: until then it
    keeps state.db and its WAL open (the soak saw the hl7 and dicom processes' open files climb)."""

    def __init__(self, data_dir: str | os.PathLike[str], setup: Callable[[sqlite3.Connection], None] | None = None
                 ) -> None:
        self.data_dir = data_dir
        self.setup = setup
        self._local = threading.local()

    def get(self) -> sqlite3.Connection:
        held = getattr(self._local, "held", None)
        if held is None:
            conn = connect(self.data_dir)
            if self.setup is not None:
                self.setup(conn)
            held = self._local.held = _Held(conn)
        return held.conn


class _Held:
    """Closes its connection when it goes (its thread's locals went: the thread ended)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        weakref.finalize(self, conn.close)


class transaction:  # noqa: N801 - used as a context manager, reads like a keyword
    """`with transaction(conn):` → BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                # a COMMIT that failed may leave its transaction open (SQLITE_BUSY, and maybe FULL or
                # IOERR): a long-lived connection would stay in it, holding the write lock
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        elif self.conn.in_transaction:  # SQLite may have rolled back already (FULL, IOERR): keep that error
            self.conn.execute("ROLLBACK")
