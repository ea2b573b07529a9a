"""The station as a DICOM client, against real peers on loopback: Orthanc (Debian package), dcmtk
storescp/findscu, and small pynetdicom peers that count what they see (associations open at once,
every C-STORE they acknowledged).

One station (`burnstation run`, so the `transfer` process is the supervisor's) serves the whole
module; the last test kills it with SIGKILL in the middle of a send and starts it again.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from orthanc_support import Orthanc
from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts, evt
from support import (
    Station,
    burnstation,
    dcmtk,
    findscu,
    free_port,
    recv_exactly,
    storescp,
    wait_for,
    write_study,
)

from appliance import db
from appliance.transfer import jobs

TIMEOUT = 90.0


class CountingPeer:
    """A storage SCP that counts connections open at once and every instance it acknowledged.

    A connection counts as closed at the first of: its association released or aborted, or the
    connection seen closed. Counting only the last lags behind the station, which frees its slot
    as soon as it has the A-RELEASE-RP and may connect again before this side's thread has
    noticed the close (seen in CI: a peak of 3 with a cap of 2 on a loaded machine).
    """

    def __init__(self, aet: str, delay: float = 0.0) -> None:
        self.port = free_port()
        self.delay = delay
        self.lock = threading.Lock()
        self.open = 0
        self.peak = 0
        self.connections = 0
        self.received: list[str] = []
        ae = AE(ae_title=aet)
        ae.supported_contexts = StoragePresentationContexts
        self._gone: list[Any] = []  # associations counted closed (kept: their ids are not reused)
        handlers = [(evt.EVT_CONN_OPEN, self._opened), (evt.EVT_CONN_CLOSE, self._closed),
                    (evt.EVT_RELEASED, self._closed), (evt.EVT_ABORTED, self._closed),
                    (evt.EVT_C_STORE, self._store)]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _opened(self, event: Any) -> None:
        with self.lock:
            self.open += 1
            self.connections += 1
            self.peak = max(self.peak, self.open)

    def _closed(self, event: Any) -> None:
        with self.lock:
            if not any(a is event.assoc for a in self._gone):  # once per connection, the first event
                self._gone.append(event.assoc)
                self.open -= 1

    def _store(self, event: Any) -> int:
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()


def sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def study_of(paths: list[Path]) -> str:
    return str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def transfer(data: Path, transfer_id: str) -> dict[str, Any]:
    return json.loads(burnstation(data, "transfers", "show", transfer_id, "--json").stdout)


def queued_id(proc_stdout: str) -> str:
    return proc_stdout.split()[0]


def wait_final(data: Path, transfer_id: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        with contextlib.closing(db.connect(data)) as conn:
            t = jobs.get(conn, transfer_id)
        return t if t and t["state"] in jobs.FINAL else None

    return wait_for(final, timeout, f"transfer {transfer_id} to end")


def indexed(data: Path, study_uid: str) -> dict[str, str]:
    """SOP Instance UID → file path of a study in the station's index."""
    with contextlib.closing(db.connect(data)) as conn:
        return {r["sop_uid"]: r["path"] for r in conn.execute("SELECT sop_uid, path FROM instances WHERE study_uid=?",
                                                              (study_uid,))}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """A station (folder robot `usb`), an Orthanc PACS with three studies that knows the station,
    and the PACS known to the station twice: ORTHANC (retrieve by C-MOVE) and ORTHANCGET (C-GET)."""
    root = tmp_path_factory.mktemp("transfer")
    st = Station(root / "data", burn__delay_seconds=2, dicom__timeout=10)
    usb = root / "usb"
    usb.mkdir()
    burnstation(st.data, "robots", "add", "usb", "--driver", "folder", "--path", str(usb), "--role", "epson")
    pacs = Orthanc(root / "orthanc", "ORTHANC", {"station": ("BURNSTATION", st.port)})
    studies = {
        "john": write_study(root / "john", 2, 2, patient_id="P1", patient_name="DOE^JOHN", study_date="20240115",
                            rows=16, cols=16, modality="CT"),
        "jane": write_study(root / "jane", 1, 3, patient_id="P2", patient_name="DOE^JANE", study_date="20240301",
                            rows=16, cols=16, modality="MR"),
        "ann": write_study(root / "ann", 1, 2, patient_id="P3", patient_name="SMITH^ANN", study_date="20231201",
                           rows=16, cols=16, modality="CT"),
    }
    burnstation(st.data, "nodes", "add", "ORTHANC", "127.0.0.1", str(pacs.dicom_port))
    burnstation(st.data, "nodes", "add", "ORTHANCGET", "127.0.0.1", str(pacs.dicom_port), "--retrieve", "get")
    with pacs:
        pacs.upload([p for files in studies.values() for p in files])
        st.start()
        wait_for(lambda: any(p["name"] == "transfer" and p["state"] == "running" for p in
                             json.loads(burnstation(st.data, "status", "--json").stdout)["processes"]),
                 60, "the transfer process")
        yield {"st": st, "pacs": pacs, "studies": studies, "root": root, "usb": usb}
        st.stop()


