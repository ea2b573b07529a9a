"""The store path's newer speed-ups keep the promise of a C-STORE success (bench/INGEST.md section 5).

- overlap_fsync: the file's fsync runs while the index commit runs, and the success waits for both;
  a failed fsync is no success.
- nocopy: the stored file holds exactly the received bytes, and the receive buffer is usable again.
- lean_index: a lone arrival without a savepoint still fails alone and leaves nothing half-written;
  patient and series rows that did not change are not rewritten.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from store_handler_support import EXPLICIT, handler_context, store_event
from support import make_dataset, wait_for

from appliance import db, index
from appliance.dicom.context import StationContext
from appliance.dicom.handlers import store
from appliance.storage import file_meta_bytes


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StationContext:
    return handler_context(tmp_path, monkeypatch)


def _indexed(data: Path, sop_uid: str) -> bool:
    with contextlib.closing(db.connect(data)) as conn:
        return conn.execute("SELECT 1 FROM instances WHERE sop_uid=?", (sop_uid,)).fetchone() is not None


@pytest.mark.parametrize("busy", [False, True])
def test_the_success_waits_for_the_fsync_that_runs_beside_the_commit(ctx: StationContext,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      busy: bool) -> None:
    """Alone, the fsync runs in a helper thread beside the commit; with another object being handled
    in the process (`busy`, part fsync_busy) it runs after the commit in the handler's thread. Either
    way the success comes only after it."""
    monkeypatch.setattr(store, "_STORING", [1 if busy else 0])  # another association's object in hand
    threads: list[str] = []
    handler = store.StoreHandler(ctx)
    assert handler.overlap and handler.nocopy and handler.fsync_busy
    ds = make_dataset()
    synced = threading.Event()
    release = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        threads.append(threading.current_thread().name)
        release.wait(30)
        real_fsync(fd)
        synced.set()

    monkeypatch.setattr(os, "fsync", slow_fsync)
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(handler(store_event(ctx, ds))))
    thread.start()
    wait_for(lambda: _indexed(ctx.data_dir, ds.SOPInstanceUID), timeout=30, every=0.01)  # committed meanwhile
    thread.join(0.5)  # a window for a wrong early answer (a correct handler blocks until `release`)
    assert thread.is_alive() and not result and not synced.is_set()
    release.set()
    thread.join(30)
    assert synced.is_set() and result == [store.SUCCESS]
    assert (threads == [thread.name]) if busy else (threads and threads[0].startswith("fsync")), threads


@pytest.mark.parametrize("busy", [False, True])
def test_a_failed_fsync_is_no_success(ctx: StationContext, monkeypatch: pytest.MonkeyPatch, busy: bool) -> None:
    monkeypatch.setattr(store, "_STORING", [1 if busy else 0])

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    status = store.StoreHandler(ctx)(store_event(ctx, make_dataset()))
    assert not isinstance(status, int) and status.Status == store.OUT_OF_RESOURCES


def test_the_stored_file_holds_the_received_bytes_and_the_buffer_is_free_again(ctx: StationContext) -> None:
    ds = make_dataset()
    event = store_event(ctx, ds)
    assert store.StoreHandler(ctx)(event) == store.SUCCESS
    raw = event.request.DataSet.getvalue()
    path = ctx.store.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert path.read_bytes() == file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID, EXPLICIT, "CT") + raw
    event.request.DataSet.write(b"more")  # would raise BufferError while a view of it were alive


def _record(n: int, path: str | None = None, name: str = "DOE^JOHN") -> index.InstanceRecord:
    return index.InstanceRecord(
        sop_uid=f"1.2.3.1.{n}", sop_class="1.2.840.10008.5.1.4.1.1.2", series_uid="1.2.3.1", study_uid="1.2.3",
        path=path if path is not None else f"/store/{n}.dcm", size=10, transfer_syntax=EXPLICIT,
        patient={"patient_id": f"P{n}", "patient_name": name}, study={}, series={"modality": "CT"},
        instance_number=str(n))


def test_a_lone_arrival_that_fails_leaves_nothing_and_raises_nothing(tmp_path: Path) -> None:
    conn = db.connect(tmp_path)
    bad = _record(1)
    bad.path = None  # type: ignore[assignment]  # instances.path is NOT NULL: fails after the patient row
    (result,) = index.add_instances(conn, [bad])
    assert isinstance(result, sqlite3.IntegrityError) and not conn.in_transaction
    assert conn.execute("SELECT COUNT(*) FROM patients").fetchone()[0] == 0  # its patient row rolled back
    assert index.add_instances(conn, [_record(2)]) == [None]  # the connection goes on
    assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 1


def test_unchanged_patient_and_series_rows_are_not_rewritten(tmp_path: Path) -> None:
    conn = db.connect(tmp_path)
    values = {"patient_id": "P1", "patient_name": "DOE^JOHN", "id_value": "P1"}
    index._upsert(conn, "patients", "patient_id", values, only_changed=True)
    assert conn.execute("SELECT changes()").fetchone()[0] == 1
    index._upsert(conn, "patients", "patient_id", values, only_changed=True)
    assert conn.execute("SELECT changes()").fetchone()[0] == 0  # same values: row left alone
    index._upsert(conn, "patients", "patient_id", {**values, "patient_name": "DOE^JANE"}, only_changed=True)
    assert conn.execute("SELECT changes()").fetchone()[0] == 1
    assert conn.execute("SELECT patient_name FROM patients").fetchone()[0] == "DOE^JANE"
