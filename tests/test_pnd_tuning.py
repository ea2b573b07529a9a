"""appliance.dicom.pnd_tuning: the pynetdicom internals it relies on, and same bytes/behaviour as the library.

- A pynetdicom release that changes any function the module replaces or copies fails here
  (source hashes), as does a missing attribute or method it uses.
- The C-STORE-RSP fast path produces byte-identical command sets and P-DATA to the library's.
- The event-driven reactors give the same association behaviour as the polling ones: the same
  event sequence for stores + release, a peer abort, a dropped connection and a network time-out,
  against real peers (dcmtk storescu/echoscu and a pynetdicom SCU).
"""

from __future__ import annotations

import inspect
import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pynetdicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket
from support import dcmtk, free_port, make_dataset

from appliance.dicom import pnd_tuning

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture(autouse=True)
def restore_patches():
    pnd_tuning.uninstall()
    yield
    pnd_tuning.uninstall()
    pnd_tuning.set_protocol_logging(True)


# --------------------------------------------------------------------------- internals


def test_pinned_version_and_sources():
    assert pynetdicom.__version__.startswith("3.0."), "pnd_tuning is written against pynetdicom 3.0"
    originals = pnd_tuning.original_functions()
    assert set(originals) == set(pnd_tuning.REPLACED_SOURCES)
    changed = [name for name, func in originals.items()
               if pnd_tuning.source_hash(func) != pnd_tuning.REPLACED_SOURCES[name]]
    assert not changed, f"pynetdicom changed {changed}: review appliance/dicom/pnd_tuning.py, then re-pin"


def test_reviewed_library_needs_no_fallback():
    assert pnd_tuning.changed_sources() == {}
    assert pnd_tuning.check_library() == {}
    assert set(pnd_tuning.REPLACED_SOURCES) == {n for names in pnd_tuning.PATCH_SOURCES.values() for n in names}


def test_install_falls_back_to_the_library_where_its_code_changed(monkeypatch, caplog, tmp_path):
    """A speed-only patch over library code that is not the reviewed source is left out (logged);
    the others still apply, and the station still receives on the library's own paths."""
    monkeypatch.setitem(pnd_tuning.REPLACED_SOURCES, "AssociationSocket.recv", "0" * 64)
    monkeypatch.setitem(pnd_tuning.REPLACED_SOURCES, "DULServiceProvider.stop_dul", "0" * 64)
    with caplog.at_level(logging.WARNING, logger="burnstation.dicom"):
        pnd_tuning.install()
    originals = pnd_tuning.original_functions()
    assert AssociationSocket.recv is originals["AssociationSocket.recv"]
    for name in pnd_tuning.PATCH_SOURCES["reactors"]:  # one changed function: the whole patch goes
        cls, attr = name.split(".")
        assert getattr({"Association": Association, "DULServiceProvider": DULServiceProvider}[cls], attr) \
            is originals[name], name
    assert not pnd_tuning._INLINE_STORE  # 2b stands on the reactors' queues
    assert DIMSEServiceProvider.send_msg is pnd_tuning._dimse_send_msg  # unchanged code keeps its speed-up
    assert ACSE._negotiate_as_acceptor is pnd_tuning._negotiate_as_acceptor
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("AssociationSocket.recv" in w and "'recv' speed-up is left out" in w for w in warnings), warnings
    assert any("DULServiceProvider.stop_dul" in w and "'reactors'" in w for w in warnings), warnings
    events, _ = scenario_store_release(tmp_path)
    assert events[-1] == "served by association"  # the library's reactor served the C-STOREs
    assert events[0] == "accepted" and events.count("released") == 1