def query(data: Path, *args: str) -> list[dict[str, str]]:
    return json.loads(burnstation(data, "query", *args, "--json").stdout)


def test_query_lists_orthanc_studies_like_findscu(site, tmp_path: Path) -> None:
    st, pacs, studies = site["st"], site["pacs"], site["studies"]
    everything = query(st.data, "ORTHANC")
    assert {r["StudyInstanceUID"] for r in everything} == {study_of(f) for f in studies.values()}
    assert {r["PatientName"] for r in everything} == {"DOE^JOHN", "DOE^JANE", "SMITH^ANN"}
    for keys in ({"PatientName": "DOE*"}, {"StudyDate": "20240101-20241231"},
                 {"PatientName": "DOE^J?H*", "StudyDate": "-20240201"}):
        ours = query(st.data, "ORTHANC", *[a for k, v in keys.items() for a in ("-k", f"{k}={v}")])
        _, theirs = findscu(pacs.dicom_port, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", **keys},
                            tmp_path / "find", aec="ORTHANC")
        assert theirs, keys
        assert {r["StudyInstanceUID"] for r in ours} == {str(d.StudyInstanceUID) for d in theirs}, keys
    narrowed = query(st.data, "ORTHANC", "-k", "PatientName=DOE*", "-k", "StudyDate=20240201-")
    assert [r["StudyInstanceUID"] for r in narrowed] == [study_of(studies["jane"])]
    patients = query(st.data, "ORTHANC", "--level", "patient")
    assert {r["PatientID"] for r in patients} == {"P1", "P2", "P3"}
    series = query(st.data, "ORTHANC", "--level", "series", "-k", f"StudyInstanceUID={study_of(studies['john'])}")
    assert len(series) == 2 and {r["Modality"] for r in series} == {"CT"}
    # the results are not kept in the index
    assert indexed(st.data, study_of(studies["ann"])) == {}
    # echo goes through the transfer process too (the station runs)
    assert "answered C-ECHO" in burnstation(st.data, "echo", "ORTHANC").stdout
    bad = burnstation(st.data, "query", "ORTHANC", "-k", "NotAKeyword=1", check=False)
    assert bad.returncode == 2 and "not a DICOM keyword" in bad.stderr


