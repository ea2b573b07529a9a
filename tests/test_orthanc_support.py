"""The test Orthanc starts although a port picked for it was taken meanwhile (a parallel test, an
outgoing connection): the flaky start a clean-clone CI run met."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from orthanc_support import Orthanc
from support import wait_for

pytestmark = pytest.mark.station  # Orthanc processes: not in the fast tier


def _listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_taken_http_port_is_picked_again(tmp_path: Path) -> None:
    orthanc = Orthanc(tmp_path / "o", "HTTPTAKEN")
    taken = orthanc.http_port
    with _listen(taken), orthanc:
        assert orthanc.http_port != taken
        assert orthanc.get("/system")["DicomAet"] == "HTTPTAKEN"


def test_a_taken_dicom_port_is_waited_for(tmp_path: Path) -> None:
    orthanc = Orthanc(tmp_path / "o", "DICOMTAKEN")
    holder = _listen(orthanc.dicom_port)

    log = tmp_path / "o" / "orthanc.log"

    def release() -> None:  # the holder lets go once Orthanc has failed on it
        wait_for(lambda: log.exists() and "DICOM server is privileged or already in use" in
                 log.read_text(errors="replace"), 60, "a failed start")
        holder.close()

    releasing = threading.Thread(target=release)
    releasing.start()
    try:
        with orthanc:
            assert orthanc.get("/system")["DicomPort"] == orthanc.dicom_port
    finally:
        releasing.join(60)
        holder.close()
