"""C-STORE: write the object as received, fsync, rename, index — then, and only then, succeed.

Two BURNSTATION_FASTPATH parts (bench/INGEST.md section 5 has the measurements):
- `nocopy`: the data set is read and written from a view of the received buffer, not a copy
  (BytesIO.getvalue copied every object once more: 512 KB for a CT slice).
- `overlap_fsync`: the file is written and renamed into place, then its fsync runs in a helper
  thread WHILE this thread commits the index row; the success is sent only when both are done.
  With one association the two waits (the disk, the index commit) used to follow each other.
- `stream` (pnd_tuning 3e): a data set that arrives in several fragments (a 512 KB CT slice is
  four PDUs from storescu) is written to a temp file fragment by fragment, and the kernel is
  asked to start writing each fragment to disk at once (sync_file_range), so most of the
  object is on disk when its last fragment arrives and the fsync has little left to wait for.
  The handler then reads the index attributes from the file (mmap) and renames it into place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset

from appliance import index
from appliance.dicom import pnd_tuning, rawparse
from appliance.dicom.context import StationContext, state_of
from appliance.dicom.handlers import failure_status as _failure
from appliance.storage import OutOfSpace, file_meta_bytes, unlink_quietly

LOG = logging.getLogger("burnstation.dicom.store")

SUCCESS = 0x0000
NOT_AUTHORISED = 0x0124
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210


_FSYNC_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _fsync_later(fd: int) -> Future[None]:
    """os.fsync(fd) in a helper thread (threads made on first use, shared by every association)."""
    global _FSYNC_POOL
    if _FSYNC_POOL is None:
        with _POOL_LOCK:
            if _FSYNC_POOL is None:
                _FSYNC_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")
    return _FSYNC_POOL.submit(os.fsync, fd)


class _FsyncAfter:
    """The fsync of a file whose writeback was started (sync_file_range) before the index commit,
    run in this thread when the answer waits for it: by then the data is mostly on its way, and no
    helper thread (two hand-overs, and the interpreter lock passed back and forth) is involved."""

    __slots__ = ("fd",)

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        if _SYNC_FILE_RANGE is not None and size:
            _SYNC_FILE_RANGE(fd, 0, size, _SYNC_FILE_RANGE_WRITE)

    def exception(self) -> BaseException | None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            return exc
        return None


def _libc_sync_file_range() -> Any:
    try:
        func = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return func


_SYNC_FILE_RANGE = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # start writeback of the range, do not wait for it


class StreamedDataSet(BytesIO):
    """A C-STORE data set written to a temp file of the store as its fragments arrive (3e).

    A BytesIO only because the C-STORE primitive accepts nothing else; its own buffer stays empty.

    The file starts with the same File Meta Information the handler would write. A write error
    (a full disk) is kept and answered when the data set is complete; the rest is read and dropped.
    So is a fragment that would take the store below its free-space threshold (`full`): the
    library's path refuses such an object before writing any of it, and a data set written as it
    arrives must not fill the disk first.
    The temp file goes when the handler has placed it, or with `discard`: by the handler, or when
    the association ends with the data set half received or its request never served
    (pnd_tuning `_discard_unfinished`); the garbage collector only backs that up.
    """

    def __init__(self, store: Any, meta: bytes) -> None:
        super().__init__()
        self.meta = meta
        self.error: OSError | None = None
        self.full: OutOfSpace | None = None
        self.store = store
        self.fd, self.temp = store.open_temp()
        self._finalizer = weakref.finalize(self, _remove_temp, self.fd, self.temp)
        self.size = 0
        self.write(memoryview(meta))

    def _room(self, count: int) -> bool:
        """Whether `count` more bytes leave the store above its free-space threshold (else `full`)."""
        if self.full is None and self.error is None:
            try:
                self.store.check_space(count)
            except OutOfSpace as exc:
                self.full = exc
            except OSError as exc:  # the free space cannot be read: answered as a write error would be
                self.error = exc
        return self.full is None and self.error is None

    def write(self, fragment: memoryview) -> None:
        if self.error is not None or not self._room(len(fragment)):
            return
        start = self.size
        try:
            while fragment:
                n = os.write(self.fd, fragment)
                fragment = fragment[n:]
                self.size += n
        except OSError as exc:
            self.error = exc
            return
        if _SYNC_FILE_RANGE is not None and self.size - start >= 65536:
            _SYNC_FILE_RANGE(self.fd, start, self.size - start, _SYNC_FILE_RANGE_WRITE)

    def splice_from(self, pipe_r: int, count: int) -> None:
        """Move `count` bytes waiting in a pipe into the file (os.splice: they never pass through
        Python). After a write error the bytes are read and dropped, as `write` drops them."""
        start = self.size
        room = self._room(count)
        while count > 0:
            if self.error is None and room:
                try:
                    n = os.splice(pipe_r, self.fd, count)
                except OSError as exc:
                    self.error = exc
                    continue
                self.size += n
            else:
                n = len(os.read(pipe_r, count))
            if n <= 0:  # cannot happen: the caller put `count` bytes in the pipe
                raise OSError("the pipe ran dry while moving a data set fragment to disk")
            count -= n
        if _SYNC_FILE_RANGE is not None and self.error is None and room and self.size - start >= 65536:
            _SYNC_FILE_RANGE(self.fd, start, self.size - start, _SYNC_FILE_RANGE_WRITE)

    def finish(self) -> StreamedDataSet:
        return self

    def abandon(self) -> bytes:
        """What was received so far (without the file meta), for the library's path; the file goes."""
        # after a write error or the threshold, part of it was dropped: none of it goes back (a data set with a
        # hole in the middle could still parse)
        data = os.pread(self.fd, self.size - len(self.meta), len(self.meta)) if self.error is None and self.full is None else b""
        self.discard()
        return data

    def placed(self) -> int:
        """The file was renamed into place: the descriptor (now the caller's to fsync and close)."""
        self._finalizer.detach()
        return self.fd

    def discard(self) -> None:
        self._finalizer()


