"""The DICOM server stops in bounded time (in this process, no station): a connection that never
sent an A-ASSOCIATE-RQ (a port probe) is closed at once, a running association gets the grace
period and is then aborted, and the whole stop ends well inside the supervisor's 5 s kill time-out."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from support import dicom_server, wait_dicom, wait_for

from appliance.dicom.server import ABORT_WAIT, STOP_GRACE, DicomServer


@pytest.fixture
def server(tmp_path: Path):
    with dicom_server(tmp_path / "data", "dicom.timeout=30") as srv:
        yield srv


def _probe(port: int) -> socket.socket:
    """A connection that sends nothing (as a bare port probe), kept open by the peer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _pending(srv: DicomServer) -> int:
    return sum(len(s.active_associations) for s in srv.servers)


def test_connections_without_a_request_are_closed_at_once(server: DicomServer):
    wait_dicom(server.port)
    kept = _probe(server.port)
    _probe(server.port).close()  # connect and go: the library still waits for the request
    wait_for(lambda: _pending(server) >= 2, 10, "both connections taken as associations", every=0.05)
    threads = [assoc for s in server.servers for assoc in s.active_associations]
    t0 = time.monotonic()
    server.stop()
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, elapsed  # not the grace period: nothing was running
    assert not [t for t in threads if t.is_alive()]  # their threads ended too, not left waiting
    kept.settimeout(5)
    assert kept.recv(10) == b""  # closed by the server
    kept.close()


def test_a_running_association_gets_the_grace_then_an_abort(server: DicomServer):
    wait_dicom(server.port)
    ae = AE(ae_title="IDLER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="BURNSTATION")
    assert assoc.is_established
    probe = _probe(server.port)
    t0 = time.monotonic()
    server.stop(grace=1.0)
    elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 1.0 + ABORT_WAIT + 0.5, elapsed  # waited for the association, not the probe
    wait_for(lambda: assoc.is_aborted or not assoc.is_alive(), 5, "the peer told of the abort", every=0.05)
    assert assoc.is_aborted
    probe.close()


def test_stop_is_bounded_well_inside_the_kill_timeout():
    assert STOP_GRACE + ABORT_WAIT <= 3.0  # the supervisor sends SIGKILL after 5 s