def test_query_falls_back_to_patient_root(site) -> None:
    """A node that only takes Patient Root C-FIND still answers a study-level query."""
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind

    st = site["st"]
    seen: list[tuple[str, str]] = []

    def on_find(event: Any):  # noqa: ANN202 - a generator of (status, identifier)
        seen.append((str(event.request.AffectedSOPClassUID), str(event.identifier.QueryRetrieveLevel)))
        for n in (1, 2):
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.PatientID = "PROOT"
            ds.StudyInstanceUID = f"1.2.826.0.1.3680043.99.{n}"
            yield 0xFF00, ds

    ae = AE(ae_title="PATROOT")
    ae.add_supported_context(PatientRootQueryRetrieveInformationModelFind)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
    try:
        burnstation(st.data, "nodes", "add", "PATROOT", "127.0.0.1", str(port))
        got = query(st.data, "PATROOT", "-k", "PatientID=PROOT")
    finally:
        server.shutdown()
    assert [r["StudyInstanceUID"] for r in got] == ["1.2.826.0.1.3680043.99.1", "1.2.826.0.1.3680043.99.2"]
    assert seen == [(PatientRootQueryRetrieveInformationModelFind, "STUDY")]


def check_retrieved(data: Path, files: list[Path]) -> None:
    got = indexed(data, study_of(files))
    assert set(got) == {sop_uid(p) for p in files}
    by_uid = {sop_uid(p): p for p in files}
    for uid, path in got.items():
        assert dcmread(path).PixelData == dcmread(by_uid[uid]).PixelData


def test_retrieve_by_move_and_by_get(site) -> None:
    st, studies = site["st"], site["studies"]
    move = burnstation(st.data, "retrieve", "ORTHANC", "--study", study_of(studies["john"]), timeout=TIMEOUT)
    tid = queued_id(move.stdout)
    t = transfer(st.data, tid)
    assert t["state"] == "done" and t["method"] == "move" and t["completed"] == 4 and t["failed"] == 0, t
    check_retrieved(st.data, studies["john"])
    get = burnstation(st.data, "retrieve", "ORTHANCGET", "--study", study_of(studies["jane"]), timeout=TIMEOUT)
    t = transfer(st.data, queued_id(get.stdout))
    assert t["state"] == "done" and t["method"] == "get" and t["completed"] == 3, t
    check_retrieved(st.data, studies["jane"])
    # C-GET lands as if received on the plain AE title (no burn routing), from the peer
    with contextlib.closing(db.connect(st.data)) as conn:
        rows = conn.execute("SELECT DISTINCT called_aet, calling_aet FROM instances WHERE study_uid=?",
                            (study_of(studies["jane"]),)).fetchall()
    assert [tuple(r) for r in rows] == [("BURNSTATION", "ORTHANCGET")]


def test_retrieve_and_burn_makes_one_disc_of_exactly_that_study(site) -> None:
    st, studies, usb = site["st"], site["studies"], site["usb"]
    result = burnstation(st.data, "retrieve", "ORTHANC", "--study", study_of(studies["ann"]), "--burn",
                         timeout=TIMEOUT)
    t = transfer(st.data, queued_id(result.stdout))
    assert t["state"] == "done" and t["burn_job"], t
    assert f"burn job {t['burn_job']} queued" in result.stdout
    job = json.loads(burnstation(st.data, "jobs", "show", t["burn_job"], "--json").stdout)
    assert job["instances"] == 2 and job["study_uids"] == [study_of(studies["ann"])]

    def finished() -> dict | None:
        j = json.loads(burnstation(st.data, "jobs", "show", t["burn_job"], "--json").stdout)
        return j if j["state"] in ("done", "failed", "cancelled") else None

    assert wait_for(finished, TIMEOUT, "the burn job")["state"] == "done"
    on_disc = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
               for p in (usb / t["burn_job"]).rglob("*") if p.is_file() and p.parent.name != "IHE_PDI"
               and "DICOM" in p.parts and p.name != "DICOMDIR"}
    assert on_disc == {sop_uid(p) for p in studies["ann"]}


