"""Access rules, live settings, debug log, CLI echo/reindex, and hostile input on the DICOM port.

One station (service time-out 5 s) serves the whole module; the settings changes in the middle
reach it without a restart.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import struct
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from support import (
    DCMTK,
    NOT_AUTHORISED,
    Station,
    burnstation,
    configure,
    dcmtk,
    findscu,
    free_port,
    make_dataset,
    storescp,
    wait_for,
    wait_port,
    write_study,
)


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory):
    st = Station(tmp_path_factory.mktemp("access") / "data", dicom__timeout=5)
    burnstation(st.data, "nodes", "add", "FRIEND", "127.0.0.1", "104")
    st.start()
    yield st
    st.stop()


def echo_ok(st: Station, port: int | None = None, aet: str = "ECHOSCU") -> bool:
    r = dcmtk("echoscu", "-to", "5", "-aet", aet, "-aec", "BURNSTATION", "127.0.0.1", str(port or st.port),
              timeout=30)
    return r.returncode == 0


def stored_sops(st: Station) -> set[str]:
    return {p.stem for p in (st.data / "storage").rglob("*.dcm")}


def indexed(st: Station, tmp_path: Path, **keys: str) -> set[str]:
    proc, responses = findscu(st.port, {"QueryRetrieveLevel": "IMAGE", "SOPInstanceUID": "", **keys},
                              tmp_path / "rsp", aet="FRIEND")
    assert proc.returncode == 0, proc.stderr
    return {str(r.SOPInstanceUID) for r in responses}


# --------------------------------------------------------------------------- hostile bytes


def _closed_within(sock: socket.socket, seconds: float, abort_counts: bool = True) -> bool:
    """True when the station closes the connection (or answers A-ABORT) within `seconds`.

    After an A-ABORT the station waits for the peer to close (ARTIM, PS3.8 state Sta13), so an
    A-ABORT PDU is as good as a close unless `abort_counts` is false.
    """
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data or (abort_counts and data[:1] == b"\x07"):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def test_garbage_bytes_are_closed(station: Station) -> None:
    rng = os.urandom
    for payload in (rng(2000), b"\x00" * 64, b"GET / HTTP/1.0\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01\x00\x00"):
        with socket.create_connection(("127.0.0.1", station.port)) as sock:
            sock.sendall(payload)
            assert _closed_within(sock, 15), payload[:20]
    assert echo_ok(station)


def _associate_rq(called: str = "BURNSTATION", calling: str = "HOSTILE") -> bytes:
    """A real A-ASSOCIATE-RQ for Verification (from pynetdicom's encoder)."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    context = build_context("1.2.840.10008.1.1")
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    item = MaximumLengthNotification()
    item.maximum_length_received = 16384
    primitive.user_information = [item]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def test_truncated_associate_request_is_dropped(station: Station) -> None:
    whole = _associate_rq()
    assert whole[0] == 0x01
    with socket.create_connection(("127.0.0.1", station.port)) as sock:
        sock.sendall(whole[: len(whole) // 2])  # then silence: the station must not wait forever
        started = time.monotonic()
        assert _closed_within(sock, 30, abort_counts=False)
        assert time.monotonic() - started < 25
    assert echo_ok(station)


def test_absurd_pdu_length_is_dropped(station: Station) -> None:
    with socket.create_connection(("127.0.0.1", station.port)) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0) + b"\x00\x01" + os.urandom(100))
        assert _closed_within(sock, 30)
    assert echo_ok(station)


def test_complete_associate_request_then_garbage(station: Station) -> None:
    with socket.create_connection(("127.0.0.1", station.port)) as sock:
        sock.sendall(_associate_rq())
        sock.settimeout(10)
        reply = sock.recv(6)
        assert reply[:1] == b"\x02", reply  # A-ASSOCIATE-AC
        sock.sendall(os.urandom(500))
        assert _closed_within(sock, 15)
    assert echo_ok(station)


def test_many_connections_at_once_are_all_served(station: Station) -> None:
    """Incoming associations are not capped: 20 raw connections stay open while echo still works."""
    socks = [socket.create_connection(("127.0.0.1", station.port)) for _ in range(20)]
    try:
        assert echo_ok(station)
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------- malformed C-STORE


def _store_raw(st: Station, sop_class: str, sop_uid: str, dataset_bytes: bytes, tmp_path: Path) -> int:
    """C-STORE `dataset_bytes` as the data set of (sop_class, sop_uid), unparsed; returns the status."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)
    path = tmp_path / f"{sop_uid}.raw"
    path.write_bytes(b"\x00" * 128 + b"DICM" + buf.getvalue() + dataset_bytes)
    ae = AE(ae_title="FRIEND")
    ae.add_requested_context(sop_class, "1.2.840.10008.1.2.1")
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes as they are
    try:
        assoc = ae.associate("127.0.0.1", st.port, ae_title="BURNSTATION")
        assert assoc.is_established
        try:
            status = assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    assert status is not None and "Status" in status, "no C-STORE response"
    return int(status.Status)


def _dataset_bytes(ds) -> bytes:  # noqa: ANN001 - a pydicom Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def _without(ds, keyword: str):  # noqa: ANN001, ANN202 - pydicom Datasets
    copy = ds.copy()
    delattr(copy, keyword)
    return copy


def test_badly_encoded_name_is_stored_not_lost(station: Station, tmp_path: Path) -> None:
    """Invalid UTF-8 in a name declared ISO_IR 192: the object is still stored and found (replacement chars)."""
    ds = make_dataset(patient_id="PBROKEN", rows=8, cols=8, charset="ISO_IR 192")
    raw = _dataset_bytes(ds).replace(b"DOE^JOHN", b"D\xc3(E^JO\xff")
    assert b"\xff" in raw
    status = _store_raw(station, str(ds.SOPClassUID), str(ds.SOPInstanceUID), raw, tmp_path)
    assert status == 0x0000, f"0x{status:04X}"
    assert str(ds.SOPInstanceUID) in stored_sops(station)
    proc, responses = findscu(station.port, {"QueryRetrieveLevel": "PATIENT", "PatientID": "PBROKEN",
                                             "PatientName": ""}, tmp_path / "rsp", model="-P", aet="FRIEND")
    assert len(responses) == 1, proc.stdout + proc.stderr
    assert str(responses[0].PatientName).startswith("D")


def _is_failure(status: int) -> bool:
    return status in (0x0124, 0x0122) or 0xA000 <= status <= 0xCFFF


def test_undecodable_or_mismatched_c_store_fails_and_indexes_nothing(station: Station, tmp_path: Path) -> None:
    before = stored_sops(station)
    good = make_dataset(patient_id="PBAD", rows=8, cols=8)
    sop_class = str(good.SOPClassUID)
    raw = _dataset_bytes(good)
    cases = {
        "random bytes": (generate_uid(), os.urandom(3000)),
        "cut in the middle": (str(good.SOPInstanceUID), raw[: len(raw) // 3]),
        "element longer than the data": (generate_uid(), b"\x10\x00\x10\x00PN\xff\x7fDOE^JOHN"),
        "other SOP Instance UID": (generate_uid(), raw),
        "no Study Instance UID": (str(good.SOPInstanceUID), _dataset_bytes(_without(good, "StudyInstanceUID"))),
    }
    for name, (sop_uid, data) in cases.items():
        status = _store_raw(station, sop_class, sop_uid, data, tmp_path)
        assert _is_failure(status), f"{name}: status 0x{status:04X}"
    assert stored_sops(station) == before
    assert indexed(station, tmp_path, PatientID="PBAD") == set()
    # the same association path works for a good object
    assert _store_raw(station, sop_class, str(good.SOPInstanceUID), raw, tmp_path) == 0x0000
    assert indexed(station, tmp_path, PatientID="PBAD") == {str(good.SOPInstanceUID)}


def test_resent_object_that_moved_leaves_no_empty_entities(station: Station, tmp_path: Path) -> None:
    """The same SOP Instance UID sent again under another study and patient (a corrected study):
    the old study and patient, now empty, are no longer listed."""
    first = make_dataset(patient_id="PMOVED1", rows=8, cols=8)
    second = make_dataset(patient_id="PMOVED2", sop_uid=str(first.SOPInstanceUID), rows=8, cols=8)
    for n, ds in enumerate((first, second)):
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        r = dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(station.port), str(path))
        assert r.returncode == 0, r.stderr
    for level, model in (("PATIENT", "-P"), ("STUDY", "-S")):
        proc, responses = findscu(station.port, {"QueryRetrieveLevel": level, "PatientID": "PMOVED*"},
                                  tmp_path / "rsp", model=model, aet="FRIEND")
        assert [r.PatientID for r in responses] == ["PMOVED2"], (level, proc.stdout)
    proc, responses = findscu(station.port, {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "",
                                             "StudyInstanceUID": str(first.StudyInstanceUID)},
                              tmp_path / "rsp", aet="FRIEND")
    assert responses == []
    assert indexed(station, tmp_path, PatientID="PMOVED*") == {str(first.SOPInstanceUID)}


# --------------------------------------------------------------------------- access and live settings


def test_store_from_known_nodes_only(station: Station, tmp_path: Path) -> None:
    files = write_study(tmp_path / "in", 1, 2, patient_id="PACL", rows=8, cols=8)
    probe = write_study(tmp_path / "probe", 1, 40, patient_id="PPROBE", rows=8, cols=8)
    configure(station.data, "dicom.store_from_any=false")
    try:
        probes = iter(probe)

        def refused() -> bool:
            r = dcmtk("storescu", "-v", "-aet", "STRANGER", "-aec", "BURNSTATION", "127.0.0.1", str(station.port),
                      str(next(probes)))
            return NOT_AUTHORISED in r.stdout + r.stderr

        wait_for(refused, what="dicom.store_from_any=false to apply", timeout=20.0)
        before = stored_sops(station)
        r = dcmtk("storescu", "-v", "-nh", "-aet", "STRANGER", "-aec", "BURNSTATION", "127.0.0.1",
                  str(station.port), *map(str, files))
        assert (r.stdout + r.stderr).count(NOT_AUTHORISED) == len(files), r.stdout + r.stderr
        assert stored_sops(station) == before
        r = dcmtk("storescu", "-aet", "FRIEND", "-aec", "BURNSTATION", "127.0.0.1", str(station.port),
                  *map(str, files))
        assert r.returncode == 0, r.stderr
        assert {str(dcmread(p).SOPInstanceUID) for p in files} <= stored_sops(station)
        assert echo_ok(station, aet="STRANGER")  # echo is open to anyone
    finally:
        configure(station.data, "dicom.store_from_any=true")


def test_debug_log_switched_on_live(station: Station) -> None:
    log = station.data / "logs" / "dicom-debug.log"
    assert not log.exists() or log.stat().st_size == 0
    configure(station.data, "dicom.debug=true")
    try:
        wait_for(lambda: echo_ok(station) and log.exists() and "A-ASSOCIATE-RQ" in log.read_text(errors="replace"),
                 what="logs/dicom-debug.log", timeout=20.0)
        assert "A-ASSOCIATE-RQ" not in station.log(), "the protocol log went to the main log too"
    finally:
        configure(station.data, "dicom.debug=false")
    wait_for(lambda: _echo_leaves_unchanged(station, log), what="debug log to stop growing", timeout=20.0)
    size = log.stat().st_size
    assert echo_ok(station)
    assert log.stat().st_size == size


def _echo_leaves_unchanged(station: Station, path: Path) -> bool:
    """An association leaves the debug log as it was: the switch-off has been picked up (the
    log's handler writes as the request arrives, before the echo is answered)."""
    size = path.stat().st_size
    return echo_ok(station) and path.stat().st_size == size


def test_cli_echo_of_known_nodes(station: Station, tmp_path: Path) -> None:
    port = free_port()
    burnstation(station.data, "nodes", "add", "PEER", "127.0.0.1", str(port))
    dead = free_port()
    burnstation(station.data, "nodes", "add", "DEAD", "127.0.0.1", str(dead))
    with storescp(tmp_path / "peer", "PEER", port):
        proc = burnstation(station.data, "echo", "PEER", check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = burnstation(station.data, "echo", "DEAD", check=False)
    assert proc.returncode != 0
    proc = burnstation(station.data, "echo", "NOT_A_NODE", check=False)
    assert proc.returncode == 2 and "NOT_A_NODE" in proc.stderr


def test_cli_echo_of_a_tls_node(station: Station) -> None:
    """`burnstation echo` to a node marked TLS goes over TLS (here: the station's own TLS port)."""
    burnstation(station.data, "nodes", "add", "BURNSTATION_E", "127.0.0.1", str(station.tls_port), "--tls")
    proc = burnstation(station.data, "echo", "BURNSTATION_E", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    burnstation(station.data, "nodes", "add", "BURNSTATION_P", "127.0.0.1", str(station.tls_port))  # plain to TLS
    proc = burnstation(station.data, "echo", "BURNSTATION_P", check=False)
    assert proc.returncode != 0


def _rows(st: Station, sql: str, *args: object) -> list[sqlite3.Row]:
    conn = sqlite3.connect(st.data / "state.db", timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_association_log_and_called_title_per_instance(station: Station, tmp_path: Path) -> None:
    files = write_study(tmp_path / "in", 1, 3, patient_id="PLOG", rows=8, cols=8)
    r = dcmtk("storescu", "-aet", "LOGGER", "-aec", "BURNSTATION_TE", "127.0.0.1", str(station.port),
              *map(str, files))
    assert r.returncode == 0, r.stderr
    dcmtk("echoscu", "-aet", "LOGGER", "-aec", "NOBODY_HERE", "127.0.0.1", str(station.port))
    with socket.create_connection(("127.0.0.1", station.port)) as sock:  # associate, then hang up
        sock.sendall(_associate_rq(calling="HANGUP"))
        sock.settimeout(10)
        assert sock.recv(6)[:1] == b"\x02"

    def logged() -> bool:
        return len(_rows(station, "SELECT * FROM associations WHERE calling_aet IN ('LOGGER', 'HANGUP') "
                                  "AND result <> 'open'")) >= 3

    wait_for(logged, what="the association log", timeout=20.0)
    stored = _rows(station, "SELECT * FROM associations WHERE calling_aet='LOGGER' AND called_aet='BURNSTATION_TE'")
    assert len(stored) == 1
    row = stored[0]
    assert (row["stored"], row["failed"], row["services"], row["result"]) == (3, 0, "store", "released")
    assert row["peer_host"] == "127.0.0.1" and row["ended_at"] >= row["started_at"]
    rejected = _rows(station, "SELECT * FROM associations WHERE called_aet='NOBODY_HERE'")
    assert [r["result"] for r in rejected] == ["rejected"]
    hung = _rows(station, "SELECT * FROM associations WHERE calling_aet='HANGUP'")
    assert len(hung) == 1 and hung[0]["result"] in ("aborted", "connection closed")
    instances = _rows(station, "SELECT * FROM instances WHERE assoc_id=?", row["id"])
    assert {i["sop_uid"] for i in instances} == {str(dcmread(p).SOPInstanceUID) for p in files}
    assert {(i["called_aet"], i["calling_aet"]) for i in instances} == {("BURNSTATION_TE", "LOGGER")}


def _movescu(st: Station, dest: str, study_uid: str) -> subprocess.Popen:
    return subprocess.Popen([str(DCMTK / "movescu"), "-S", "-v", "-aet", "FRIEND", "-aec", "BURNSTATION",
                             "-aem", dest, "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                             "127.0.0.1", str(st.port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, TCP_NODELAY="1"))


def test_silent_peer_is_bounded_by_the_timeout_and_outgoing_associations_are_capped(
        station: Station, tmp_path: Path) -> None:
    """A move destination that takes the TCP connection and never answers fails after dicom.timeout (5 s);
    with dicom.max_connections=1 a second move waits for that slot, with 4 it does not."""
    files = write_study(tmp_path / "in", 1, 2, patient_id="PCAP", rows=8, cols=8)
    assert dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(station.port), *map(str, files)).returncode == 0
    study = str(dcmread(files[0]).StudyInstanceUID)
    silent = socket.create_server(("127.0.0.1", 0), backlog=16)
    good_port = free_port()
    burnstation(station.data, "nodes", "add", "SILENT", "127.0.0.1", str(silent.getsockname()[1]))
    burnstation(station.data, "nodes", "add", "GOOD", "127.0.0.1", str(good_port))
    try:
        with storescp(tmp_path / "good", "GOOD", good_port):
            for slots, must_wait in ((1, True), (4, False)):
                configure(station.data, f"dicom.max_connections={slots}")  # read by each move
                started = time.monotonic()
                stuck = _movescu(station, "SILENT", study)
                silent.settimeout(20)
                held, _ = silent.accept()  # the first move holds its slot now
                fine = _movescu(station, "GOOD", study)
                fine_out = fine.communicate(timeout=60)[0]
                fine_took = time.monotonic() - started
                stuck_out = stuck.communicate(timeout=60)[0]
                stuck_took = time.monotonic() - started
                held.close()
                assert "Success" in fine_out, fine_out
                assert "Success" not in stuck_out, stuck_out
                assert stuck_took < 25, f"silent peer held the move {stuck_took:.1f} s"
                if must_wait:
                    assert fine_took >= 4.0, f"second move did not wait for the only slot ({fine_took:.1f} s)"
                else:
                    assert fine_took < 4.0, f"second move waited with free slots ({fine_took:.1f} s)"
    finally:
        silent.close()
        configure(station.data, "dicom.max_connections=4")


def test_settings_changes_do_not_close_the_listeners(station: Station) -> None:
    """Time-out, TLS trust and client-certificate changes are applied in place: the plain port keeps
    answering throughout and no listener is reopened."""
    opened = station.log().count("DICOM listening on")
    ca = str(station.data / "tls" / "ca.pem")
    changes = [("dicom.timeout=6",), (f"dicom.tls_trusted_ca={ca}",), ("dicom.tls_require_client_cert=true",),
               ("dicom.tls_require_client_cert=false", "dicom.tls_trusted_ca="), ("dicom.timeout=5",)]
    for assignments in changes:
        configure(station.data, *assignments)
        deadline = time.monotonic() + 2.5  # the service looks at the settings every second
        while time.monotonic() < deadline:
            assert echo_ok(station), f"plain port refused after {assignments}"
    assert station.log().count("DICOM listening on") == opened


def test_port_change_reaches_the_running_station(station: Station) -> None:
    old, new = station.port, free_port()
    configure(station.data, f"dicom.port={new}")
    try:
        wait_port(new, timeout=20)
        wait_for(lambda: echo_ok(station, new), what="echo on the new port", timeout=20.0)
        wait_for(lambda: not echo_ok(station, old), what="the old port to close", timeout=20.0)
    finally:
        configure(station.data, f"dicom.port={old}")
    wait_port(old, timeout=20)
    wait_for(lambda: echo_ok(station, old), what="echo on the old port again", timeout=20.0)


def test_port_taken_by_another_program_is_retried(station: Station) -> None:
    """A new port that is in use: the TLS port keeps serving, and the port opens once it is free."""
    old = station.port
    blocker = socket.create_server(("0.0.0.0", 0))
    taken = blocker.getsockname()[1]
    ca = str(station.data / "tls" / "ca.pem")

    def tls_echo() -> bool:
        r = dcmtk("echoscu", "-to", "5", "+tla", "+cf", ca, "-aec", "BURNSTATION", "127.0.0.1",
                  str(station.tls_port), timeout=30)
        return r.returncode == 0

    try:
        configure(station.data, f"dicom.port={taken}")
        wait_for(lambda: f"cannot open plain port *:{taken}" in station.log(), what="the bind failure", timeout=20.0)
        assert not echo_ok(station, old)
        wait_for(tls_echo, what="the TLS port to serve while the plain one is taken", timeout=20.0)
    finally:
        blocker.close()
    try:
        wait_for(lambda: echo_ok(station, taken), what="the freed port to be opened", timeout=20.0)
        assert tls_echo()
    finally:
        configure(station.data, f"dicom.port={old}")
    wait_for(lambda: echo_ok(station, old), what="echo on the old port again", timeout=20.0)


def test_aet_change_reaches_the_running_station(station: Station) -> None:
    configure(station.data, "dicom.aet=NEWNAME")
    try:
        def answers(title: str) -> bool:
            return dcmtk("echoscu", "-aec", title, "127.0.0.1", str(station.port)).returncode == 0

        wait_for(lambda: answers("NEWNAME_TE") and not answers("BURNSTATION"), what="the new AE title", timeout=20.0)
    finally:
        configure(station.data, "dicom.aet=BURNSTATION")
    wait_for(lambda: echo_ok(station), what="the old AE title again", timeout=20.0)


def test_reindex_after_losing_state_db(station: Station, tmp_path: Path) -> None:
    files = write_study(tmp_path / "in", 2, 2, patient_id="PREIDX", rows=8, cols=8)
    r = dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(station.port), *map(str, files))
    assert r.returncode == 0, r.stderr
    everything = indexed(station, tmp_path)
    assert {str(dcmread(p).SOPInstanceUID) for p in files} <= everything
    assert everything == stored_sops(station)
    station.stop()
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (station.data / name).unlink(missing_ok=True)
    junk = station.data / "storage" / "junk.dcm"
    junk.write_bytes(b"not DICOM at all")
    proc = burnstation(station.data, "reindex")
    assert f"indexed {len(everything)} instances" in proc.stdout, proc.stdout
    assert "1 unreadable" in proc.stdout
    junk.unlink()
    station.start()
    assert indexed(station, tmp_path) == everything
