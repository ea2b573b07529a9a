"""C-STORE requests served straight from the socket (pnd_tuning 3f, switch `lean_store`).

What must hold: the peer hears exactly what the library's path would have answered (byte for
byte, failures with their error comments included), every object is stored as before, and
whatever 3f does not cover (another service, a PDU that breaks a request off, a context the
request did not start on) reaches the library in the state the library would have been in.
Runs the DICOM server in this process (no station); the sender is a pynetdicom association
whose raw PDUs are written by hand, and whose received bytes are captured.
"""

from __future__ import annotations

import gc
import select
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from support import dicom_server, make_dataset, wait_for

from appliance import db
from appliance.dicom import pnd_tuning
from appliance.dicom.server import DicomServer

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("BURNSTATION_FASTPATH", "1")
    with dicom_server(tmp_path / "data", "dicom.store_from_any=true") as srv:
        yield srv


def _pdata(*items: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF PDU of (context ID, control byte, fragment) items."""
    body = b"".join(struct.pack(">IBB", len(data) + 2, cid, control) + data for cid, control, data in items)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def _data_set(folder: Path, name: str, **kw: Any) -> tuple[Any, bytes]:
    """A dataset and its Explicit VR Little Endian bytes as a sender puts them on the wire."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(**kw)
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    raw = raw[raw.index(b"DICM") + 4:]
    return ds, raw[12 + int.from_bytes(raw[8:12], "little"):]


class _Peer:
    """An association whose PDUs are sent by hand; every byte it receives is kept."""

    def __init__(self, port: int) -> None:
        self.received = bytearray()
        self._lock = threading.Lock()
        ae = AE(ae_title="RAWSCU")
        ae.add_requested_context(CT, [EXPLICIT])
        ae.add_requested_context(Verification)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="BURNSTATION",
                                  evt_handlers=[(evt.EVT_DATA_RECV, self._keep)])
        assert self.assoc.is_established
        self.ct = next(cx.context_id for cx in self.assoc.accepted_contexts if cx.abstract_syntax == CT)
        self.echo = next(cx.context_id for cx in self.assoc.accepted_contexts if cx.abstract_syntax == Verification)
        with self._lock:
            self.received.clear()  # the A-ASSOCIATE-AC

    def _keep(self, event: Any) -> None:
        with self._lock:
            self.received += event.data

    def send(self, *pdus: bytes) -> None:
        for pdu in pdus:
            self.assoc.dul.socket.send(pdu)

    def responses(self, count: int) -> list[bytes]:
        """Wait for `count` P-DATA-TF PDUs and return them (raw)."""
        def split() -> list[bytes]:
            with self._lock:
                data = bytes(self.received)
            pdus, pos = [], 0
            while pos + 6 <= len(data):
                length = int.from_bytes(data[pos + 2:pos + 6], "big")
                if pos + 6 + length > len(data):
                    break
                pdus.append(data[pos:pos + 6 + length])
                pos += 6 + length
            return pdus
        wait_for(lambda: len(split()) >= count, 30, f"{count} responses")
        return split()

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


def _conversation(port: int, folder: Path, sop_uids: list[str]) -> list[bytes]:
    """Stores in every shape 3f takes and some it leaves alone; returns what the peer heard."""
    peer = _Peer(port)
    try:
        ds1, one = _data_set(folder, "one")
        ds2, four = _data_set(folder, "four", rows=128, cols=128)
        ds3, together = _data_set(folder, "together")
        ds4, wrong = _data_set(folder, "wrong")
        sop_uids += [ds1.SOPInstanceUID, ds2.SOPInstanceUID, ds3.SOPInstanceUID]
        cmd = pnd_tuning.store_rq_command
        quarter = len(four) // 4
        peer.send(_pdata((peer.ct, 3, cmd(604, CT, ds1.SOPInstanceUID))), _pdata((peer.ct, 2, one)))
        peer.send(_pdata((peer.ct, 3, cmd(7, CT, ds2.SOPInstanceUID))), _pdata((peer.ct, 0, four[:quarter])),
                  _pdata((peer.ct, 0, four[quarter:2 * quarter]), (peer.ct, 0, four[2 * quarter:3 * quarter])),
                  _pdata((peer.ct, 2, four[3 * quarter:])))
        peer.send(_pdata((peer.echo, 3, _echo_command(9))))  # a C-ECHO between stores: the library's
        # command and data set in one PDU
        peer.send(_pdata((peer.ct, 3, cmd(10, CT, ds3.SOPInstanceUID)), (peer.ct, 2, together)))
        # a request whose data set names another SOP Instance UID: a failure with an error comment
        peer.send(_pdata((peer.ct, 3, cmd(11, CT, "1.2.3.4.5")), (peer.ct, 2, wrong)))
        return peer.responses(5)
    finally:
        peer.close()


