"""Adversarial cases of the C-STORE index/fsync path (review of the ingest speed work): each one a
way a Success could be sent for what is not safely stored, or something already stored be lost."""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import threading
import types
from pathlib import Path
from typing import Any

import pytest
from store_handler_support import EXPLICIT, explicit_bytes, handler_context, store_event
from support import make_dataset, wait_for

from appliance import db, index
from appliance.config import Settings
from appliance.dicom import ingest
from appliance.dicom.context import StationContext
from appliance.dicom.handlers import store
from appliance.storage import file_meta_bytes


def _record(n: int, tmp_path: Path) -> index.InstanceRecord:
    return index.InstanceRecord(
        sop_uid=f"1.2.3.1.{n}", sop_class="1.2.840.10008.5.1.4.1.1.2", series_uid="1.2.3.1", study_uid="1.2.3",
        path=str(tmp_path / f"{n}.dcm"), size=10, transfer_syntax=EXPLICIT,
        patient={"patient_id": "P1", "patient_name": "DOE^JOHN"}, study={}, series={"modality": "CT"},
        instance_number=str(n))


@pytest.mark.parametrize("group", [True, False])
def test_a_commit_that_fails_leaves_no_transaction_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        group: bool) -> None:
    """A COMMIT can fail and leave its transaction open (SQLite: SQLITE_BUSY always, SQLITE_FULL and
    SQLITE_IOERR 'may or may not' roll back). The writer's own connection lives as long as the
    worker: left in that transaction it would refuse every later arrival ('cannot start a transaction
    within a transaction') and hold state.db's write lock against every other process."""
    monkeypatch.setenv("BURNSTATION_FASTPATH", "1" if group else "writer_conn,write_lock")
    writer = ingest.IndexWriter(tmp_path)
    assert writer.shared_conn and writer.group is group
    failures = [sqlite3.OperationalError("database is locked")]
    real_execute = db.Connection.execute

    def execute(self: db.Connection, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT" and failures:  # the COMMIT refused, its transaction still open
            raise failures.pop()
        return real_execute(self, sql, *args)

    monkeypatch.setattr(db.Connection, "execute", execute)
    with contextlib.closing(db.connect(tmp_path)) as conn:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            writer.add(conn, _record(1, tmp_path))
        assert not failures
        assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0  # answered failure: not there
        assert writer.add(conn, _record(2, tmp_path)) is None  # the next arrival is indexed
        other = db.connect(tmp_path, timeout=1.0)  # another process can write state.db
        with contextlib.closing(other), db.transaction(other):
            other.execute("UPDATE studies SET updated_at=0")
        assert [r[0] for r in conn.execute("SELECT sop_uid FROM instances")] == ["1.2.3.1.2"]
    writer.close()


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StationContext:
    return handler_context(tmp_path, monkeypatch)


def _stored_then_two_copies(ctx: StationContext, sop: str) -> tuple[store.StoreHandler, Any, Any]:
    """A handler that has stored `sop` in series 1.2.3.1, and two copies of it to send again: one
    moved to series 1.2.3.2 (another path), one back in 1.2.3.1 (the first copy's path)."""
    handler = store.StoreHandler(ctx)
    assert handler(store_event(ctx, make_dataset(sop_uid=sop, study_uid="1.2.3", series_uid="1.2.3.1"))) == store.SUCCESS
    return (handler, make_dataset(sop_uid=sop, study_uid="1.2.3", series_uid="1.2.3.2"),
            make_dataset(sop_uid=sop, study_uid="1.2.3", series_uid="1.2.3.1"))


def test_two_copies_of_one_instance_arriving_together_leave_the_indexed_file(ctx: StationContext) -> None:
    """The same SOP Instance UID sent again on two associations at once, one copy in another series
    (another path), one back in its first series: each handler removed the path its commit had
    replaced, and the second removal deleted the file the first arrival had just written there and
    the index names, with both senders told Success."""
    sop = "1.2.826.0.1.3680043.10.1457.99.1"
    handler, moved, back = _stored_then_two_copies(ctx, sop)
    gate = threading.Event()
    commits: list[int] = []

    def hold_first(recs: list[index.InstanceRecord]) -> None:
        commits.append(len(recs))
        if len(commits) == 1:
            assert gate.wait(30)

    ctx.writer.before_commit = hold_first
    statuses: dict[str, Any] = {}

    def send(name: str, ds: Any) -> threading.Thread:
        thread = threading.Thread(target=lambda: statuses.__setitem__(name, handler(store_event(ctx, ds))))
        thread.start()
        return thread

    threads = [send("blocker", make_dataset(study_uid="1.2.4"))]  # its commit runs (held) while the others arrive
    wait_for(lambda: commits == [1], timeout=30, every=0.01)
    threads.append(send("moved", moved))
    wait_for(lambda: len(ctx.writer._pending) == 1, timeout=30, every=0.01)
    threads.append(send("back", back))
    wait_for(lambda: len(ctx.writer._pending) == 2, timeout=30, every=0.01)  # both written, one commit to come
    gate.set()
    for thread in threads:
        thread.join(30)
    assert statuses == {"blocker": store.SUCCESS, "moved": store.SUCCESS, "back": store.SUCCESS}
    assert commits == [1, 2]
    row = ctx.conn().execute("SELECT path, series_uid FROM instances WHERE sop_uid=?", (sop,)).fetchone()
    assert row["series_uid"] == "1.2.3.1"  # the last committed copy wins the index...
    assert Path(row["path"]).is_file()  # ...and its file is there
    assert not ctx.store.path_for("1.2.3", "1.2.3.2", sop).exists()  # the copy it replaced is gone


def test_a_replaced_copy_is_kept_while_a_new_copy_at_its_path_waits_for_its_commit(ctx: StationContext) -> None:
    """As above, the two copies in consecutive commits: the copy back in its first series is written
    (renamed into place) before the moved copy's commit and committed after it. The moved copy's
    handler must not remove that path meanwhile (the index does not name it yet, but will)."""
    sop = "1.2.826.0.1.3680043.10.1457.99.2"
    handler, moved, back = _stored_then_two_copies(ctx, sop)
    statuses: dict[str, Any] = {}
    threads: dict[str, threading.Thread] = {}

    def send(name: str, ds: Any) -> None:
        threads[name] = threading.Thread(target=lambda: statuses.__setitem__(name, handler(store_event(ctx, ds))))
        threads[name].start()

    gate = threading.Event()
    commits: list[int] = []

    def pace(recs: list[index.InstanceRecord]) -> None:
        commits.append(len(recs))
        if len(commits) == 1:  # the blocker: the moved copy arrives meanwhile
            assert gate.wait(30)
        elif len(commits) == 2:  # the moved copy's commit: the copy sent back is written first
            send("back", back)
            wait_for(lambda: len(ctx.writer._pending) == 1, timeout=30, every=0.01)
        elif len(commits) == 3:  # the copy sent back: a window for the moved copy's handler to remove its file
            threads["moved"].join(2)

    ctx.writer.before_commit = pace
    send("blocker", make_dataset(study_uid="1.2.4"))
    wait_for(lambda: commits == [1], timeout=30, every=0.01)
    send("moved", moved)
    wait_for(lambda: len(ctx.writer._pending) == 1, timeout=30, every=0.01)
    gate.set()
    wait_for(lambda: len(commits) == 3, timeout=30, every=0.01)
    for name in ("blocker", "moved", "back"):
        threads[name].join(30)
    assert statuses == {"blocker": store.SUCCESS, "moved": store.SUCCESS, "back": store.SUCCESS}
    assert commits == [1, 1, 1]
    row = ctx.conn().execute("SELECT path, series_uid FROM instances WHERE sop_uid=?", (sop,)).fetchone()
    assert row["series_uid"] == "1.2.3.1" and Path(row["path"]).is_file()
    assert not ctx.store.path_for("1.2.3", "1.2.3.2", sop).exists()


def test_two_copies_at_one_path_leave_the_file_and_the_row_of_the_same_copy(
        ctx: StationContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two copies of one instance, same path, sent at once and differing (here in Instance Number):
    the first is renamed into place, the second renamed over it and committed, then the first
    committed: the file was the second copy's and the row the first's. One arrival of a path at a
    time (Store.path_lock) keeps the second waiting until the first is committed."""
    from pydicom import dcmread

    sop = "1.2.826.0.1.3680043.10.1457.99.6"
    handler = store.StoreHandler(ctx)
    first = make_dataset(sop_uid=sop, study_uid="1.2.3", series_uid="1.2.3.1", instance_number=1)
    second = make_dataset(sop_uid=sop, study_uid="1.2.3", series_uid="1.2.3.1", instance_number=2)
    renamed, gate = threading.Event(), threading.Event()
    write_unsynced = ctx.store.write_unsynced

    def pause_after_rename(path: str, chunks: list[Any]) -> tuple[int, int]:  # the first copy, before its commit
        out = write_unsynced(path, chunks)
        renamed.set()
        assert gate.wait(30)
        return out

    monkeypatch.setattr(ctx.store, "write_unsynced", pause_after_rename)
    statuses: dict[str, Any] = {}
    threads = {name: threading.Thread(target=lambda n=name, ds=ds: statuses.__setitem__(n, handler(store_event(ctx, ds))))
               for name, ds in (("first", first), ("second", second))}
    threads["first"].start()
    assert renamed.wait(30)
    threads["second"].start()  # the file exists now: written with Store.write, renamed over the first
    threads["second"].join(1.0)  # a window for it to be renamed and committed before the first's commit
    gate.set()
    for thread in threads.values():
        thread.join(30)
    assert statuses == {"first": store.SUCCESS, "second": store.SUCCESS}
    path = ctx.store.path_for("1.2.3", "1.2.3.1", sop)
    row = ctx.conn().execute("SELECT instance_number FROM instances WHERE sop_uid=?", (sop,)).fetchone()
    assert str(row["instance_number"]) == str(dcmread(path).InstanceNumber)


def test_the_path_lock_keeps_processes_apart_and_other_paths_free(tmp_path: Path) -> None:
    """Store.path_lock across processes (the dicom workers, the transfer process): a path another
    process holds is waited for; another path is not."""
    import subprocess
    import sys

    from appliance.storage import Store

    held = str(tmp_path / "storage" / "1.2.3" / "1.2.3.1" / "1.2.3.1.1.dcm")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from appliance.storage import Store; s = Store(sys.argv[1]); "
         "ctx = s.path_lock.held(sys.argv[2]); ctx.__enter__(); print('held', flush=True); sys.stdin.read()",
         str(tmp_path), held],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        store_ = Store(tmp_path)
        with store_.path_lock.held(held.replace("1.2.3.1.1.dcm", "1.2.3.1.2.dcm")):
            pass  # another path: not waited for
        got = threading.Event()

        def take() -> None:
            with store_.path_lock.held(held):
                got.set()

        taker = threading.Thread(target=take)
        taker.start()
        assert not got.wait(0.5), "the other process's lock was not waited for"
        holder.stdin.close()  # type: ignore[union-attr]
        holder.wait(30)
        taker.join(30)
        assert got.is_set()
    finally:
        holder.kill()
        holder.wait(30)


def test_a_rename_that_fails_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Store.write (C-STORE without overlap_fsync, C-GET retrievals): the rename into place can fail
    (ENOSPC for a new directory entry, EIO); the fsync'd temp file stayed behind, of a live worker,
    so not even `remove_stale_temp_files` removed it before the next restart."""
    from appliance.storage import Store

    st = Store(tmp_path)
    path = st.path_text_for("1.2.3", "1.2.3.1", "1.2.3.1.1")

    def full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", full)
    with pytest.raises(OSError, match="No space"):
        st.write(path, [b"DICM", b"data"])
    assert [p.name for p in st.root.rglob("*") if p.is_file()] == []


def _files(ctx: StationContext) -> list[Path]:
    return sorted(p for p in ctx.store.root.rglob("*") if p.is_file())


@pytest.mark.parametrize("before", ["none", "same_series", "other_series"])
def test_an_arrival_whose_commit_fails_leaves_its_file_only_where_the_index_names_it(
        ctx: StationContext, monkeypatch: pytest.MonkeyPatch, before: str) -> None:
    """The file is renamed into place before its index row is committed; when that commit fails
    (a full disk for the WAL, a damaged state.db) the sender hears a failure, and the file stayed
    in the store with no row naming it, for good (no sweep indexes or removes it while the station
    runs). Now it goes, unless the index names that path (an earlier copy, now overwritten)."""
    sop = "1.2.826.0.1.3680043.10.1457.99.3"
    handler = store.StoreHandler(ctx)
    if before != "none":
        series = "1.2.3.1" if before == "same_series" else "1.2.3.9"
        assert handler(store_event(ctx, make_dataset(sop_uid=sop, study_uid="1.2.3", series_uid=series))) == store.SUCCESS
    indexed_before = index.instance_path(ctx.conn(), sop)

    def full(conn: sqlite3.Connection, recs: list[index.InstanceRecord]) -> list[Any]:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(index, "add_instances", full)
    status = handler(store_event(ctx, make_dataset(sop_uid=sop, study_uid="1.2.3", series_uid="1.2.3.1")))
    assert not isinstance(status, int) and status.Status == store.OUT_OF_RESOURCES
    assert "full" in status.ErrorComment and "internal error" not in status.ErrorComment
    assert index.instance_path(ctx.conn(), sop) == indexed_before  # the index as it was
    assert [str(p) for p in _files(ctx)] == ([] if indexed_before is None else [indexed_before])


def test_a_starting_worker_keeps_the_temp_files_of_live_writers(tmp_path: Path) -> None:
    """A dicom worker (re)started removes the temp files of crashed writers. The transfer process
    writes the same store (C-GET retrievals, Store.write): its temp files were taken for a crash's,
    removed under it (a worker restarted by the supervisor or added by dicom.workers while a
    retrieval runs), and that retrieval's rename failed."""
    import subprocess
    import sys

    from appliance.storage import Store

    st = Store(tmp_path)
    folder = Path(st.path_text_for("1.2.3", "1.2.3.1", "1.2.3.1.1")).parent
    folder.mkdir(parents=True)
    writers = {name: subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "service", name],
                                      stdin=subprocess.PIPE) for name in ("dicom", "transfer")}
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        temps = {name: folder / f".1.2.3.1.1.dcm.{proc.pid}.0.tmp" for name, proc in writers.items()}
        temps["crashed"] = folder / f".1.2.3.1.1.dcm.{dead.pid}.0.tmp"
        temps["stream"] = st.root / f".stream.{dead.pid}.3.tmp"
        for path in temps.values():
            path.write_bytes(b"x")
        assert st.remove_stale_temp_files() == 2
        assert {name for name, path in temps.items() if path.exists()} == {"dicom", "transfer"}
    finally:
        for proc in writers.values():
            proc.kill()
            proc.wait()


