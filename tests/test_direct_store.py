"""pnd_tuning 3c: C-STORE requests written and answered by the sending thread (the transfer process).

Why: it stands in for pynetdicom's send_c_store on the station's sends, so it must put the same
command set on the wire, frame P-DATA within the peer's maximum PDU length, deliver the stored
data set bytes unchanged, report the peer's status and comment, and end cleanly (no hang, the
association aborted) when the peer aborts or never answers. The peer here is a pynetdicom SCP
with a small maximum PDU, so every large object is cut in many fragments.
"""

from __future__ import annotations

import struct
import threading
import time
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from support import free_port, make_dataset

from appliance.config import Node, Settings
from appliance.dicom import pnd_tuning, scu
from appliance.dicom.handlers.retrieve import contexts_for

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(autouse=True)
def patches():
    pnd_tuning.uninstall()
    pnd_tuning.install()
    pnd_tuning.set_protocol_logging(False)
    yield
    pnd_tuning.uninstall()
    pnd_tuning.set_protocol_logging(True)


def test_command_set_is_the_librarys() -> None:
    for msg_id, uid in ((1, "1.2.3.4"), (65535, "1.2.826.0.1.3680043.8.498.12345678901234567890")):
        req = C_STORE()
        req.MessageID = msg_id
        req.AffectedSOPClassUID = CT
        req.AffectedSOPInstanceUID = uid
        req.Priority = 2
        req._dataset_path = (Path("x.dcm"), 0)  # as send_c_store(path) does: Command Data Set Type 0x0001
        msg = C_STORE_RQ()
        msg.primitive_to_message(req)
        assert pnd_tuning.store_rq_command(msg_id, CT, uid) == encode(msg.command_set, True, True)


def split_pdus(wire: bytes) -> list[list[tuple[int, int, bytes]]]:
    pdus, pos = [], 0
    while pos < len(wire):
        kind, _, length = struct.unpack_from(">BBI", wire, pos)
        assert kind == 0x04
        body, pvs, p = wire[pos + 6:pos + 6 + length], [], 0
        while p < len(body):
            (item_len,) = struct.unpack_from(">I", body, p)
            pvs.append((body[p + 4], body[p + 5], body[p + 6:p + 4 + item_len]))
            p += 4 + item_len
        pdus.append(pvs)
        pos += 6 + length
    return pdus


@pytest.mark.parametrize("size", [1, 100, 4096 - 12 - 100, 4096 - 12 - 99, 50_000])
def test_pdus_fit_the_peers_maximum_and_carry_the_bytes(size: int) -> None:
    command = b"c" * 100
    dataset = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    wire = b"".join(bytes(p) for p in pnd_tuning.store_rq_pdus(7, command, memoryview(dataset), 4096))
    pdus = split_pdus(wire)
    for pvs in pdus:
        assert sum(6 + len(data) for _, _, data in pvs) <= 4096
    pvs = [pv for pdu in pdus for pv in pdu]
    assert pvs[0] == (7, 0x03, command)  # the whole command set first, marked last command fragment
    assert all(cx == 7 and flags in (0x00, 0x02) for cx, flags, _ in pvs[1:])
    assert [flags for _, flags, _ in pvs[1:]] == [0x00] * (len(pvs) - 2) + [0x02]
    assert b"".join(data for _, _, data in pvs[1:]) == dataset
    if size <= 4096 - 12 - 100:
        assert len(pdus) == 1  # small objects: one PDU, one write


class Peer:
    """A storage SCP with a 4 KiB maximum PDU that keeps the data set bytes it received."""

    def __init__(self, answer=None) -> None:  # noqa: ANN001 - a function of the event, or None (success)
        self.port = free_port()
        self.answer = answer
        self.received: dict[str, tuple[str, bytes]] = {}
        ae = AE(ae_title="PEER")
        ae.maximum_pdu_size = 4096
        ae.add_supported_context(CT, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event) -> object:  # noqa: ANN001
        uid = str(event.request.AffectedSOPInstanceUID)
        self.received[uid] = (str(event.context.transfer_syntax), event.request.DataSet.getvalue())
        return self.answer(event) if self.answer else 0x0000

    def close(self) -> None:
        self.server.shutdown()


