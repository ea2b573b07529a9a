"""Index writes of arriving instances: group commit within a dicom worker, one queue across workers.

Why (bench/INGEST.md has the measurements): with several associations, each C-STORE paid a
transaction of its own (BEGIN IMMEDIATE, 5 upserts, COMMIT: the same few B-tree pages written
to the WAL again for every object), and with several dicom worker processes the transactions of
different workers would meet in SQLite's busy handler, which sleeps 1, 2, 5, 10 ... ms before
trying again.

- Group commit (`fast_path_enabled("group_commit")`): an arrival joins the pending list; the
  first thread to find no commit running takes the whole list and writes it in one transaction
  (`index.add_instances`), the others wait for the commit that covers their record. Nothing is
  added to the latency of a lone association (its commit starts at once); records pile up only
  while a commit is running, and are then committed together. A record's C-STORE success is
  returned only after the COMMIT that holds it returned.
- One connection (`fast_path_enabled("writer_conn")`): every transaction of the writer runs on
  its own connection, not on the arriving association's. SQLite drops a connection's page cache
  whenever another connection committed since its last transaction, so with several associations
  taking turns each commit first read the B-tree pages it touches again (~20 reads per object).
- Writer lock (`fast_path_enabled("write_lock")`): the workers of a data folder take an flock on
  `run/index-write.lock` around that transaction, so they queue in the kernel (woken as soon as
  the holder is done) instead of sleeping in SQLite's busy handler. Other processes (burner,
  web) still meet SQLite's own lock, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

from appliance import db, index
from appliance.dicom import pnd_tuning
from appliance.storage import ThreadFd

WRITE_LOCK_FILE = "run/index-write.lock"
WAL_CHECKPOINT_PAGES = 8000  # the writer connection's wal_autocheckpoint (SQLite's default: 1000; 4 KB pages)
# Test hook: seconds each commit waits, files written and fsync'd, before its transaction, so a
# test can kill a worker between write and commit and check that nothing acknowledged is missing.
COMMIT_PAUSE_ENV = "BURNSTATION_TEST_COMMIT_PAUSE"


class WriterLock:
    """An flock shared by the dicom workers of one data folder (one descriptor per thread)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / WRITE_LOCK_FILE
        self._local = threading.local()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        held = getattr(self._local, "held", None)
        if held is None:  # closed when the thread ends (a thread per association: no descriptor left behind)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            held = ThreadFd(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            self._local.held = held
        fd = held.fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


class _Pending:
    __slots__ = ("rec", "done", "old", "error")

    def __init__(self, rec: index.InstanceRecord) -> None:
        self.rec = rec
        self.done = False
        self.old: str | None = None
        self.error: BaseException | None = None


class IndexWriter:
    """`add(conn, rec)`: index one arrival, return the replaced path; returns only once committed."""

    def __init__(self, data_dir: Path) -> None:
        self.lock = WriterLock(data_dir)
        self.group = pnd_tuning.fast_path_enabled("group_commit")
        self.cross_process = pnd_tuning.fast_path_enabled("write_lock")
        self.shared_conn = pnd_tuning.fast_path_enabled("writer_conn")
        self._conn: sqlite3.Connection | None = None  # the writer's own connection (shared_conn)
        self._data_dir = data_dir
        self._mutex = threading.Lock()  # one transaction of this process at a time
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._committing = False
        self.batches = 0  # commits made, and records they held (for tests and the bench)
        self.records = 0
        self.before_commit: Callable[[list[index.InstanceRecord]], None] | None = None  # test hook
        pause = float(os.environ.get(COMMIT_PAUSE_ENV) or 0)
        if pause > 0:
            self.before_commit = lambda _recs: time.sleep(pause)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return self.lock.held() if self.cross_process else contextlib.nullcontext()

    def _connection(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """The connection a transaction of this writer runs on (called with the commit turn held)."""
        if not self.shared_conn:
            return conn
        if self._conn is None:
            self._conn = db.connect(self._data_dir)
            # checkpoints 8x rarer than SQLite's default: each copies the pages written since the last
            # one back into state.db, and the same study, series and index pages are written by every
            # arrival, so fewer checkpoints copy them fewer times (measured: 8 % less CPU per commit)
            self._conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            weakref.finalize(self, self._conn.close)  # a writer dropped (tests make many) closes it
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def add(self, conn: sqlite3.Connection, rec: index.InstanceRecord) -> str | None:
        if not self.group:
            with self._mutex, self._locked():
                self.batches += 1
                self.records += 1
                return index.add_instance(self._connection(conn), rec)
        item = _Pending(rec)
        with self._cond:
            self._pending.append(item)
            while self._committing and not item.done:
                self._cond.wait()
            if not item.done:  # no commit running and ours is still pending: we commit the lot
                self._committing = True
                batch, self._pending = self._pending, []
        if not item.done:
            self._commit(conn, batch)
        if item.error is not None:
            raise item.error
        return item.old

    def _commit(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        results: list[str | None | Exception] | None = None
        error: BaseException | None = None
        try:
            with self._locked():
                if self.before_commit is not None:
                    self.before_commit([p.rec for p in batch])
                results = index.add_instances(self._connection(conn), [p.rec for p in batch])
        except BaseException as exc:  # the whole batch failed: nobody's record is committed
            error = exc
        with self._cond:
            self.batches += 1
            self.records += len(batch)
            for n, pending in enumerate(batch):
                if results is None:
                    pending.error = error
                elif isinstance(results[n], Exception):
                    pending.error = results[n]  # type: ignore[assignment]
                else:
                    pending.old = results[n]  # type: ignore[assignment]
                pending.done = True
            self._committing = False
            self._cond.notify_all()