def test_install_refuses_when_the_called_aet_negotiation_changed(monkeypatch):
    """The called-AE-title patch carries behaviour: over changed library code nothing is applied."""
    monkeypatch.setitem(pnd_tuning.REPLACED_SOURCES, "ACSE._negotiate_as_acceptor", "0" * 64)
    with pytest.raises(pnd_tuning.LibraryChanged, match=r"ACSE\._negotiate_as_acceptor changed.*_TE.*3\.0\.4"):
        pnd_tuning.install()
    originals = pnd_tuning.original_functions()
    assert ACSE._negotiate_as_acceptor is originals["ACSE._negotiate_as_acceptor"]
    assert Association.__init__ is originals["Association.__init__"]
    with pytest.raises(pnd_tuning.LibraryChanged):  # and again: a refusal is not remembered as installed
        pnd_tuning.install()


def test_burnstation_run_refuses_before_starting_anything(monkeypatch, tmp_path, capsys):
    from appliance import cli
    from appliance.services import station

    data = tmp_path / "data"
    assert cli.main(["--data", str(data), "init"]) == 0
    monkeypatch.setitem(pnd_tuning.REPLACED_SOURCES, "ACSE._negotiate_as_acceptor", "0" * 64)
    started = []
    monkeypatch.setattr(station, "run", lambda *a, **k: started.append(a) or 0)  # would run the supervisor
    capsys.readouterr()
    assert cli.main(["--data", str(data), "run"]) == 1
    err = capsys.readouterr().err
    assert "refusing to start" in err and "pynetdicom==3.0.4" in err and "called-AE-title" in err
    assert started == [] and not (data / "run").exists()


def test_internals_present():
    assert pnd_tuning.internals_present() == []


def test_instance_attributes_the_patches_use():
    ae = AE()
    assoc = Association(ae, "acceptor")
    dul = assoc.dul
    for name in ("event_queue", "to_provider_queue", "to_user_queue", "_recv_pdu", "socket", "artim_timer",
                 "_idle_timer", "state_machine", "_run_loop_delay", "_kill_thread"):
        assert hasattr(dul, name), f"DULServiceProvider.{name}"
    for name in ("_dul_ready", "_reactor_checkpoint", "_is_paused", "_kill", "network_timeout_response",
                 "dimse", "acse", "is_established"):
        assert hasattr(assoc, name), f"Association.{name}"
    assert hasattr(assoc.dimse, "msg_queue") and hasattr(assoc.dimse, "maximum_pdu_size")
    assert hasattr(assoc.dul.state_machine, "current_state")
    # the queues are replaced by waking ones only when installed
    assert not isinstance(dul.event_queue, pnd_tuning._WakeQueue)
    pnd_tuning.install()
    patched = Association(ae, "acceptor")
    for q in (patched.dul.event_queue, patched.dul.to_provider_queue, patched.dul.to_user_queue,
              patched.dimse.msg_queue):
        assert isinstance(q, pnd_tuning._WakeQueue)


def test_fast_path_switch(monkeypatch):
    monkeypatch.setenv("BURNSTATION_FASTPATH", "0")
    pnd_tuning.install()
    assert Association.__init__ is pnd_tuning.original_functions()["Association.__init__"]
    assert Association._run_reactor is pnd_tuning.original_functions()["Association._run_reactor"]
    from pynetdicom.acse import ACSE

    assert ACSE._negotiate_as_acceptor is pnd_tuning._negotiate_as_acceptor  # functional patch stays


# --------------------------------------------------------------------------- C-STORE-RSP bytes


def store_rsp(msg_id: int, status: int, *, cls: str | None = CT, inst: str | None = "1.2.3.4",
              comment: str | None = None, offending: list[int] | None = None) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageID = msg_id
    rsp.MessageIDBeingRespondedTo = msg_id
    rsp.AffectedSOPClassUID = cls
    rsp.AffectedSOPInstanceUID = inst
    rsp.Status = status
    if comment is not None:
        rsp.ErrorComment = comment
    if offending is not None:
        rsp.OffendingElement = offending
    return rsp


def library_pdvs(rsp: C_STORE, context_id: int, max_pdu: int) -> list[bytes]:
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    return [pdv for pdata in msg.encode_msg(context_id, max_pdu) for _cx, pdv in pdata.presentation_data_value_list]


