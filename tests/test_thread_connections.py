"""Per-thread state.db connections (db.PerThread) are closed when their thread ends.

Found by the soak: the hl7 and dicom processes' open files climbed under load (hl7 21 → 40 in
20 s). Each MLLP connection, association and web request runs in a thread of its own with a
connection of its own, and a dropped sqlite3 connection sits in a reference cycle, so state.db
and its WAL stayed open until the garbage collector happened to run. The tests turn the
collector off so that only an explicit close can bring the count back.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance import db
from appliance.config import Settings
from appliance.dicom.context import StationContext
from appliance.worklist.orders import OrderReceiver
from webui.app import WebApp


def open_on_state_db(data: Path) -> int:
    """This process's descriptors on state.db and its WAL."""
    names = {str(db.db_path(data)), str(db.db_path(data)) + "-wal"}
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += os.readlink(fd) in names
        except OSError:
            continue
    return count


@pytest.fixture
def no_gc() -> Iterator[None]:
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


OWNERS: dict[str, Callable[[Path], Callable[[], object]]] = {
    "db.PerThread": lambda data: db.PerThread(data).get,
    "hl7 OrderReceiver": lambda data: OrderReceiver(data).conn,
    "dicom StationContext": lambda data: StationContext(data, Settings(data)).conn,
    "web WebApp": lambda data: WebApp(data).conn,
}


THREADS = 10


@pytest.mark.parametrize("owner", sorted(OWNERS))
def test_a_threads_connection_is_closed_when_the_thread_ends(tmp_path: Path, no_gc: None, owner: str):
    """Three rounds of 10 threads: before the fix each thread left its connection's two descriptors
    open (+20 a round, +60 in all). SQLite itself may keep some descriptors of closed connections
    for reuse (a POSIX lock still held by another connection of the process on the same file), at
    most about as many as were open at once: fewer than half of that."""
    data = tmp_path / "data"
    keep = db.connect(data)  # the schema made, and state.db-wal kept in place
    get = OWNERS[owner](data)
    before = open_on_state_db(data)
    seen: list[bool] = []

    def use() -> None:
        conn = get()
        seen.append(conn is get() and conn.execute("SELECT 1").fetchone()[0] == 1)

    after: list[int] = []
    for _ in range(3):
        threads = [threading.Thread(target=use) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after.append(open_on_state_db(data))
    assert seen == [True] * 3 * THREADS  # one connection per thread, reused within it
    assert after[-1] < before + 3 * THREADS, (before, after)
    # the calling thread's own connection stays open for it, and works
    assert get().execute("SELECT 1").fetchone()[0] == 1
    keep.close()