def write_files(folder: Path, n: int, size: int = 64) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        ds = make_dataset(rows=size, cols=size, instance_number=i + 1)
        path = folder / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        rows.append({"path": str(path), "sop_class": str(ds.SOPClassUID), "sop_uid": str(ds.SOPInstanceUID),
                     "transfer_syntax": str(ds.file_meta.TransferSyntaxUID)})
    return rows


def send(tmp_path: Path, peer: Peer, rows: list[dict], timeout: float = 10) -> tuple[list, object]:
    settings = Settings(tmp_path / "data")
    settings.set("dicom.timeout", timeout)
    assoc = scu.associate(tmp_path / "data", settings, Node("PEER", "127.0.0.1", peer.port), contexts_for(rows))
    assert pnd_tuning.direct_store_possible(assoc)
    try:
        return [(row["sop_uid"], code, comment) for row, code, comment in scu.store_rows(assoc, rows)], assoc
    finally:
        scu.close(assoc)


def test_objects_arrive_unchanged_with_the_peers_status(tmp_path: Path, monkeypatch) -> None:
    def library_path(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the library's send_c_store was used")

    monkeypatch.setattr(Association, "send_c_store", library_path)

    def answer(event) -> object:  # noqa: ANN001
        n = int(event.dataset.InstanceNumber)
        if n == 2:
            return 0xB000
        if n == 3:
            status = Dataset()
            status.Status = 0xA700
            status.ErrorComment = "disk full"
            return status
        return 0x0000

    peer = Peer(answer)
    try:
        rows = write_files(tmp_path / "small", 4) + write_files(tmp_path / "large", 2, size=200)  # 80 KB: 20 PDUs
        results, assoc = send(tmp_path, peer, rows)
    finally:
        peer.close()
    codes = {uid: (code, comment) for uid, code, comment in results}
    assert [codes[r["sop_uid"]] for r in rows[:4]] == [(0, ""), (0xB000, ""), (0xA700, "disk full"), (0, "")]
    for row in rows:
        meta, dataset = pnd_tuning.read_stored(row["path"])
        assert peer.received[row["sop_uid"]] == (meta[0x0010], bytes(dataset))
    assert assoc.is_released  # the library released it afterwards: the DUL thread had the socket back


def test_peer_abort_ends_the_send_without_waiting(tmp_path: Path) -> None:
    def answer(event) -> int:  # noqa: ANN001
        if int(event.dataset.InstanceNumber) == 2:  # aborted before this handler answers
            aborter = threading.Thread(target=event.assoc.abort)
            aborter.start()
            aborter.join(5)  # the A-ABORT is out and the connection shut (the blocking abort)
            assert not aborter.is_alive()
        return 0x0000

    peer = Peer(answer)
    try:
        started = time.monotonic()
        results, assoc = send(tmp_path, peer, write_files(tmp_path / "f", 4))
    finally:
        peer.close()
    assert time.monotonic() - started < 8
    assert [code for _, code, _ in results] == [0, None]
    assert "aborted by the peer" in results[1][2] or "closed" in results[1][2], results
    assert not assoc.is_established


def test_peer_that_never_answers_fails_after_the_timeout(tmp_path: Path) -> None:
    release = threading.Event()

    def answer(event) -> int:  # noqa: ANN001
        release.wait(30)
        return 0x0000

    peer = Peer(answer)
    try:
        started = time.monotonic()
        results, assoc = send(tmp_path, peer, write_files(tmp_path / "f", 2), timeout=2)
        took = time.monotonic() - started
    finally:
        release.set()
        peer.close()
    assert [code for _, code, _ in results] == [None]
    assert "no answer within dicom.timeout=2s" in results[0][2]
    assert 2 <= took < 8 and not assoc.is_established


# --------------------------------------------------------------------------- 3d: C-MOVE


def test_move_command_set_is_the_librarys() -> None:
    from pynetdicom.dimse_messages import C_MOVE_RQ
    from pynetdicom.dimse_primitives import C_MOVE

    model = "1.2.840.10008.5.1.4.1.2.2.2"
    for msg_id, dest in ((1, "BURNSTATION"), (65535, "ODD"), (7, "A" * 16)):
        req = C_MOVE()
        req.MessageID = msg_id
        req.AffectedSOPClassUID = model
        req.Priority = 2
        req.MoveDestination = dest
        req.Identifier = BytesIO(b"\0")
        msg = C_MOVE_RQ()
        msg.primitive_to_message(req)
        assert pnd_tuning.move_rq_command(msg_id, model, dest) == encode(msg.command_set, True, True)


class MovePeer:
    """A C-MOVE SCP (pynetdicom) that moves `n` instances to a storage SCP of its own, or answers
    with `final` at once; it keeps the identifiers it was asked with."""

    def __init__(self, n: int, final: int = 0x0000) -> None:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

        self.port = free_port()
        self.store_port = free_port()
        self.n, self.final = n, final
        self.identifiers: list[Dataset] = []
        self.stored: list[str] = []
        ae = AE(ae_title="PEER")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove, ["1.2.840.10008.1.2",
                                                                             "1.2.840.10008.1.2.1"])
        ae.add_requested_context(CT)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_MOVE, self._move)])
        dest = AE(ae_title="DEST")
        dest.add_supported_context(CT)
        self.dest = dest.start_server(("127.0.0.1", self.store_port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event) -> int:  # noqa: ANN001
        self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def _move(self, event):  # noqa: ANN001, ANN202
        self.identifiers.append(event.identifier)
        yield "127.0.0.1", self.store_port
        yield max(self.n, 1)
        if self.final != 0x0000:
            status = Dataset()
            status.Status = self.final
            status.ErrorComment = "no such study"
            yield status, None
            return
        for i in range(self.n):
            yield 0xFF00, make_dataset(rows=4, cols=4, instance_number=i + 1)

    def close(self) -> None:
        self.server.shutdown()
        self.dest.shutdown()


def move(tmp_path: Path, peer: MovePeer) -> list[tuple[object, object]]:
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

    settings = Settings(tmp_path / "data")
    settings.set("dicom.timeout", 10)
    assoc = scu.associate(tmp_path / "data", settings, Node("PEER", "127.0.0.1", peer.port),
                          [build_context(MOVE)])
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2.3.4"
    try:
        return list(scu.move_responses(assoc, ds, "DEST", MOVE))
    finally:
        scu.close(assoc)
        assert assoc.is_released  # the DUL thread had the socket back for the release


def test_move_responses_are_the_librarys(tmp_path: Path, monkeypatch) -> None:
    """The direct C-MOVE (3d) yields what the library's send_c_move yields (pending counts, then the
    final status), and the library's path is not used when the direct one can run."""
    def counts(responses: list) -> list[tuple]:
        return [tuple(getattr(s, k, None) for k in ("Status", "NumberOfRemainingSuboperations",
                                                    "NumberOfCompletedSuboperations", "NumberOfFailedSuboperations",
                                                    "NumberOfWarningSuboperations")) for s, _ in responses]

    results = {}
    for direct in (False, True):
        with monkeypatch.context() as m:
            if direct:
                def library_path(*args, **kw):  # noqa: ANN002, ANN003, ANN202
                    raise AssertionError("the library's send_c_move was used")

                m.setattr(Association, "send_c_move", library_path)
            else:
                m.setattr(pnd_tuning, "_DIRECT_MOVE", False)
            peer = MovePeer(5)
            try:
                results[direct] = counts(move(tmp_path / str(direct), peer))
            finally:
                peer.close()
            assert len(peer.stored) == 5
            assert [str(i.StudyInstanceUID) for i in peer.identifiers] == ["1.2.3.4"]
    assert results[True] == results[False]
    assert [r[0] for r in results[True]] == [0xFF00] * 5 + [0x0000]
    assert results[True][-1][2] == 5


@pytest.mark.parametrize("direct", [True, False])
def test_move_failure_status_and_comment(tmp_path: Path, monkeypatch, direct: bool) -> None:
    if not direct:
        monkeypatch.setattr(pnd_tuning, "_DIRECT_MOVE", False)
    peer = MovePeer(0, final=0xA801)
    try:
        responses = move(tmp_path, peer)
    finally:
        peer.close()
    assert len(responses) == 1
    assert responses[0][0].Status == 0xA801 and responses[0][0].ErrorComment == "no such study"