def test_send_to_storescp_and_to_orthanc(site, tmp_path: Path) -> None:
    st, pacs = site["st"], site["pacs"]
    local = write_study(tmp_path / "local", 2, 3, patient_id="PSEND", rows=16, cols=16)
    r = dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *map(str, local))
    assert r.returncode == 0, r.stderr
    study = study_of(local)
    dest = tmp_path / "dest"
    with storescp(dest, "DEST") as port:
        burnstation(st.data, "nodes", "add", "DEST", "127.0.0.1", str(port))
        out = burnstation(st.data, "send", "DEST", "--study", study, timeout=TIMEOUT)
        t = transfer(st.data, queued_id(out.stdout))
        assert t["state"] == "done" and t["completed"] == 6 and t["remaining"] == 0, t
        got = [p for p in dest.rglob("*") if p.is_file()]
        assert sorted(sop_uid(p) for p in got) == sorted(sop_uid(p) for p in local)
        by_uid = {sop_uid(p): p for p in local}
        for p in got:
            assert dcmread(p).PixelData == dcmread(by_uid[sop_uid(p)]).PixelData
    before = pacs.instance_count()
    series = str(dcmread(local[0], stop_before_pixels=True).SeriesInstanceUID)
    out = burnstation(st.data, "send", "ORTHANC", "--series", series, timeout=TIMEOUT)
    assert transfer(st.data, queued_id(out.stdout))["completed"] == 3
    assert pacs.instance_count() == before + 3
    assert {sop_uid(p) for p in local[:3]} <= set(pacs.sop_uids())
    nothing = burnstation(st.data, "send", "ORTHANC", "--study", "1.2.3.4.5", check=False)
    assert nothing.returncode == 1 and "no instances" in nothing.stderr


def test_ten_transfers_never_more_than_max_connections(site, tmp_path: Path) -> None:
    st = site["st"]
    local = write_study(tmp_path / "ten", 1, 3, patient_id="PTEN", rows=16, cols=16)
    assert dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *map(str, local)).returncode == 0
    peer = CountingPeer("COUNTER", delay=0.15)
    try:
        burnstation(st.data, "nodes", "add", "COUNTER", "127.0.0.1", str(peer.port))
        burnstation(st.data, "config", "set", "dicom.max_connections=2")
        # queued in one go (through the owner module, as the CLI does) so that they all wait at once
        with contextlib.closing(db.connect(st.data)) as conn:
            uids = jobs.select_instances(conn, study_of(local))
            ids = [jobs.create_send(conn, "COUNTER", uids, study_uid=study_of(local)) for _ in range(10)]
        finals = [wait_final(st.data, tid) for tid in ids]
        assert [t["state"] for t in finals] == ["done"] * 10
        assert peer.connections == 10
        assert peer.peak == 2, f"{peer.peak} associations open at once"
        assert Counter(peer.received) == {sop_uid(p): 10 for p in local}
        # they started in the order they were queued
        assert [t["id"] for t in sorted(finals, key=lambda t: t["started_at"])] == ids
    finally:
        burnstation(st.data, "config", "set", "dicom.max_connections=4")
        peer.close()


def test_move_scp_sub_associations_share_the_cap_with_transfers(site, tmp_path: Path) -> None:
    """The dicom process's C-MOVE SCP and the transfer process draw on one station-wide cap."""
    st = site["st"]
    local = write_study(tmp_path / "cap", 1, 3, patient_id="PCAP", rows=16, cols=16)
    assert dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *map(str, local)).returncode == 0
    peer = CountingPeer("CAPPEER", delay=0.15)
    try:
        burnstation(st.data, "nodes", "add", "CAPPEER", "127.0.0.1", str(peer.port))
        burnstation(st.data, "nodes", "add", "MOVER", "127.0.0.1", str(free_port()))
        burnstation(st.data, "config", "set", "dicom.max_connections=2")
        with contextlib.closing(db.connect(st.data)) as conn:
            uids = jobs.select_instances(conn, study_of(local))
            ids = [jobs.create_send(conn, "CAPPEER", uids, study_uid=study_of(local)) for _ in range(4)]
        wait_for(lambda: peer.open >= 1, 30, "the first send")
        results: list[list] = [[], []]
        moves = [threading.Thread(target=lambda out=out: out.append(dcmtk(
            "movescu", "-S", "-aet", "MOVER", "-aec", "BURNSTATION", "-aem", "CAPPEER",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_of(local)}",
            "127.0.0.1", str(st.port)))) for out in results]
        for m in moves:
            m.start()
        finals = [wait_final(st.data, tid) for tid in ids]
        for m in moves:
            m.join(TIMEOUT)
        assert [t["state"] for t in finals] == ["done"] * 4
        for (move,) in results:
            assert move.returncode == 0 and "Failed" not in move.stderr, move.stderr
        assert peer.connections == 6
        assert peer.peak == 2, f"{peer.peak} associations open at once"
        assert Counter(peer.received) == {sop_uid(p): 6 for p in local}
    finally:
        burnstation(st.data, "config", "set", "dicom.max_connections=4")
        burnstation(st.data, "nodes", "delete", "MOVER")
        peer.close()


