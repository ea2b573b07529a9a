"""Files a crash left between their write and their index commit (never acknowledged): found and
removed after an interrupted stop, and nothing else with them (index.remove_unacknowledged)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import pytest
from store_handler_support import handler_context, store_event
from support import make_dataset

from appliance import db, index
from appliance.dicom.context import StationContext
from appliance.dicom.handlers import store

STUDY, SERIES = "1.2.3", "1.2.3.1"


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StationContext:
    return handler_context(tmp_path, monkeypatch)


def _stored(ctx: StationContext, sop: str, series: str = SERIES) -> Path:
    """`sop` stored by the C-STORE handler (indexed and acknowledged); its path."""
    assert store.StoreHandler(ctx)(store_event(ctx, make_dataset(sop_uid=sop, study_uid=STUDY, series_uid=series))) \
        == store.SUCCESS
    return ctx.store.path_for(STUDY, series, sop)


def _unindexed(ctx: StationContext, sop: str, series: str = SERIES) -> Path:
    """A complete file at `sop`'s place with no index row: what a kill between write and commit leaves."""
    path = ctx.store.path_for(STUDY, series, sop)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_dataset(sop_uid=sop, study_uid=STUDY, series_uid=series).save_as(path, enforce_file_format=True)
    return path


def _age(path: Path, seconds: float) -> None:
    """Make `path` (and its folder) look written `seconds` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))
    os.utime(path.parent, (then, then))


def _sweep(ctx: StationContext, since: float) -> int:
    with contextlib.closing(db.connect(ctx.store.root.parent)) as conn:
        return index.remove_unacknowledged(conn, ctx.store, since)


def test_files_written_since_lists_the_objects_of_recently_changed_series_folders(ctx: StationContext) -> None:
    old = _stored(ctx, "1.2.3.1.1", series="1.2.3.9")
    _age(old, 3600)
    new = _stored(ctx, "1.2.3.1.2")
    (new.parent / ".1.2.3.1.3.dcm.99.0.tmp").write_bytes(b"temp")  # a temp file is no stored object
    (ctx.store.root / "stray.dcm").write_bytes(b"")  # nor a file outside <study>/<series>/
    assert list(ctx.store.files_written_since(time.time() - 60)) == [str(new)]
    assert sorted(ctx.store.files_written_since(0)) == sorted([str(old), str(new)])


def test_only_recent_files_the_index_does_not_name_are_removed(ctx: StationContext) -> None:
    since = time.time() - 60
    acknowledged = [_stored(ctx, f"1.2.3.1.{n}") for n in range(1, 4)]
    cut_off = _unindexed(ctx, "1.2.3.1.4")
    garbage = ctx.store.path_for(STUDY, SERIES, "1.2.3.1.5")
    garbage.write_bytes(b"\0" * 100)  # a power cut's half-written file: no UID to read
    before = _unindexed(ctx, "1.2.3.1.6", series="1.2.3.8")
    _age(before, 3600)  # older than the interrupted associations: not this sweep's business
    assert _sweep(ctx, since) == 2
    assert not cut_off.exists() and not garbage.exists()
    assert all(p.exists() for p in acknowledged) and before.exists()
    assert _sweep(ctx, since) == 0


def test_a_file_stamped_just_before_its_association_began_is_still_found(ctx: StationContext) -> None:
    """File times come from the kernel's coarse clock, a few milliseconds behind time.time(): the
    first file of an association can carry a time before the association's own start."""
    cut_off = _unindexed(ctx, "1.2.3.1.12")
    assert _sweep(ctx, cut_off.stat().st_mtime + 0.004) == 1
    assert not cut_off.exists()


def test_a_file_named_for_another_instance_is_removed(ctx: StationContext) -> None:
    """The index row of the UID the file holds must name THIS path: a copy of an indexed instance
    lying elsewhere is not what the index points to."""
    since = time.time() - 60
    indexed = _stored(ctx, "1.2.3.1.7")
    stray = ctx.store.path_for(STUDY, "1.2.3.2", "1.2.3.1.7")
    stray.parent.mkdir(parents=True)
    stray.write_bytes(indexed.read_bytes())
    assert _sweep(ctx, since) == 1
    assert indexed.exists() and not stray.exists()