RSP_CASES = [
    dict(msg_id=1, status=0x0000),
    dict(msg_id=65535, status=0x0000, inst="1.2.3.45"),
    dict(msg_id=7, status=0xA700, comment="disk space below threshold"),
    dict(msg_id=8, status=0xC210, comment="odd"),
    dict(msg_id=9, status=0xA900, comment="SOP Instance UID missing or differs from the request"),
    dict(msg_id=10, status=0xB000, comment=""),
    dict(msg_id=11, status=0x0000, cls=None),
    dict(msg_id=12, status=0x0000, inst=None),
    # a generated UID written out: every xdist worker must collect the same test ids
    dict(msg_id=13, status=0x0124, cls="1.2.840.10008.5.1.4.1.1.4",
         inst="1.2.826.0.1.3680043.8.498.89880309114946825114234130497144013816"),
    dict(msg_id=14, status=0x0000, inst="1.2.826.0.1.3680043.8.498." + "1" * 38),
]


@pytest.mark.parametrize("case", RSP_CASES, ids=[str(c) for c in RSP_CASES])
def test_store_rsp_bytes_identical(case: dict):
    rsp = store_rsp(**case)
    fast = pnd_tuning.encode_store_rsp(rsp)
    assert fast is not None
    assert library_pdvs(rsp, 5, 16384) == [b"\x03" + fast]


def test_store_rsp_not_covered_falls_back():
    assert pnd_tuning.encode_store_rsp(store_rsp(1, 0xC000, offending=[0x00100010])) is None
    assert pnd_tuning.encode_store_rsp(store_rsp(1, 0xC000, comment="Müller")) is None
    request = C_STORE()
    request.MessageID = 3
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = "1.2.3"
    assert pnd_tuning.encode_store_rsp(request) is None


def sent_by_send_msg(rsp: C_STORE, max_pdu: int) -> list[list[tuple[int, bytes]]]:
    assoc = Association(AE(), "acceptor")
    assoc.requestor.maximum_length = max_pdu
    sent: list = []
    assoc.dul.send_pdu = lambda primitive: sent.append(primitive.presentation_data_value_list)  # type: ignore
    assoc.dimse.send_msg(rsp, 3)
    return sent


@pytest.mark.parametrize("max_pdu", [0, 16384, 64])
@pytest.mark.parametrize("case", [RSP_CASES[0], RSP_CASES[2], dict(msg_id=5, status=0xC000, offending=[0x00100010]),
                                  dict(msg_id=6, status=0xC000, comment="Müller")],
                         ids=["success", "a700", "offending", "non-ascii"])
def test_send_msg_patched_equals_library(case: dict, max_pdu: int):
    pnd_tuning.set_protocol_logging(False)
    expected = sent_by_send_msg(store_rsp(**case), max_pdu)
    pnd_tuning.install()
    assert sent_by_send_msg(store_rsp(**case), max_pdu) == expected


def test_protocol_logging_switch():
    pnd_tuning.set_protocol_logging(False)
    assert not Association(AE(), "acceptor").get_handlers(evt.EVT_DIMSE_SENT)
    pnd_tuning.set_protocol_logging(True)
    assert Association(AE(), "acceptor").get_handlers(evt.EVT_DIMSE_SENT)


# --------------------------------------------------------------------------- reactor behaviour