def _echo_command(msg_id: int) -> bytes:
    """A C-ECHO-RQ command set (Implicit VR Little Endian)."""
    uid = b"1.2.840.10008.1.1\0"
    body = (struct.pack("<HHI", 0, 0x0002, len(uid)) + uid + struct.pack("<HHIH", 0, 0x0100, 2, 0x0030)
            + struct.pack("<HHIH", 0, 0x0110, 2, msg_id) + struct.pack("<HHIH", 0, 0x0800, 2, 0x0101))
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _counted(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Wrap pnd_tuning.`name`(dul, lean); the list gets a 1 for every call."""
    calls: list[int] = []
    real = getattr(pnd_tuning, name)
    monkeypatch.setattr(pnd_tuning, name, lambda dul, lean: (calls.append(1), real(dul, lean))[1])
    return calls


def _stored_bytes(data: Path, sop_uid: str) -> bytes:
    """The file the index names for `sop_uid` (AssertionError when it is not indexed)."""
    conn = db.connect(data)
    try:
        row = conn.execute("SELECT path FROM instances WHERE sop_uid=?", (sop_uid,)).fetchone()
    finally:
        conn.close()
    assert row is not None, f"{sop_uid} is not indexed"
    return Path(row[0]).read_bytes()


def _fields(pdu: bytes) -> dict[int, bytes]:
    """A response's command elements, without the group length and the SOP Instance UID (each run
    sends other objects)."""
    fields = pnd_tuning.parse_command(pdu[12:])
    return {tag: value for tag, value in fields.items() if tag not in (0x0000, 0x1000)}


def test_the_peer_hears_the_same_bytes_with_and_without_the_lean_path(server: DicomServer, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    served = _counted(monkeypatch, "_lean_serve")
    heard = {}
    for lean in (False, True):
        monkeypatch.setattr(pnd_tuning, "_LEAN", lean)
        sop_uids: list[str] = []
        heard[lean] = _conversation(server.port, tmp_path / f"lean{lean}", sop_uids)  # type: ignore[attr-defined]
        conn = db.connect(server.data_dir)
        try:
            for sop_uid in sop_uids:
                row = conn.execute("SELECT path FROM instances WHERE sop_uid=?", (sop_uid,)).fetchone()
                assert row is not None and dcmread(row[0]).SOPInstanceUID == sop_uid
        finally:
            conn.close()
    assert served == [1, 1, 1, 1]  # the four stores with the lean path on; the echo went to the library
    # each run sends other objects (other SOP Instance UIDs): the rest of every response is the same
    assert len(heard[False]) == len(heard[True]) == 5
    for off, on in zip(heard[False], heard[True], strict=True):
        assert off[:2] == on[:2] and off[10:12] == on[10:12] and _fields(off) == _fields(on)
    statuses = [pnd_tuning.parse_command(pdu[12:])[0x0900] for pdu in heard[True]]
    assert statuses == [b"\0\0"] * 4 + [struct.pack("<H", 0xA900)]
    assert b"differs from the request" in heard[True][4]


def test_a_failure_status_is_the_librarys_response_byte_for_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that may not store hears Refused: Not Authorised with the same error comment."""
    monkeypatch.setenv("BURNSTATION_FASTPATH", "1")
    ds, raw = _data_set(tmp_path, "refused")
    heard = {}
    with dicom_server(tmp_path / "data", "dicom.store_from_any=false") as srv:
        for lean in (False, True):
            monkeypatch.setattr(pnd_tuning, "_LEAN", lean)
            peer = _Peer(srv.port)  # type: ignore[attr-defined]
            try:
                peer.send(_pdata((peer.ct, 3, pnd_tuning.store_rq_command(3, CT, ds.SOPInstanceUID))),
                          _pdata((peer.ct, 2, raw)))
                heard[lean] = peer.responses(1)
            finally:
                peer.close()
    assert heard[True] == heard[False]
    assert pnd_tuning.parse_command(heard[True][0][12:])[0x0900] == struct.pack("<H", 0x0124)