def test_move_that_finds_no_free_slot_fails_after_the_timeout(site, tmp_path: Path) -> None:
    """A C-MOVE waits at most twice dicom.timeout for a slot, then answers a failure without connecting."""
    from appliance.dicom import slots

    st = site["st"]
    local = write_study(tmp_path / "busy", 1, 2, patient_id="PBUSY", rows=16, cols=16)
    assert dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *map(str, local)).returncode == 0
    peer = CountingPeer("BUSYPEER")
    burnstation(st.data, "nodes", "add", "BUSYPEER", "127.0.0.1", str(peer.port))
    burnstation(st.data, "nodes", "add", "MOVER", "127.0.0.1", str(free_port()))
    burnstation(st.data, "config", "set", "dicom.max_connections=1", "dicom.timeout=3")
    held = slots.OutgoingSlots(st.data, lambda: 1).try_acquire()  # as a running transfer would
    try:
        assert held is not None
        started = time.monotonic()
        move = dcmtk("movescu", "-S", "-aet", "MOVER", "-aec", "BURNSTATION", "-aem", "BUSYPEER",
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_of(local)}",
                     "127.0.0.1", str(st.port))
        took = time.monotonic() - started
    finally:
        if held is not None:
            held.release()
        burnstation(st.data, "config", "set", "dicom.max_connections=4", "dicom.timeout=10")
        burnstation(st.data, "nodes", "delete", "MOVER")
        peer.close()
    assert 6 <= took < 14, took
    # 0xC514: Failure, unable to process (the Cxxx class of PS3.4 C.4.2.1.5)
    assert move.returncode != 0 and "Failed: UnableToProcess" in move.stderr, move.stderr
    assert peer.connections == 0