def _retriever(data: Path) -> tuple[Settings, Any]:
    """A fresh station's settings and the C-GET store of its transfer process, retrieving from PACS."""
    from appliance.transfer.engine import GetStore

    settings = Settings(data)
    settings.initialize()
    return settings, GetStore(data, settings, "PACS")


def _get_event(ds: Any, raw: bytes) -> Any:
    """What GetStore is called with for one retrieved instance (the fields it reads)."""
    request = types.SimpleNamespace(DataSet=io.BytesIO(raw), AffectedSOPClassUID=ds.SOPClassUID)
    return types.SimpleNamespace(request=request, dataset=ds, context=types.SimpleNamespace(transfer_syntax=EXPLICIT))


def test_a_retrieved_instance_and_a_purge_of_its_study_never_cross(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A C-GET retrieval (transfer process) storing an instance of a study that a retention purge
    deletes meanwhile: the C-STORE handler holds the purge lock from file to index row, the
    retrieval did not, so the purge could remove the file just written (the instance retrieved
    again: same path) and the row committed after it named a file that was gone."""
    import time

    from appliance import retention
    from appliance.burn import jobs
    data = tmp_path / "data"
    settings, getstore = _retriever(data)
    ds = make_dataset(study_uid="1.2.3")
    raw = explicit_bytes(ds)

    assert getstore(_get_event(ds, raw)) == 0
    conn = db.connect(data)
    with db.transaction(conn):
        job_id = jobs.create_job_in(conn, role="any", sop_uids=[ds.SOPInstanceUID], source="manual")
        assert jobs.move(conn, job_id, (jobs.QUEUED,), jobs.DONE, finished_at=time.time() - 10)
    verdicts = retention.assess(conn, settings, older_than_days=0, study_uid="1.2.3")
    assert verdicts and not verdicts[0].protected
    the_plan = retention.Plan(retention.disk_usage(data), 0, 0, verdicts, [])
    purged: list[Any] = []
    real_add = index.add_instance

    def purge_first(conn: sqlite3.Connection, rec: index.InstanceRecord, **kw: Any) -> str | None:
        """The purge runs between the retrieval's file and its row (or waits for the row)."""
        other = db.connect(data)
        purge = threading.Thread(target=lambda: purged.append(retention.purge(other, settings, data, the_plan,
                                                                              older_than_days=0)))
        purge.start()
        purge.join(2)  # a window for the purge (a correct retrieval makes it wait for the row)
        try:
            return real_add(conn, rec, **kw)
        finally:
            monkeypatch.setattr(index, "add_instance", real_add)
            threading.Thread(target=lambda: (purge.join(30), other.close())).start()

    monkeypatch.setattr(index, "add_instance", purge_first)
    assert getstore(_get_event(ds, raw)) == 0  # retrieved again
    wait_for(lambda: bool(purged), timeout=30, every=0.01)
    path = index.instance_path(conn, ds.SOPInstanceUID)
    assert path is None or Path(path).is_file(), "the index names a file the purge removed"
    conn.close()


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("busy", [False, True])
def test_an_instance_sent_again_keeps_its_stored_copy_when_the_new_one_cannot_be_synced(
        ctx: StationContext, monkeypatch: pytest.MonkeyPatch, busy: bool, streamed: bool) -> None:
    """overlap_fsync renames the new file into place before its fsync. Sent again to the same path,
    the copy stored (and acknowledged) before was replaced by bytes not known to be on disk: an
    fsync error answered A700 with the old copy gone and the index naming the unsynced one (after a
    power cut, possibly an empty file). Replacing a copy, the fsync now comes before the rename."""
    monkeypatch.setattr(store, "_STORING", [1 if busy else 0])
    handler = store.StoreHandler(ctx)
    assert handler.overlap
    sop = "1.2.826.0.1.3680043.10.1457.99.4"
    first = make_dataset(sop_uid=sop, study_uid="1.2.3", series_uid="1.2.3.1", seed=1)
    again = make_dataset(sop_uid=sop, study_uid="1.2.3", series_uid="1.2.3.1", seed=2, instance_number=7)
    assert handler(store_event(ctx, first)) == store.SUCCESS
    path = ctx.store.path_for("1.2.3", "1.2.3.1", sop)
    stored = path.read_bytes()
    row = dict(ctx.conn().execute("SELECT * FROM instances WHERE sop_uid=?", (sop,)).fetchone())

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    event = store_event(ctx, again)
    if streamed:  # written to a temp file as its fragments arrived (part stream)
        sink = store.StreamedDataSet(ctx.store, file_meta_bytes(again.SOPClassUID, sop, EXPLICIT, "CT"))
        sink.write(memoryview(explicit_bytes(again)))
        event.request.DataSet = sink
    monkeypatch.setattr(os, "fsync", broken_fsync)
    status = handler(event)
    assert not isinstance(status, int) and status.Status == store.OUT_OF_RESOURCES
    assert path.read_bytes() == stored  # the acknowledged copy, untouched
    assert dict(ctx.conn().execute("SELECT * FROM instances WHERE sop_uid=?", (sop,)).fetchone()) == row
    assert _files(ctx) == [path]  # no temp file either


@pytest.mark.parametrize("busy", [False, True])
def test_an_instance_moved_to_another_series_keeps_its_old_copy_when_the_new_one_cannot_be_synced(
        ctx: StationContext, monkeypatch: pytest.MonkeyPatch, busy: bool) -> None:
    """Sent again in another series, the new copy goes to another path (renamed before its fsync,
    committed meanwhile). When its fsync fails the sender hears A700; the copy stored and
    acknowledged before used to be deleted all the same, leaving the instance only in a file not
    known to be on disk. It is kept."""
    monkeypatch.setattr(store, "_STORING", [1 if busy else 0])
    sop = "1.2.826.0.1.3680043.10.1457.99.5"
    handler, moved, _same = _stored_then_two_copies(ctx, sop)
    old = ctx.store.path_for("1.2.3", "1.2.3.1", sop)
    stored = old.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    status = handler(store_event(ctx, moved))
    assert not isinstance(status, int) and status.Status == store.OUT_OF_RESOURCES
    assert old.read_bytes() == stored


@pytest.mark.parametrize("before", [False, True])
def test_a_retrieved_instance_whose_commit_fails_leaves_its_file_only_where_the_index_names_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: bool) -> None:
    """A C-GET retrieval (transfer process) whose index commit fails: the sub-operation fails, and
    its file goes unless the index names that path (a copy retrieved before, now overwritten), as
    for a C-STORE; it stayed in the store with no row naming it."""
    data = tmp_path / "data"
    settings, getstore = _retriever(data)
    ds = make_dataset(study_uid="1.2.3")
    raw = explicit_bytes(ds)

    if before:
        assert getstore(_get_event(ds, raw)) == 0
    conn = db.connect(data)
    indexed_before = index.instance_path(conn, ds.SOPInstanceUID)

    def full(conn: sqlite3.Connection, rec: index.InstanceRecord, **kw: Any) -> str | None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(index, "add_instance", full)
    assert getstore(_get_event(ds, raw)) == 0xA700
    assert index.instance_path(conn, ds.SOPInstanceUID) == indexed_before
    files = sorted(str(p) for p in (data / "storage").rglob("*") if p.is_file())
    assert files == ([] if indexed_before is None else [indexed_before])
    conn.close()