def test_an_arrival_between_its_file_and_its_commit_is_waited_for_and_kept(ctx: StationContext) -> None:
    """Another worker's arrival holds the purge lock shared from its file to its commit: the sweep
    finds its file unindexed, waits for the lock, and then sees the row."""
    since = time.time() - 60
    written, release = threading.Event(), threading.Event()
    path = ctx.store.path_for(STUDY, SERIES, "1.2.3.1.8")

    def arrival() -> None:
        with ctx.store.lock.arrival():
            _unindexed(ctx, "1.2.3.1.8")
            written.set()
            release.wait(30)
            with contextlib.closing(db.connect(ctx.store.root.parent)) as conn:
                rec = index.InstanceRecord(
                    sop_uid="1.2.3.1.8", sop_class="1.2.840.10008.5.1.4.1.1.2", series_uid=SERIES, study_uid=STUDY,
                    path=str(path), size=path.stat().st_size, transfer_syntax="1.2.840.10008.1.2.1",
                    patient={"patient_id": "PID1"}, study={}, series={}, instance_number="8")
                rec.received_at = since - 3600  # not in the sweep's first look: the row is read under the lock
                index.add_instance(conn, rec)

    arriving = threading.Thread(target=arrival)
    arriving.start()
    assert written.wait(30)
    result: list[int] = []
    sweeping = threading.Thread(target=lambda: result.append(_sweep(ctx, since)))
    sweeping.start()
    sweeping.join(0.5)
    assert sweeping.is_alive(), "the sweep did not wait for the arrival's commit"
    release.set()
    arriving.join(30)
    sweeping.join(30)
    assert result == [0] and path.exists()


def test_a_data_folder_named_another_way_names_the_same_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows written by a process that was given the data folder as a relative path (or through a
    symbolic link) name the same files: nothing acknowledged is removed for how it was spelled."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.chdir(tmp_path)
    relative = handler_context(Path("data"), monkeypatch)
    stored = _stored(relative, "1.2.3.1.9")
    assert not stored.is_absolute()
    (tmp_path / "link").symlink_to(data)
    linked = handler_context(tmp_path / "link", monkeypatch)
    assert _sweep(linked, time.time() - 60) == 0
    assert (data / stored.relative_to("data")).exists()


@pytest.mark.parametrize("method", ["get", "move"])
def test_the_transfer_process_removes_what_an_interrupted_c_get_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """C-GET retrievals are written by the transfer process itself, each file before its commit: a
    start after a stop that interrupted one removes what it left unindexed. A C-MOVE's instances
    arrive through the dicom workers (which look after their own), so none is looked for then."""
    from appliance.transfer import jobs, loop

    ctx = handler_context(tmp_path, monkeypatch)
    kept = _stored(ctx, "1.2.3.1.10")
    with contextlib.closing(db.connect(tmp_path)) as conn:
        transfer_id = jobs.create_retrieve(conn, "PACS", method, STUDY)
        assert jobs.claim(conn, transfer_id)
    left = _unindexed(ctx, "1.2.3.1.11")
    sweeps: list[threading.Thread] = []
    start = index.start_removing_unacknowledged
    monkeypatch.setattr(index, "start_removing_unacknowledged", lambda *args: sweeps.append(start(*args)))
    loop.Engine(tmp_path).recover()
    for thread in sweeps:
        thread.join(30)
    assert len(sweeps) == (1 if method == "get" else 0)
    assert left.exists() is (method == "move") and kept.exists()
    with contextlib.closing(db.connect(tmp_path)) as conn:
        assert jobs.get(conn, transfer_id)["state"] == "queued"  # and the retrieval itself is resumed