class PatientRootOnly:
    """A TCP proxy in front of Orthanc that makes it a node without Study Root: in its
    A-ASSOCIATE-AC, the presentation contexts the station proposed for Study Root Q/R are answered
    "abstract syntax not supported" (result 3); everything else passes unchanged."""

    STUDY_ROOT = {"1.2.840.10008.5.1.4.1.2.2." + n for n in "123"}

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _items(body: bytes):  # noqa: ANN205 - yields (offset, type, item bytes) after the 68-byte fixed part
        pos = 68
        while pos + 4 <= len(body):
            kind, length = body[pos], int.from_bytes(body[pos + 2:pos + 4], "big")
            yield pos, kind, body[pos + 4:pos + 4 + length]
            pos += 4 + length

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", self.target_port)) as upstream:
            header = recv_exactly(client, 6)
            body = recv_exactly(client, int.from_bytes(header[2:6], "big"))
            study_root = set()
            for _pos, kind, item in self._items(body):
                if kind == 0x20 and item[4] == 0x30:  # presentation context, its abstract syntax first
                    length = int.from_bytes(item[6:8], "big")
                    if item[8:8 + length].rstrip(b"\0").decode() in self.STUDY_ROOT:
                        study_root.add(item[0])
            upstream.sendall(header + body)
            header = recv_exactly(upstream, 6)
            answer = bytearray(recv_exactly(upstream, int.from_bytes(header[2:6], "big")))
            if header[0] == 0x02:
                for pos, kind, item in list(self._items(bytes(answer))):
                    if kind == 0x21 and item[0] in study_root:
                        answer[pos + 4 + 2] = 0x03
                        self.refused += 1
            client.sendall(header + bytes(answer))
            back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
            back.start()
            self._pipe(client, upstream)
            back.join(30)


    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def test_retrieve_by_patient_root_from_a_node_without_study_root(site, tmp_path: Path) -> None:
    st, pacs = site["st"], site["pacs"]
    files = write_study(tmp_path / "proot", 1, 3, patient_id="PROOT1", rows=16, cols=16)
    pacs.upload(files)
    proxy = PatientRootOnly(pacs.dicom_port)
    try:
        for name, method in (("PROOTMOVE", "move"), ("PROOTGET", "get")):
            burnstation(st.data, "nodes", "add", name, "127.0.0.1", str(proxy.port), "--retrieve", method)
        out = burnstation(st.data, "retrieve", "PROOTMOVE", "--study", study_of(files), timeout=TIMEOUT)
        t = transfer(st.data, queued_id(out.stdout))
        assert t["state"] == "done" and t["completed"] == 3 and "Patient Root" in t["message"], t
        check_retrieved(st.data, files)
        series = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        out = burnstation(st.data, "retrieve", "PROOTGET", "--study", study_of(files), "--series", series,
                          timeout=TIMEOUT)
        t = transfer(st.data, queued_id(out.stdout))
        assert t["state"] == "done" and t["completed"] == 3 and t["method"] == "get", t
        assert "Patient Root" in t["message"], t
        assert proxy.refused == 2  # Study Root was offered (move; get) and refused
    finally:
        proxy.close()
        for name in ("PROOTMOVE", "PROOTGET"):
            burnstation(st.data, "nodes", "delete", name, check=False)


def test_peer_that_never_answers_fails_after_the_timeout(site) -> None:
    st = site["st"]
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)  # accepts the TCP connection (backlog), never answers the A-ASSOCIATE-RQ
        burnstation(st.data, "nodes", "add", "SILENT", "127.0.0.1", str(silent.getsockname()[1]))
        burnstation(st.data, "config", "set", "dicom.timeout=3")
        try:
            started = time.time()
            out = burnstation(st.data, "retrieve", "SILENT", "--study", "1.2.3", check=False, timeout=TIMEOUT)
            assert out.returncode == 1
            t = transfer(st.data, queued_id(out.stdout))
        finally:
            burnstation(st.data, "config", "set", "dicom.timeout=10")
    assert t["state"] == "failed"
    assert "no answer within dicom.timeout=3s" in t["error"], t
    assert 3 <= t["finished_at"] - t["started_at"] < 10 and t["finished_at"] - started < 30
    assert t["id"] in burnstation(st.data, "transfers", "list", "--state", "failed").stdout
    burnstation(st.data, "nodes", "delete", "SILENT")
    retried = burnstation(st.data, "transfers", "retry", t["id"])
    assert "queued again" in retried.stdout
    assert "not a known node" in wait_final(st.data, t["id"])["error"]