class Recorder:
    """A pynetdicom SCP in this process that records its association events in order."""

    def __init__(self, network_timeout: float = 30) -> None:
        self.events: list[str] = []
        self.assoc: Association | None = None
        self.threads: set[str] = set()
        self.echo_threads: set[str] = set()
        self.lock = threading.Lock()
        self.done = threading.Event()
        ae = AE(ae_title="RECORDER")
        ae.network_timeout = network_timeout
        ae.add_supported_context(CT, [EXPLICIT])
        ae.add_supported_context("1.2.840.10008.1.1", [EXPLICIT, "1.2.840.10008.1.2"])
        self.port = free_port()
        handlers = [(evt.EVT_ACCEPTED, self._note("accepted")), (evt.EVT_RELEASED, self._note("released")),
                    (evt.EVT_ABORTED, self._note("aborted")), (evt.EVT_CONN_CLOSE, self._closed),
                    (evt.EVT_C_STORE, self._store), (evt.EVT_C_ECHO, self._echo)]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _note(self, name: str):
        def handler(event):
            with self.lock:
                self.events.append(name)
                self.assoc = event.assoc
        return handler

    def _closed(self, event) -> None:
        with self.lock:
            self.events.append("closed")
            self.assoc = event.assoc
        self.done.set()

    def _store(self, event) -> int:
        with self.lock:
            self.events.append(f"store:{event.request.AffectedSOPInstanceUID}")
            self.threads.add("association" if threading.current_thread() is event.assoc else "other")
        return 0x0000

    def _echo(self, event) -> int:
        with self.lock:
            self.events.append("echo")
            self.echo_threads.add("association" if threading.current_thread() is event.assoc else "other")
        return 0x0000

    def wait_closed(self, timeout: float = 20) -> list[str]:
        """The events once the connection closed and the association's thread has ended."""
        assert self.done.wait(timeout), f"connection not closed; events so far: {self.events}"
        self.assoc.join(timeout)
        assert not self.assoc.is_alive()
        return list(self.events)

    def stop(self) -> None:
        self.server.shutdown()


def scenario_store_release(tmp_path: Path) -> tuple[list[str], float]:
    rec = Recorder()
    try:
        files = []
        for i in range(20):
            ds = make_dataset(sop_uid=f"1.2.826.0.1.3680043.10.1457.5.{i + 1}", instance_number=i + 1, rows=8, cols=8)
            path = tmp_path / f"{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(str(path))
        start = time.perf_counter()
        result = dcmtk("storescu", "-aec", "RECORDER", "127.0.0.1", str(rec.port), *files)
        elapsed = time.perf_counter() - start
        assert result.returncode == 0, result.stderr
        events = rec.wait_closed()
        events.append("served by " + ",".join(sorted(rec.threads)))
        return events, elapsed
    finally:
        rec.stop()


def scenario_peer_abort() -> list[str]:
    rec = Recorder()
    try:
        ae = AE(ae_title="SCU")
        ae.add_requested_context("1.2.840.10008.1.1", EXPLICIT)
        assoc = ae.associate("127.0.0.1", rec.port, ae_title="RECORDER")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.abort()
        events = rec.wait_closed()
        assert rec.echo_threads == {"association"}  # services other than C-STORE stay where they were
        return events
    finally:
        rec.stop()


def scenario_connection_dropped() -> list[str]:
    """A peer that associates, echoes, then closes its socket without release or abort."""
    rec = Recorder()
    try:
        ae = AE(ae_title="SCU")
        ae.add_requested_context("1.2.840.10008.1.1", EXPLICIT)
        assoc = ae.associate("127.0.0.1", rec.port, ae_title="RECORDER")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        sock = assoc.dul.socket.socket
        sock.shutdown(socket.SHUT_RDWR)
        events = rec.wait_closed()
        assoc.kill()
        return events
    finally:
        rec.stop()


def scenario_network_timeout() -> tuple[list[str], float]:
    """A peer that associates and then says nothing: the SCP's network time-out ends it."""
    rec = Recorder(network_timeout=0.5)
    try:
        ae = AE(ae_title="SCU")
        ae.add_requested_context("1.2.840.10008.1.1", EXPLICIT)
        assoc = ae.associate("127.0.0.1", rec.port, ae_title="RECORDER")
        assert assoc.is_established
        start = time.perf_counter()
        events = rec.wait_closed()
        elapsed = time.perf_counter() - start
        assoc.kill()
        return events, elapsed
    finally:
        rec.stop()