def test_a_request_broken_off_by_a_command_goes_to_the_library_with_what_arrived(server: DicomServer, tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A stray command fragment in the middle of a data set: 3f hands the request to the library as
    3a would have built it, and the object is stored the same as by the library alone."""
    handed = _counted(monkeypatch, "_lean_to_library")
    stored = {}
    for lean in (False, True):
        monkeypatch.setattr(pnd_tuning, "_LEAN", lean)
        ds, raw = _data_set(tmp_path / f"l{lean}", "broken", rows=128, cols=128)
        peer = _Peer(server.port)  # type: ignore[attr-defined]
        try:
            half = len(raw) // 2
            peer.send(_pdata((peer.ct, 3, pnd_tuning.store_rq_command(5, CT, ds.SOPInstanceUID))),
                      _pdata((peer.ct, 0, raw[:half])), _pdata((peer.ct, 0, raw[half:]), (peer.ct, 1, b"stray")),
                      _pdata((peer.ct, 2, b"")))
            peer.responses(1)
        finally:
            peer.close()
        stored[lean] = _stored_bytes(server.data_dir, ds.SOPInstanceUID)[-len(raw):] == raw
    assert stored == {False: True, True: True}
    assert handed == [1]


def test_the_association_hears_its_wake_up_while_the_peer_is_silent(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The reactor reads the peer's next PDU header without waiting: a C-ECHO (whose response the
    association thread hands to the DUL) is answered at once, not after the network time-out."""
    monkeypatch.setenv("BURNSTATION_FASTPATH", "1")
    data = tmp_path / "data"
    with dicom_server(data, "dicom.store_from_any=true") as srv:
        ae = AE(ae_title="RAWSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", srv.port, ae_title="BURNSTATION")  # type: ignore[attr-defined]
        try:
            assert assoc.is_established
            started = time.monotonic()
            status = assoc.send_c_echo()
            assert status.Status == 0 and time.monotonic() - started < 5
        finally:
            assoc.release()


@pytest.mark.parametrize("streamed", [False, True])
def test_a_pdu_the_library_reads_mid_request_continues_that_request(server: DicomServer, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    streamed: bool) -> None:
    """3f leaves a PDU to the library when it cannot see its whole header yet (a sender held back by
    a full receive window cuts the stream anywhere) or when it arrives just after 3f found nothing:
    the library then reads a data fragment of the request 3f holds, which must go on that request
    (in order), not start a message of its own."""
    monkeypatch.setattr(pnd_tuning, "_STREAM", streamed)  # fragments to the file, or kept in memory
    monkeypatch.setattr(pnd_tuning, "_MORE_PDUS", 0)  # one PDU per pass of the reactor loop
    left: list[int] = []
    real_pass = pnd_tuning._fast_pdata

    def leave_one(dul: Any) -> bool:
        lean = dul._bs_lean
        if not left and lean is not None and (lean.chunks or lean.sink is not None):
            peeked = dul._bs_peeker[1].recv(6, socket.MSG_PEEK | socket.MSG_DONTWAIT) if dul._bs_peeker else b""
            if len(peeked) == 6:  # the next PDU is there: the library reads it
                left.append(1)
                return False
        return real_pass(dul)

    monkeypatch.setattr(pnd_tuning, "_fast_pdata", leave_one)
    ds, raw = _data_set(tmp_path, "window", rows=128, cols=128)
    peer = _Peer(server.port)  # type: ignore[attr-defined]
    try:
        third = len(raw) // 3
        peer.send(_pdata((peer.ct, 3, pnd_tuning.store_rq_command(12, CT, ds.SOPInstanceUID))),
                  _pdata((peer.ct, 0, raw[:third])), _pdata((peer.ct, 0, raw[third:2 * third])),
                  _pdata((peer.ct, 2, raw[2 * third:])))
        (response,) = peer.responses(1)
    finally:
        peer.close()
    assert left == [1]
    assert pnd_tuning.parse_command(response[12:])[0x0900] == b"\0\0"
    assert _stored_bytes(server.data_dir, ds.SOPInstanceUID)[-len(raw):] == raw


@pytest.fixture
def slow_echo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A server whose C-ECHO handler holds the association thread until `.go` is set (`.entered`
    says it is inside): a C-STORE completed meanwhile is queued behind it, as the library queues it."""
    from appliance.dicom import context

    monkeypatch.setenv("BURNSTATION_FASTPATH", "1")
    entered, go = threading.Event(), threading.Event()
    real_echo = context.AssociationLog.on_echo

    def held_echo(self: Any, event: Any) -> int:
        entered.set()
        go.wait(30)
        return real_echo(self, event)

    monkeypatch.setattr(context.AssociationLog, "on_echo", held_echo)
    with dicom_server(tmp_path / "data", "dicom.store_from_any=true") as srv:
        srv.entered, srv.go = entered, go  # type: ignore[attr-defined]
        try:
            yield srv
        finally:
            go.set()


def _temps(data: Path) -> list[Path]:
    return [path for path in (data / "storage").iterdir() if path.name.endswith(".tmp")]


@pytest.mark.parametrize("ending", ["abort", "release"])
def test_a_queued_request_of_an_association_that_ends_leaves_no_temp_file(slow_echo: Any, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         ending: str) -> None:
    """A C-STORE whose data set was streamed to a temp file and that waits behind a request the
    association thread is serving, when the peer then aborts (or releases without waiting for the
    response): the request is never served, and its temp file must go with the association, not
    when the garbage collector reaches the association's objects (it is kept off here)."""
    queued: list[int] = []
    duls: list[Any] = []
    real_serve = pnd_tuning._lean_serve

    def serve(dul: Any, lean: Any) -> None:
        real_serve(dul, lean)
        duls.append(dul)
        queued.append(len(dul.assoc.dimse.msg_queue.queue))

    monkeypatch.setattr(pnd_tuning, "_lean_serve", serve)
    ds, raw = _data_set(tmp_path, "queued", rows=128, cols=128)
    gc.disable()
    try:
        peer = _Peer(slow_echo.port)
        half = len(raw) // 2
        peer.send(_pdata((peer.echo, 3, _echo_command(1))))
        assert slow_echo.entered.wait(10)
        peer.send(_pdata((peer.ct, 3, pnd_tuning.store_rq_command(2, CT, ds.SOPInstanceUID))),
                  _pdata((peer.ct, 0, raw[:half])), _pdata((peer.ct, 2, raw[half:])))
        wait_for(lambda: queued, 10, "the request completed")
        assert queued == [1] and len(_temps(slow_echo.data_dir)) == 1  # queued, its data set in the temp file
        if ending == "abort":
            peer.assoc.abort()
        else:
            peer.assoc.dul.socket.send(bytes.fromhex("0500000000040000 0000"))  # A-RELEASE-RQ
        # the station reads it before the association thread goes on
        wait_for(lambda: duls[0].state_machine.current_state == ("Sta1" if ending == "abort" else "Sta8"), 10,
                 f"the {ending} read")
        slow_echo.go.set()
        wait_for(lambda: not _temps(slow_echo.data_dir), 10, "the temp file removed", every=0.02)
        if ending == "release":
            peer.assoc.abort()
    finally:
        gc.enable()
    conn = db.connect(slow_echo.data_dir)
    try:
        assert conn.execute("SELECT 1 FROM instances WHERE sop_uid=?", (ds.SOPInstanceUID,)).fetchone() is None
    finally:
        conn.close()


def test_a_pdu_arriving_just_after_3f_found_nothing_is_still_read_by_3f(server: DicomServer, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """3f looked for the next PDU of a request and found nothing; the PDU arrives right then. The
    library must not read it in the same pass (it did: the request then went on in the library,
    stored correctly but without 3f, and without splice for a large data set; a clean-clone CI run
    spliced nothing that way)."""
    handed = _counted(monkeypatch, "_lean_to_library")
    ds, raw = _data_set(tmp_path, "race", rows=128, cols=128)
    peer = _Peer(server.port)  # type: ignore[attr-defined]
    half = len(raw) // 2
    rest = [_pdata((peer.ct, 2, raw[half:]))]
    real_pass = pnd_tuning._fast_pdata

    def late_arrival(dul: Any) -> bool | None:
        read = real_pass(dul)
        if not read and dul._bs_lean is not None and rest:  # nothing there: now it comes
            peer.send(rest.pop())
            select.select([dul.socket.socket], [], [], 10)
        return read

    monkeypatch.setattr(pnd_tuning, "_fast_pdata", late_arrival)
    try:
        peer.send(_pdata((peer.ct, 3, pnd_tuning.store_rq_command(13, CT, ds.SOPInstanceUID))),
                  _pdata((peer.ct, 0, raw[:half])))
        (response,) = peer.responses(1)
    finally:
        peer.close()
    assert not rest  # the race was run
    assert pnd_tuning.parse_command(response[12:])[0x0900] == b"\0\0"
    assert handed == []  # 3f kept the request
    assert _stored_bytes(server.data_dir, ds.SOPInstanceUID)[-len(raw):] == raw