def test_forward_rule_to_a_stopped_orthanc_then_started(site, tmp_path: Path) -> None:
    st = site["st"]
    archive = Orthanc(tmp_path / "archive", "ARCHIVE")
    burnstation(st.data, "nodes", "add", "ARCHIVE", "127.0.0.1", str(archive.dicom_port))
    bad = burnstation(st.data, "forward", "add", "ARCHIVE", "--modality", "C T", check=False)
    assert bad.returncode == 2 and "modality" in bad.stderr
    burnstation(st.data, "forward", "add", "ARCHIVE", "--name", "arch", "--modality", "CT", "--delay", "1")
    mr = write_study(tmp_path / "mr", 1, 2, patient_id="PFWD", modality="MR", rows=16, cols=16)
    ct = write_study(tmp_path / "ct", 2, 2, patient_id="PFWD", modality="CT", rows=16, cols=16)
    r = dcmtk("storescu", "-aec", "BURNSTATION_TE", "127.0.0.1", str(st.port), *map(str, ct + mr))
    assert r.returncode == 0, r.stderr

    def rule() -> dict[str, Any]:
        return next(x for x in json.loads(burnstation(st.data, "forward", "list", "--json").stdout)
                    if x["name"] == "arch")

    # the archive is down: the backlog holds the four CT instances (not the MR), the send waits and retries
    wait_for(lambda: rule()["backlog"] == 4 and (rule()["last"] or {}).get("error"), TIMEOUT, "a failed try")
    assert "ARCHIVE" in burnstation(st.data, "status").stdout
    with archive:
        wait_for(lambda: rule()["backlog"] == 0, TIMEOUT, "the backlog to drain")
        got = archive.sop_uids()
    assert sorted(got) == sorted(sop_uid(p) for p in ct)
    assert rule()["sent"] == 4
    with contextlib.closing(db.connect(st.data)) as conn:
        sends = jobs.list_transfers(conn, rule="arch")
        acked = [i for t in sends for i in jobs.items(conn, t["id"]) if i["state"] == "done"]
    assert len(acked) == 4 and len({i["sop_uid"] for i in acked}) == 4  # each acknowledged once
    assert sends[0]["attempts"] > 1
    burnstation(st.data, "forward", "delete", "arch")
    assert "arch" not in burnstation(st.data, "forward", "list").stdout


def test_cancel_a_running_send_then_retry_sends_the_rest(site, tmp_path: Path) -> None:
    st = site["st"]
    local = write_study(tmp_path / "cancel", 1, 40, patient_id="PCANCEL", rows=16, cols=16)
    assert dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *map(str, local)).returncode == 0
    peer = CountingPeer("CANCELME", delay=0.25)  # 10 s of sending: room for the CLI on a loaded machine
    try:
        burnstation(st.data, "nodes", "add", "CANCELME", "127.0.0.1", str(peer.port))
        tid = queued_id(burnstation(st.data, "send", "CANCELME", "--study", study_of(local), "--no-wait").stdout)
        wait_for(lambda: len(peer.received) >= 2, TIMEOUT, "the send to be under way")
        assert "cancel requested" in burnstation(st.data, "transfers", "cancel", tid).stdout
        t = wait_final(st.data, tid)
        assert t["state"] == "cancelled" and 0 < t["completed"] < 40 and t["remaining"] == 40 - t["completed"], t
        assert len(peer.received) == t["completed"]
        assert "queued again" in burnstation(st.data, "transfers", "retry", tid).stdout
        t = wait_final(st.data, tid)
        assert t["state"] == "done" and t["completed"] == 40, t
        assert Counter(peer.received) == {sop_uid(p): 1 for p in local}  # nothing sent twice
    finally:
        peer.close()


def test_sigkill_in_the_middle_of_a_send_then_restart(site, tmp_path: Path) -> None:
    st = site["st"]
    local = write_study(tmp_path / "kill", 1, 20, patient_id="PKILL", rows=16, cols=16)
    assert dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *map(str, local)).returncode == 0
    peer = CountingPeer("SLOW", delay=0.3)
    try:
        burnstation(st.data, "nodes", "add", "SLOW", "127.0.0.1", str(peer.port))
        tid = queued_id(burnstation(st.data, "send", "SLOW", "--study", study_of(local), "--no-wait").stdout)
        wait_for(lambda: len(peer.received) >= 5, TIMEOUT, "the send to be under way")
        st.stop(signal.SIGKILL)
        at_kill = len(peer.received)
        assert at_kill < 20
        st.start()
        t = wait_final(st.data, tid)
        assert t["state"] == "done" and t["completed"] == 20, t
        counts = Counter(peer.received)
        assert set(counts) == {sop_uid(p) for p in local}
        again = [uid for uid, n in counts.items() if n > 1]
        assert len(again) <= 1 and all(counts[u] == 2 for u in again), counts  # only the one in flight
    finally:
        peer.close()