def test_reactors_behave_like_the_library(tmp_path: Path):
    plain_store, plain_time = scenario_store_release(tmp_path)
    plain_abort = scenario_peer_abort()
    plain_drop = scenario_connection_dropped()
    plain_timeout, _ = scenario_network_timeout()

    pnd_tuning.install()
    fast_store, fast_time = scenario_store_release(tmp_path)
    fast_abort = scenario_peer_abort()
    fast_drop = scenario_connection_dropped()
    fast_timeout, timeout_after = scenario_network_timeout()

    uids = [f"store:1.2.826.0.1.3680043.10.1457.5.{i + 1}" for i in range(20)]
    # the library races its two threads at the end of an association (released/aborted vs the
    # DUL's connection close), so its order is compared as a multiset; the patched reactor fires
    # EVT_RELEASED before the release response goes out, so its order is exact
    assert plain_store[-1] == "served by association"
    # C-STORE served in the DUL thread (2b); one that arrives before the association thread reached
    # its checkpoint (a loaded machine) is served there instead, as the library would
    assert "other" in fast_store[-1].removeprefix("served by ").split(",")
    fast_store, plain_store = fast_store[:-1], plain_store[:-1]
    assert fast_store == ["accepted", *uids, "released", "closed"]
    assert sorted(plain_store) == sorted(fast_store) and plain_store[:21] == fast_store[:21]
    assert sorted(fast_abort) == sorted(plain_abort) == sorted(["accepted", "echo", "aborted", "closed"])
    assert sorted(fast_drop) == sorted(plain_drop)
    assert sorted(fast_timeout) == sorted(plain_timeout)
    assert fast_timeout[0] == "accepted" and sorted(fast_timeout[1:]) == ["aborted", "closed"]
    assert 0.4 < timeout_after < 5, timeout_after  # the network time-out still fires, not early


# --------------------------------------------------------------------------- socket reads


class _FakeAssocSocket:
    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


def read_with(recv, chunks: list[bytes], sizes: list[int], close: bool, timeout: float | None = None):
    """Feed `chunks` (with pauses) into a socketpair and read `sizes` with `recv`."""
    a, b = socket.socketpair()
    b.settimeout(timeout)

    def feed() -> None:
        for chunk in chunks:
            a.sendall(chunk)
            time.sleep(0.002)
        if close:
            a.shutdown(socket.SHUT_WR)

    feeder = threading.Thread(target=feed)
    feeder.start()
    results: list = []
    try:
        for size in sizes:
            try:
                results.append(bytes(recv(_FakeAssocSocket(b), size)))
            except OSError as exc:
                results.append(type(exc).__name__)
    finally:
        feeder.join()
        a.close()
        b.close()
    return results


@pytest.mark.parametrize("chunks,sizes,close,timeout", [
    ([b"\x04\x00\x00\x00\x10\x00", bytes(range(16))], [6, 16], False, None),
    ([b"x" * 200_000], [6, 131_072, 50_000], True, None),               # big PDU, then short at EOF
    ([b"ab", b"cd", b"ef" * 5000], [3, 4, 20_000], True, None),          # reads across chunk boundaries
    ([b"abc"], [6, 6], True, None),                                       # EOF: partial, then empty
    ([b"abc"], [6], False, 0.2),                                          # peer silent: time-out
])
def test_socket_recv_same_as_library(chunks, sizes, close, timeout):
    original = pnd_tuning.original_functions()["AssociationSocket.recv"]
    expected = read_with(original, chunks, sizes, close, timeout)
    assert read_with(pnd_tuning._socket_recv, chunks, sizes, close, timeout) == expected
    if timeout:
        assert expected[-1] == "TimeoutError"


# --------------------------------------------------------------------------- C-STORE-RQ command sets