def _remove_temp(fd: int, temp: str) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
    unlink_quietly(temp)


def stream_sink(ctx: StationContext) -> Any:
    """The listener's `bs_stream_sink` (pnd_tuning 3e): opens a StreamedDataSet for a C-STORE
    request, or None (library path) when the temp file cannot be made."""
    def open_sink(assoc: Any, request: Any, context_id: int) -> StreamedDataSet | None:
        try:
            transfer_syntax = str(assoc._accepted_cx[context_id].transfer_syntax[0])
            meta = file_meta_bytes(str(request.AffectedSOPClassUID or "").strip(),
                                   str(request.AffectedSOPInstanceUID or "").strip(), transfer_syntax,
                                   assoc.requestor.ae_title.strip())
            return StreamedDataSet(ctx.store, meta)
        except (OSError, KeyError, IndexError, AttributeError) as exc:
            LOG.debug("not streaming a data set to disk: %s", exc)
            return None
    return open_sink


def _record(event: Any, raw: bytes | memoryview, transfer_syntax: str) -> index.InstanceRecord:
    """The index record of a received data set: read from the raw bytes when the fast parser can,
    else (and whenever it declines or fails) from pydicom's decoding, exactly as before."""
    if pnd_tuning.fast_path_enabled("parser"):
        attrs = rawparse.parse(raw, transfer_syntax)
        if attrs is not None:
            try:
                return index.record_from_dataset(attrs, "", 0, transfer_syntax)  # type: ignore[arg-type]
            except Exception as exc:  # e.g. a code string with non-ASCII bytes: let pydicom judge
                LOG.debug("fast parser declined (%s), decoding with pydicom", exc)
    if isinstance(event.request.DataSet, StreamedDataSet):  # pynetdicom decodes a BytesIO
        event.request.DataSet = BytesIO(bytes(raw))
    return index.record_from_dataset(event.dataset, "", 0, transfer_syntax)


_STORING = [0]  # objects being handled in this process now, by all its associations (part fsync_busy)
_STORING_LOCK = threading.Lock()


