"""A C-STORE data set in several fragments goes to disk as it arrives (pnd_tuning 3e, switch `stream`).

What must hold: the stored file is the same as without streaming (file meta + the data set as
received), the success still means fsync'd and indexed, a write error mid-way is a clear failure
with nothing indexed and no file left, and a data set that never completes leaves no temp file.
Runs the DICOM server in this process (no station), with dcmtk's storescu as the sender.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom.pdu import P_DATA_TF
from support import dcmtk, dicom_server, make_dataset, recv_exactly, wait_for

from appliance import db
from appliance.dicom import pnd_tuning
from appliance.dicom.handlers import store
from appliance.dicom.server import DicomServer
from appliance.storage import Store, file_meta_bytes


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("BURNSTATION_FASTPATH", "1")
    with dicom_server(tmp_path / "data", "dicom.store_from_any=true") as srv:
        yield srv


def _large(folder: Path) -> Path:
    """A CT of ~520 KB: storescu sends it in 16 KB PDUs (about 32 fragments)."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(rows=512, cols=512, patient_name="O'BRIEN^<b>")
    path = folder / "large.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _send(port: int, path: Path, pdu: int = 16384) -> Any:
    """16 KB PDUs: each fragment written from Python; 128 KB: spliced socket -> pipe -> file (3f)."""
    return dcmtk("storescu", "-v", "--max-send-pdu", str(pdu), "-aec", "BURNSTATION", "127.0.0.1", str(port),
                 str(path), timeout=60)


def _temps(data: Path) -> list[str]:
    return [name for name in os.listdir(data / "storage") if name.endswith(".tmp")]


def _stored(data: Path, sop_uid: str) -> str | None:
    conn = db.connect(data)
    try:
        found = conn.execute("SELECT path FROM instances WHERE sop_uid=?", (sop_uid,)).fetchone()
        return found[0] if found else None
    finally:
        conn.close()


@pytest.mark.parametrize("pdu", [16384, 131072])
def test_a_large_data_set_is_streamed_and_stored_exactly(server: DicomServer, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, pdu: int) -> None:
    writes: list[int] = []
    spliced: list[int] = []
    real_write = store.StreamedDataSet.write
    real_splice = store.StreamedDataSet.splice_from

    def counting_write(self: store.StreamedDataSet, fragment: memoryview) -> None:
        writes.append(len(fragment))
        real_write(self, fragment)

    monkeypatch.setattr(store.StreamedDataSet, "write", counting_write)
    monkeypatch.setattr(store.StreamedDataSet, "splice_from",
                        lambda self, fd, n: (spliced.append(n), real_splice(self, fd, n))[1])
    tried: list[tuple[int, ...]] = []  # each PDU the splice branch looked at: (item length, context, control, PDU length)
    real_fragment = pnd_tuning._splice_fragment
    monkeypatch.setattr(pnd_tuning, "_splice_fragment", lambda dul, lean, twin, head, length: (
        tried.append((int.from_bytes(head[0:4], "big"), head[4], head[5], length, lean.context_id)),
        real_fragment(dul, lean, twin, head, length))[1])
    decoded: list[int] = []
    real_decode = P_DATA_TF.decode
    monkeypatch.setattr(P_DATA_TF, "decode", lambda self, data: (decoded.append(1), real_decode(self, data))[1])
    source = _large(tmp_path)
    result = _send(server.port, source, pdu)  # type: ignore[attr-defined]
    assert result.returncode == 0, result.stdout + result.stderr
    sent = dcmread(source)
    path = _stored(server.data_dir, sent.SOPInstanceUID)
    assert path is not None
    if pdu == 16384:
        assert len(writes) > 10 and not spliced  # the meta, then fragment by fragment
    else:  # the meta and the first fragment written (and a last one under SPLICE_MIN), the rest spliced
        assert len(writes) <= 3 and sum(spliced) >= 2 * 131060, (
            writes, spliced, tried, pnd_tuning._SPLICE, pnd_tuning._LEAN, pnd_tuning._STREAM,
            os.environ.get("BURNSTATION_FASTPATH"), pnd_tuning.fast_path_enabled("splice"))
    assert len(decoded) <= 2  # of up to ~33 PDUs: none went through the library's PDU objects
    raw = source.read_bytes()
    stored = Path(path).read_bytes()
    meta = file_meta_bytes(sent.SOPClassUID, sent.SOPInstanceUID, sent.file_meta.TransferSyntaxUID, "STORESCU")
    data_set = raw[raw.index(b"DICM") + 4:]
    data_set = data_set[12 + int.from_bytes(data_set[8:12], "little"):]  # after the meta group
    assert stored == meta + data_set  # what the handler writes without streaming
    back = dcmread(path)
    assert back.PatientName == "O'BRIEN^<b>" and back.PixelData == sent.PixelData
    assert _temps(server.data_dir) == []