def store_rq_pdatas(max_pdu: int = 16384, payload: bytes = b"\x08\x00\x18\x00\x04\x00\x00\x001.2\x00", *,
                    context_id: int = 1, merge: bool = False, **fields) -> list:
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.pdu_primitives import P_DATA

    req = C_STORE()
    req.MessageID = fields.get("msg_id", 7)
    req.AffectedSOPClassUID = fields.get("cls", CT)
    req.AffectedSOPInstanceUID = fields.get("inst", "1.2.826.0.1.3680043.10.1457.7")
    req.Priority = fields.get("priority", 2)
    if "move_aet" in fields:
        req.MoveOriginatorApplicationEntityTitle = fields["move_aet"]
        req.MoveOriginatorMessageID = fields.get("move_id", 3)
    import io

    req.DataSet = io.BytesIO(payload)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    pdatas = list(msg.encode_msg(context_id, max_pdu))
    if merge and len(pdatas) > 1:
        both = P_DATA()
        both.presentation_data_value_list.extend(pdatas[0].presentation_data_value_list
                                                 + pdatas[1].presentation_data_value_list)
        pdatas = [both, *pdatas[2:]]
    return pdatas


def raw_pdata(context_id: int, *pdvs: bytes):
    from pynetdicom.pdu_primitives import P_DATA

    p = P_DATA()
    p.presentation_data_value_list = [[context_id, pdv] for pdv in pdvs]
    return p


def receive_all(pdatas: list) -> tuple[list, list]:
    assoc = Association(AE(), "acceptor")
    keys = ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
            "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID", "MessageIDBeingRespondedTo")
    errors = []
    for p in pdatas:
        try:
            assoc.dimse.receive_primitive(p)
        except Exception as exc:
            errors.append(type(exc).__name__)
    out = []
    while not assoc.dimse.msg_queue.empty():
        cx, prim = assoc.dimse.msg_queue.get()
        data = getattr(prim, "DataSet", None)
        out.append((cx, type(prim).__name__, {k: getattr(prim, k, None) for k in keys},
                    data.getvalue() if data is not None else None, prim._context_id,
                    getattr(prim, "_dataset_path", None)))
    return out, [*assoc.dul.event_queue.queue, *errors]


def _odd_command(elements: list[tuple[int, bytes]]) -> bytes:
    import struct

    body = b"".join(struct.pack("<HHI", 0, e, len(v)) + v for e, v in elements)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


ODD_COMMANDS = {
    "unknown-command-field": _odd_command([(0x0002, CT.encode() + b"\0"), (0x0100, b"\x99\x00"),
                                           (0x0110, b"\x01\x00"), (0x0800, b"\x00\x00"), (0x1000, b"1.2\0")]),
    "extra-element": _odd_command([(0x0002, CT.encode() + b"\0"), (0x0100, b"\x01\x00"), (0x0110, b"\x01\x00"),
                                   (0x0700, b"\x00\x00"), (0x0800, b"\x00\x00"), (0x0900, b"\x00\x00"),
                                   (0x1000, b"1.2\0")]),
    "multi-valued-uid": _odd_command([(0x0002, CT.encode() + b"\\1.2\0"), (0x0100, b"\x01\x00"), (0x0110, b"\x01\x00"),
                                      (0x0700, b"\x00\x00"), (0x0800, b"\x00\x00"), (0x1000, b"1.2\0")]),
    "no-data-set": _odd_command([(0x0002, CT.encode() + b"\0"), (0x0100, b"\x01\x00"), (0x0110, b"\x01\x00"),
                                 (0x0700, b"\x00\x00"), (0x0800, b"\x01\x01"), (0x1000, b"1.2\0")]),
    "short-us": _odd_command([(0x0002, CT.encode() + b"\0"), (0x0100, b"\x01\x00"), (0x0110, b"\x01"),
                              (0x0700, b"\x00\x00"), (0x0800, b"\x00\x00"), (0x1000, b"1.2\0")]),
    "truncated": _odd_command([(0x0002, CT.encode() + b"\0"), (0x0100, b"\x01\x00")])[:-3],
    "padded-uids-and-aet": _odd_command([(0x0002, CT.encode() + b"\0"), (0x0100, b"\x01\x00"), (0x0110, b"\x05\x00"),
                                         (0x0700, b"\x01\x00"), (0x0800, b"\x00\x00"), (0x1000, b"1.2.3 "),
                                         (0x1030, b" MOVER  "), (0x1031, b"\x09\x00")]),
}