class StoreHandler:
    """Bound to EVT_C_STORE."""

    def __init__(self, ctx: StationContext) -> None:
        self.ctx = ctx
        self.nocopy = pnd_tuning.fast_path_enabled("nocopy")
        self.overlap = pnd_tuning.fast_path_enabled("overlap_fsync")
        # part fsync_busy: with other objects being stored in this process meanwhile, the fsync runs
        # after the commit in this thread (its writeback started first); alone, in a helper thread
        self.fsync_busy = pnd_tuning.fast_path_enabled("fsync_busy")

    def __call__(self, event: Any) -> int | Dataset:
        state = state_of(event.assoc)
        with _STORING_LOCK:
            _STORING[0] += 1
        try:
            status = self._store(event)
        except Exception as exc:  # never let one object kill the association
            LOG.exception("C-STORE failed")
            status = _failure(OUT_OF_RESOURCES, f"internal error: {exc}")
        finally:
            with _STORING_LOCK:
                _STORING[0] -= 1
        if state is not None:
            state.services.add("store")
            if isinstance(status, int) and status == SUCCESS:
                state.stored += 1
            else:
                state.failed += 1
        return status

    def _store(self, event: Any) -> int | Dataset:
        buffer = event.request.DataSet
        if isinstance(buffer, StreamedDataSet):
            return self._store_streamed(event, buffer)
        if not self.nocopy:
            return self._store_raw(event, buffer.getvalue())
        raw = buffer.getbuffer()  # released before the handler returns: the BytesIO can be resized again
        try:
            return self._store_raw(event, raw)
        finally:
            raw.release()

    def _store_streamed(self, event: Any, streamed: StreamedDataSet) -> int | Dataset:
        try:
            if streamed.full is not None:  # as `_store_raw` refuses it
                LOG.warning("refusing C-STORE: %s", streamed.full)
                return _failure(OUT_OF_RESOURCES, "disk space below threshold")
            if streamed.error is not None:
                LOG.error("cannot write a received data set: %s", streamed.error)
                return _failure(OUT_OF_RESOURCES, f"cannot write file: {streamed.error.strerror or streamed.error}")
            length = streamed.size - len(streamed.meta)
            if length <= 0:
                return self._store_raw(event, b"")
            with mmap.mmap(streamed.fd, streamed.size, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    with view[len(streamed.meta):] as raw:
                        return self._store_raw(event, raw, streamed)
                finally:
                    view.release()
        finally:
            streamed.discard()  # nothing when it was placed

    def _store_raw(self, event: Any, raw: bytes | memoryview, streamed: StreamedDataSet | None = None) -> int | Dataset:
        ctx = self.ctx
        assoc = event.assoc
        calling = assoc.requestor.ae_title.strip()
        if not ctx.settings.get("dicom.store_from_any") and ctx.known_node(
                calling, assoc.requestor.address, "store") is None:
            return _failure(NOT_AUTHORISED, f"{calling} is not a known node allowed to store")
        request = event.request
        try:  # a streamed data set is on the disk already, each fragment checked as it was written
            ctx.store.check_space(0 if streamed is not None else len(raw))
        except OutOfSpace as exc:
            LOG.warning("refusing C-STORE: %s", exc)
            return _failure(OUT_OF_RESOURCES, "disk space below threshold")
        transfer_syntax = str(event.context.transfer_syntax)
        try:
            rec = _record(event, raw, transfer_syntax)
        except Exception as exc:
            return _failure(CANNOT_UNDERSTAND, f"cannot decode data set: {exc}")
        sop_uid = str(request.AffectedSOPInstanceUID or "").strip()
        sop_class = str(request.AffectedSOPClassUID or "").strip()
        if not sop_uid or rec.sop_uid != sop_uid:
            return _failure(DATASET_MISMATCH, "SOP Instance UID missing or differs from the request")
        if not rec.study_uid or not rec.series_uid:
            return _failure(DATASET_MISMATCH, "Study or Series Instance UID missing")
        path = ctx.store.path_text_for(rec.study_uid, rec.series_uid, sop_uid)
        chunks = [file_meta_bytes(sop_class, sop_uid, transfer_syntax, calling), raw]
        # file and index row under the purge lock (shared): a purge of this study waits, or has finished
        busy = self.fsync_busy and _STORING[0] > 1  # another association's object is being handled too
        return self._store_file(event, streamed, rec, path, chunks, sop_class, calling, busy)

    def _store_file(self, event: Any, streamed: StreamedDataSet | None, rec: index.InstanceRecord, path: str,
                    chunks: list[Any], sop_class: str, calling: str, busy: bool) -> int | Dataset:
        """Write (or place) the file and commit its index row; `busy`: other objects are being stored
        in this process, so the fsync runs after the commit here instead of in a helper thread."""
        ctx = self.ctx
        assoc = event.assoc
        with ctx.store.arrival(path):  # no purge, and no other copy of this path, until its row is committed
            synced: Future[None] | _FsyncAfter | None = None
            fsync_error: BaseException | None = None
            # the rename before the fsync (overlap_fsync) only where no copy is: one stored before (this
            # instance sent again) is replaced only by a file known to be on disk, or kept if it cannot be
            overlap = self.overlap and not os.path.exists(path)
            try:
                if streamed is not None and streamed.meta == chunks[0]:  # already written: rename it
                    if not overlap:
                        os.fsync(streamed.fd)
                    ctx.store.place(streamed.temp, path)
                    fd, size = streamed.placed(), streamed.size
                    if overlap:
                        synced = _FsyncAfter(fd, 0) if busy else _fsync_later(fd)
                    else:
                        os.close(fd)
                elif overlap:
                    fd, size = ctx.store.write_unsynced(path, chunks)
                    synced = _FsyncAfter(fd, size) if busy else _fsync_later(fd)
                else:
                    size = ctx.store.write(path, chunks)
            except OSError as exc:
                LOG.error("cannot write %s: %s", path, exc)
                return _failure(OUT_OF_RESOURCES, f"cannot write file: {exc.strerror or exc}")
            rec.path = path
            rec.size = size
            state = state_of(assoc)
            rec.sop_class = sop_class or rec.sop_class
            rec.assoc_id = state.row_id if state else None
            rec.called_aet = assoc.acceptor.ae_title.strip()
            rec.calling_aet = calling
            rec.received_at = time.time()
            # concurrent associations take turns (or are committed together) in ctx.writer, not in
            # SQLite's busy handler, which sleeps 1, 2, 5, 10... ms between attempts; it returns
            # only once the transaction holding this record is committed (appliance/dicom/ingest.py)
            old = None
            unindexed: Exception | None = None
            try:
                old = ctx.writer.add(ctx.conn(), rec)
            except Exception as exc:  # not committed: answered below, once the lock is released
                unindexed = exc
            finally:
                if synced is not None:  # the file's fsync, running meanwhile, is waited for in every case
                    fsync_error = synced.exception()
                    os.close(fd)
        if unindexed is not None:  # its file goes unless the index names that path (an earlier copy's)
            LOG.error("cannot index %s: %s", path, unindexed)
            try:
                ctx.store.remove_unless_named(path, lambda: index.instance_path(ctx.conn(), rec.sop_uid))
            except Exception as exc:  # the index cannot be read either: the file stays (it may be named)
                LOG.error("keeping %s, whose index row is unknown: %s", path, exc)
            return _failure(OUT_OF_RESOURCES, f"cannot index: {unindexed}")
        if synced is not None and fsync_error is not None:
            # indexed but not known to be on disk: no success (the sender sends it again), and a copy
            # stored before elsewhere (the instance moved to another series) is kept: it is on disk
            LOG.error("cannot fsync %s: %s%s", path, fsync_error,
                      f" (keeping the copy stored before, {old})" if old else "")
            return _failure(OUT_OF_RESOURCES, f"cannot write file: {fsync_error}")
        if old:  # the index names the new copy now, known to be on disk: the old file goes
            ctx.store.remove_unless_named(old, lambda: index.instance_path(ctx.conn(), rec.sop_uid))
        return SUCCESS