class _HeaderCuttingProxy:
    """Between storescu and the station: every large P-DATA-TF after the first is sent as its 6-byte
    header and half its item header, then (once the station reads the item header) the rest. What a sender held
    back by a full receive window does on a loaded machine: a clean-clone CI run got no splice at
    all when the station gave up on a header it could not yet see whole."""

    def __init__(self, target: int, waiting: threading.Event) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target, self.waiting, self.cut = target, waiting, 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.target))
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=self._back, args=(upstream, client), daemon=True).start()
        large = 0
        with client, upstream, contextlib.suppress(ConnectionError):  # until storescu closes
            while True:
                header = recv_exactly(client, 6)
                body = recv_exactly(client, int.from_bytes(header[2:6], "big"))
                if header[0] == 0x04 and len(body) >= pnd_tuning.SPLICE_MIN:
                    large += 1
                    if large > 1:
                        self.waiting.clear()
                        upstream.sendall(header + body[:3])
                        if self.waiting.wait(10):  # (not counted: the station did not read them)
                            self.cut += 1
                        upstream.sendall(body[3:])
                        continue
                upstream.sendall(header + body)

    @staticmethod
    def _back(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)


def test_a_header_cut_by_the_window_is_still_spliced(server: DicomServer, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spliced: list[int] = []
    real_splice = store.StreamedDataSet.splice_from
    monkeypatch.setattr(store.StreamedDataSet, "splice_from",
                        lambda self, fd, n: (spliced.append(n), real_splice(self, fd, n))[1])
    waiting = threading.Event()
    real_recv_body = pnd_tuning._recv_body

    def recv_body_seen(twin: socket.socket, assoc_sock: Any, length: int) -> bytearray:
        if length == 6:  # the item header, after the PDU header: the station reads what came of it
            waiting.set()
        return real_recv_body(twin, assoc_sock, length)

    monkeypatch.setattr(pnd_tuning, "_recv_body", recv_body_seen)
    proxy = _HeaderCuttingProxy(server.port, waiting)  # type: ignore[attr-defined]
    source = _large(tmp_path)
    result = _send(proxy.port, source, 131072)
    assert result.returncode == 0, result.stdout + result.stderr
    assert proxy.cut >= 2 and sum(spliced) >= proxy.cut * 131060, (proxy.cut, spliced)
    path = _stored(server.data_dir, dcmread(source).SOPInstanceUID)
    assert path is not None and dcmread(path).PixelData == dcmread(source).PixelData


@pytest.mark.parametrize("pdu", [16384, 131072])
def test_a_write_error_mid_stream_is_a_failure_and_leaves_nothing(server: DicomServer, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch, pdu: int) -> None:
    real_write = store.StreamedDataSet.write
    real_splice = store.StreamedDataSet.splice_from

    def disk_full_after_the_meta(self: store.StreamedDataSet, fragment: memoryview) -> None:
        if self.size:
            self.error = OSError(28, "No space left on device")
            return
        real_write(self, fragment)

    def disk_full_when_spliced(self: store.StreamedDataSet, pipe_r: int, count: int) -> None:
        if self.error is None:
            self.error = OSError(28, "No space left on device")
        real_splice(self, pipe_r, count)  # reads and drops the bytes

    monkeypatch.setattr(store.StreamedDataSet, "write", disk_full_after_the_meta if pdu == 16384 else real_write)
    monkeypatch.setattr(store.StreamedDataSet, "splice_from", disk_full_when_spliced)
    source = _large(tmp_path)
    result = _send(server.port, source, pdu)  # type: ignore[attr-defined]
    out = result.stdout + result.stderr
    assert "Refused: OutOfResources" in out, out
    assert _stored(server.data_dir, dcmread(source).SOPInstanceUID) is None
    assert _temps(server.data_dir) == []
    assert not list((server.data_dir / "storage").rglob("*.dcm"))


def test_with_the_switch_off_the_library_path_stores_the_same(server: DicomServer, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pnd_tuning, "_STREAM", False)
    opened: list[int] = []
    monkeypatch.setattr(store.StreamedDataSet, "__init__", lambda *a: opened.append(1))
    source = _large(tmp_path)
    result = _send(server.port, source)  # type: ignore[attr-defined]
    assert result.returncode == 0, result.stdout + result.stderr
    assert opened == []
    path = _stored(server.data_dir, dcmread(source).SOPInstanceUID)
    assert path is not None and dcmread(path).PixelData == dcmread(source).PixelData


def _pdata(*items: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF PDU of (context ID, control byte, fragment) items."""
    body = b"".join(struct.pack(">IBB", len(data) + 2, cid, control) + data for cid, control, data in items)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def _raw_association(port: int, source: Path) -> tuple[Any, bytes, Any]:
    """The file's data set, its bytes as they go on the wire (after the meta group), and an
    association on its context whose PDUs the test writes by hand."""
    from pynetdicom import AE

    ds = dcmread(source)
    data = source.read_bytes()
    data = data[data.index(b"DICM") + 4:]
    data = data[12 + int.from_bytes(data[8:12], "little"):]
    ae = AE(ae_title="RAWSCU")
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title="BURNSTATION")
    assert assoc.is_established
    return ds, data, assoc


def _raw_store(port: int, source: Path, mixed: bool) -> None:
    """Send a C-STORE in hand-made PDUs: command, then data in 4 fragments; `mixed`: a stray command
    fragment (not last) rides with the third data fragment, which the library files under the
    command set and otherwise ignores."""
    ds, data, assoc = _raw_association(port, source)
    try:
        cid = assoc.accepted_contexts[0].context_id
        command = pnd_tuning.store_rq_command(1, ds.SOPClassUID, ds.SOPInstanceUID)
        quarter = len(data) // 4
        parts = [data[:quarter], data[quarter:2 * quarter], data[2 * quarter:3 * quarter], data[3 * quarter:]]
        pdus = [_pdata((cid, 3, command)), _pdata((cid, 0, parts[0])), _pdata((cid, 0, parts[1]))]
        third = [(cid, 0, parts[2])] + ([(cid, 1, b"stray")] if mixed else [])
        pdus += [_pdata(*third), _pdata((cid, 2, parts[3]))]
        for pdu in pdus:
            assoc.dul.socket.send(pdu)
        wait_for(lambda: _stored_in(port, ds.SOPInstanceUID), 30, "the object stored")
    finally:
        assoc.release()


_SERVERS: dict[int, Path] = {}


def _stored_in(port: int, sop_uid: str) -> str | None:
    return _stored(_SERVERS[port], sop_uid)


@pytest.mark.parametrize("mixed", [False, True])
def test_hand_made_fragments_store_the_same_with_and_without_streaming(server: DicomServer, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       mixed: bool) -> None:
    _SERVERS[server.port] = server.data_dir  # type: ignore[attr-defined]
    abandoned: list[int] = []
    real_abandon = store.StreamedDataSet.abandon
    monkeypatch.setattr(store.StreamedDataSet, "abandon", lambda self: (abandoned.append(1), real_abandon(self))[1])
    for streaming in (False, True):
        monkeypatch.setattr(pnd_tuning, "_STREAM", streaming)
        source = _large(tmp_path / f"s{streaming}")
        _raw_store(server.port, source, mixed)  # type: ignore[attr-defined]
        sent = dcmread(source)
        path = _stored(server.data_dir, sent.SOPInstanceUID)
        assert path is not None
        raw = source.read_bytes()
        data_set = raw[raw.index(b"DICM") + 4:]
        data_set = data_set[12 + int.from_bytes(data_set[8:12], "little"):]
        meta = file_meta_bytes(sent.SOPClassUID, sent.SOPInstanceUID, sent.file_meta.TransferSyntaxUID, "RAWSCU")
        assert Path(path).read_bytes() == meta + data_set, f"streaming={streaming} mixed={mixed}"
    # the stray command fragment hands what was streamed back to the library's path
    assert abandoned == ([1] if mixed else [])
    assert _temps(server.data_dir) == []


def test_a_data_set_that_never_completes_leaves_no_temp_file(tmp_path: Path) -> None:
    st = Store(tmp_path)
    streamed = store.StreamedDataSet(st, b"META")
    streamed.write(memoryview(b"first fragment"))
    assert len(_temps(tmp_path)) == 1
    assert streamed.abandon() == b"first fragment"  # back to the library's path
    assert _temps(tmp_path) == []
    orphan = store.StreamedDataSet(st, b"META")
    assert len(_temps(tmp_path)) == 1
    del orphan  # the association died with it half received
    gc.collect()
    assert _temps(tmp_path) == []


def test_splice_drops_what_it_cannot_write_and_keeps_the_error(tmp_path: Path) -> None:
    """A data set fragment moved from a pipe into a file that refuses it: the error is kept for the
    handler's answer and the bytes are still taken out of the pipe (the stream stays in step)."""
    st = Store(tmp_path)
    streamed = store.StreamedDataSet(st, b"META")
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"x" * 1000)
        streamed.splice_from(read_end, 1000)
        assert streamed.error is None and streamed.size == 1004
        readonly = os.open(streamed.temp, os.O_RDONLY)
        os.dup2(readonly, streamed.fd)  # the file now refuses writes (EBADF), as a failing disk would
        os.close(readonly)
        os.write(write_end, b"y" * 500)
        streamed.splice_from(read_end, 500)
        assert streamed.error is not None and streamed.size == 1004
        os.set_blocking(read_end, False)
        with pytest.raises(BlockingIOError):
            os.read(read_end, 1)  # nothing left behind in the pipe
    finally:
        os.close(read_end)
        os.close(write_end)
        streamed.discard()
    assert _temps(tmp_path) == []


@pytest.mark.parametrize("pdu", [16384, 131072])
def test_a_peer_gone_mid_fragment_leaves_no_temp_file_and_nothing_indexed(server: DicomServer, tmp_path: Path,
                                                                          pdu: int) -> None:
    """The sender's connection drops in the middle of a data fragment (read, or spliced when large):
    the half-written file goes at once, nothing is indexed, and the station serves the next sender."""
    source = _large(tmp_path)
    ds, data, assoc = _raw_association(server.port, source)  # type: ignore[attr-defined]
    cid = assoc.accepted_contexts[0].context_id
    room = pdu - 12
    first, second = data[:room], data[room:2 * room]
    wire = (_pdata((cid, 3, pnd_tuning.store_rq_command(1, ds.SOPClassUID, ds.SOPInstanceUID)))
            + _pdata((cid, 0, first)) + _pdata((cid, 0, second)))
    sock = assoc.dul.socket.socket
    sock.sendall(wire[:len(wire) - len(second) // 2])  # the second fragment half sent
    wait_for(lambda: _temps(server.data_dir), 10, "the data set's temp file", every=0.02)
    sock.shutdown(socket.SHUT_RDWR)  # the sender is gone
    assoc.abort()
    wait_for(lambda: not _temps(server.data_dir), 10, "the temp file removed", every=0.02)
    assert _stored(server.data_dir, ds.SOPInstanceUID) is None
    result = _send(server.port, source, pdu)  # type: ignore[attr-defined]
    assert result.returncode == 0, result.stdout + result.stderr
    assert _stored(server.data_dir, ds.SOPInstanceUID) is not None


def _near_full(monkeypatch: pytest.MonkeyPatch, data: Path, room: int) -> None:
    """A simulated disk with `room` bytes free above a 1 MB threshold, less what the store holds."""
    from appliance import storage

    def free(path: Any) -> int:
        used = sum(entry.stat().st_size for entry in (data / "storage").rglob("*") if entry.is_file())
        return (1 << 20) + room - used

    monkeypatch.setattr(storage, "free_bytes", free)


@pytest.mark.parametrize("pdu", [16384, 131072])
def test_a_streamed_data_set_respects_the_free_space_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               pdu: int) -> None:
    """The store refuses an object that would take its file system below `dicom.min_free_mb`; the
    library's path checks before writing anything. A streamed data set (3e, 3f, spliced or not)
    was written whole first and checked only when complete: one large object (or a peer sending
    an endless one) took the disk below the threshold, to full, while it arrived. The writes now
    stop at the threshold, and the answer is the same refusal as on the library's path. The disk
    is simulated: its free space is a fixed budget minus what the store's folder holds."""
    monkeypatch.setenv("BURNSTATION_FASTPATH", "1")
    source = _large(tmp_path)  # ~520 KB
    room = 200 * 1024  # free above the threshold
    data = tmp_path / "data"
    _near_full(monkeypatch, data, room)
    largest = [0]
    real_write, real_splice = store.StreamedDataSet.write, store.StreamedDataSet.splice_from

    def write(self: store.StreamedDataSet, fragment: memoryview) -> None:
        real_write(self, fragment)
        largest[0] = max(largest[0], self.size)

    def splice(self: store.StreamedDataSet, pipe_r: int, count: int) -> None:
        real_splice(self, pipe_r, count)
        largest[0] = max(largest[0], self.size)

    monkeypatch.setattr(store.StreamedDataSet, "write", write)
    monkeypatch.setattr(store.StreamedDataSet, "splice_from", splice)
    with dicom_server(data, "dicom.store_from_any=true", "dicom.min_free_mb=1") as srv:
        result = dcmtk("storescu", "-d", "--max-send-pdu", str(pdu), "-aec", "BURNSTATION", "127.0.0.1",
                       str(srv.port), str(source), timeout=60)  # type: ignore[attr-defined]
    heard = result.stdout + result.stderr
    assert "0xa700" in heard and "[disk space below threshold]" in heard, heard[-3000:]
    assert 0 < largest[0] <= room  # streamed, and never past the threshold
    assert _temps(data) == [] and _stored(data, dcmread(source).SOPInstanceUID) is None


@pytest.mark.parametrize("pdu", [16384, 131072])
def test_a_streamed_data_set_that_fits_is_stored_near_the_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    pdu: int) -> None:
    """An object that fits above the threshold is stored, streamed or not. The handler checked the
    space for the whole object again once its streamed file was on the disk (counted twice): near
    the threshold an object that fitted was refused."""
    monkeypatch.setenv("BURNSTATION_FASTPATH", "1")
    source = _large(tmp_path)  # ~520 KB
    data = tmp_path / "data"
    _near_full(monkeypatch, data, 700 * 1024)
    with dicom_server(data, "dicom.store_from_any=true", "dicom.min_free_mb=1") as srv:
        result = _send(srv.port, source, pdu)  # type: ignore[attr-defined]
    assert result.returncode == 0 and "Success" in result.stdout + result.stderr, result.stdout + result.stderr
    assert _stored(data, dcmread(source).SOPInstanceUID) is not None and _temps(data) == []


def test_a_data_set_cut_short_by_the_threshold_gives_nothing_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Handed back to the library's path (a stray command fragment), a data set whose later
    fragments the threshold dropped must not come back as its first part: with a hole in the
    middle it could still parse. Nothing comes back, as after a write error."""
    from appliance import storage

    st = Store(tmp_path, 1)
    budget = [(1 << 20) + 100]
    monkeypatch.setattr(storage, "free_bytes", lambda path: budget[0])
    streamed = store.StreamedDataSet(st, b"META")
    streamed.write(memoryview(b"first fragment"))
    assert streamed.full is None
    budget[0] = 1 << 20  # the disk fills up meanwhile
    streamed.write(memoryview(b"second fragment"))
    assert streamed.full is not None and streamed.size == len(b"METAfirst fragment")
    assert streamed.abandon() == b""
    assert _temps(tmp_path) == []