@pytest.mark.parametrize("name", ["plain", "big", "split-command", "merged", "move", "odd-uid", "echo",
                                  *ODD_COMMANDS])
def test_store_rq_decoding_same_as_library(name: str):
    if name == "plain":
        pdatas = store_rq_pdatas()
    elif name == "big":
        pdatas = store_rq_pdatas(16384, bytes(range(256)) * 200, context_id=3)
    elif name == "split-command":
        pdatas = store_rq_pdatas(40)
    elif name == "merged":
        pdatas = store_rq_pdatas(16384, b"x" * 100, merge=True)
    elif name == "move":
        pdatas = store_rq_pdatas(move_aet="MOVESCU", move_id=12)
    elif name == "odd-uid":
        pdatas = store_rq_pdatas(inst="1.2.826.0.1.3680043.10.1457.77", cls="1.2.840.10008.5.1.4.1.1.7")
    elif name == "echo":
        from pynetdicom.dimse_messages import C_ECHO_RQ
        from pynetdicom.dimse_primitives import C_ECHO

        echo = C_ECHO()
        echo.MessageID = 1
        echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
        msg = C_ECHO_RQ()
        msg.primitive_to_message(echo)
        pdatas = list(msg.encode_msg(1, 16384))
    else:
        pdatas = [raw_pdata(1, b"\x03" + ODD_COMMANDS[name]), raw_pdata(1, b"\x02" + b"\x00" * 8)]
    expected = receive_all(pdatas)
    pnd_tuning.set_protocol_logging(False)
    pnd_tuning.install()
    assert receive_all(pdatas) == expected
    if name in ("plain", "big", "merged", "move"):
        assert expected[0] and expected[0][0][1] == "C_STORE"
    first_pdv = pdatas[0].presentation_data_value_list[0][1]
    taken = first_pdv[0] & 3 == 3 and pnd_tuning._decode_store_rq(first_pdv[1:]) is not None
    assert taken == (name in ("plain", "big", "merged", "move", "odd-uid", "padded-uids-and-aet")), name


def test_release_check_reads_the_same_sources_without_importing_the_library():
    """`burnstation run` checks from the files (cheap, before any process starts); they are the
    very sources `inspect` gives for the loaded functions."""
    from appliance import pnd_release

    from_files = pnd_release.library_sources()
    loaded = pnd_tuning.original_functions()
    assert set(from_files) == set(loaded)
    for name, func in loaded.items():
        assert from_files[name] == inspect.getsource(func), name
    script = "import sys; from appliance import pnd_release; pnd_release.check_library(); print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert "'pynetdicom'" not in out.stdout and "'pydicom'" not in out.stdout


def test_release_check_skips_parsing_only_while_the_files_are_the_reviewed_ones(monkeypatch):
    """The whole-file shortcut (no `ast` in the three processes that check at start) gives what parsing
    gives, and a file whose hash differs is parsed again."""
    from appliance import pnd_release

    assert pnd_release.reviewed_files()
    assert pnd_release.function_digests() == pnd_release.function_digests(parse=True)
    parsed = []
    real = pnd_release.library_sources
    monkeypatch.setattr(pnd_release, "library_sources", lambda: parsed.append(1) or real())
    pnd_release.check_library()
    assert not parsed
    reviewed_dul = pnd_release.REVIEWED_FILES["dul"]
    monkeypatch.setitem(pnd_release.REVIEWED_FILES, "dul", "0" * 64)
    assert not pnd_release.reviewed_files()
    assert pnd_release.check_library() == {} and parsed == [1]
    monkeypatch.setitem(pnd_release.REVIEWED_FILES, "dul", reviewed_dul)
    assert pnd_release.reviewed_files()
    monkeypatch.delitem(pnd_release.REVIEWED_FILES, "transport")  # a pinned function whose file is not pinned
    assert not pnd_release.reviewed_files()
