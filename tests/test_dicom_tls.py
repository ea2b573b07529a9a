"""Port 1 plain, port 2 TLS 1.2+ with the device certificate, client certificates on request.

Everything runs against one real `burnstation run` process and dcmtk's echoscu; the settings
changes in the middle reach the running station without a restart.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import warnings
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from support import Station, configure, dcmtk, wait_for, wait_port
from tls_support import make_ca as _make_ca
from tls_support import make_client as _make_client


@pytest.fixture(scope="module")
def tls_station(tmp_path_factory: pytest.TempPathFactory):
    st = Station(tmp_path_factory.mktemp("tls") / "data")
    st.start()
    wait_port(st.tls_port)
    yield st
    st.stop()


def _ca(st: Station) -> str:
    return str(st.data / "tls" / "ca.pem")


def echo_plain(st: Station, port: int | None = None) -> tuple[int, str]:
    r = dcmtk("echoscu", "-to", "10", "-ta", "10", "-aec", "BURNSTATION", "127.0.0.1", str(port or st.port),
              timeout=60)
    return r.returncode, r.stdout + r.stderr


def echo_tls(st: Station, port: int | None = None, *cert: str) -> tuple[int, str]:
    how = ["+tls", *cert] if cert else ["+tla"]
    r = dcmtk("echoscu", "-to", "10", "-ta", "10", *how, "+cf", _ca(st), "-aec", "BURNSTATION", "127.0.0.1",
              str(port or st.tls_port), timeout=60)
    return r.returncode, r.stdout + r.stderr


def test_echo_plain_and_tls(tls_station: Station) -> None:
    code, out = echo_plain(tls_station)
    assert code == 0, out
    code, out = echo_tls(tls_station)
    assert code == 0, out


def test_tls_peer_must_trust_the_device_ca(tls_station: Station, tmp_path: Path) -> None:
    """The server certificate is really checked by dcmtk: another CA does not verify it."""
    other = tmp_path / "other.pem"
    other.write_bytes(_make_ca("Someone else")[1].public_bytes(serialization.Encoding.PEM))
    r = dcmtk("echoscu", "-to", "10", "+tla", "+cf", str(other), "-aec", "BURNSTATION", "127.0.0.1",
              str(tls_station.tls_port), timeout=60)
    assert r.returncode != 0
    assert echo_tls(tls_station)[0] == 0


def test_plain_on_tls_port_and_tls_on_plain_port_fail_cleanly(tls_station: Station) -> None:
    code, out = echo_plain(tls_station, tls_station.tls_port)
    assert code != 0, out
    code, out = echo_tls(tls_station, tls_station.port)
    assert code != 0, out
    # the station still serves both ports
    assert echo_plain(tls_station)[0] == 0
    assert echo_tls(tls_station)[0] == 0
    assert tls_station.proc is not None and tls_station.proc.poll() is None


def test_silent_client_does_not_block_the_tls_port(tls_station: Station) -> None:
    """A peer that connects to the TLS port and never speaks must not stall other TLS clients."""
    silent = [socket.create_connection(("127.0.0.1", tls_station.tls_port)) for _ in range(3)]
    try:
        started = time.monotonic()
        code, out = echo_tls(tls_station)
        assert code == 0, out
        assert time.monotonic() - started < 8
    finally:
        for s in silent:
            s.close()


def test_tls_1_1_refused(tls_station: Station) -> None:
    """A TLS 1.1 client is refused by the station, while the same client works with a permissive server."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        client.set_ciphers("DEFAULT:@SECLEVEL=0")
        client.minimum_version = ssl.TLSVersion.TLSv1_1
        client.maximum_version = ssl.TLSVersion.TLSv1_1
        # control: a server that allows TLS 1.1, so the client can speak it here at all
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.set_ciphers("DEFAULT:@SECLEVEL=0")
        server.minimum_version = ssl.TLSVersion.TLSv1_1
    server.load_cert_chain(tls_station.data / "tls" / "server.pem", tls_station.data / "tls" / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_once() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass

    worker = threading.Thread(target=serve_once, daemon=True)
    worker.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                client.wrap_socket(raw) as tls:
            assert tls.version() == "TLSv1.1"
    except ssl.SSLError as exc:  # pragma: no cover - depends on the system OpenSSL policy
        pytest.skip(f"this OpenSSL cannot speak TLS 1.1 at all ({exc}); refusal not demonstrable")
    finally:
        worker.join(10)
        listener.close()
    with socket.create_connection(("127.0.0.1", tls_station.tls_port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            client.wrap_socket(raw).close()
    assert echo_tls(tls_station)[0] == 0


def test_port_zero_closes_the_tls_port_live(tls_station: Station) -> None:
    configure(tls_station.data, "dicom.tls_port=0")
    try:
        wait_for(lambda: _refused(tls_station.tls_port), 15.0, "the TLS port to close")
        assert echo_plain(tls_station)[0] == 0
    finally:
        configure(tls_station.data, f"dicom.tls_port={tls_station.tls_port}")
    wait_for(lambda: echo_tls(tls_station)[0] == 0, 15.0, "TLS echo to succeed")


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except OSError:  # reset while the listener goes away: ask again
        return False
    return False


# --------------------------------------------------------------------------- client certificates


def test_client_certificate_required(tls_station: Station, tmp_path: Path) -> None:
    ca_key, ca = _make_ca("Hospital clients CA")
    trusted = tmp_path / "clients-ca.pem"
    trusted.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    good = _make_client(ca_key, ca, tmp_path, "modality")
    rogue_key, rogue_ca = _make_ca("Rogue CA")
    rogue = _make_client(rogue_key, rogue_ca, tmp_path, "rogue")

    configure(tls_station.data, "dicom.tls_require_client_cert=true",
                f"dicom.tls_trusted_ca={trusted}")
    try:
        # the running station rebinds the TLS listener on its own
        wait_for(lambda: echo_tls(tls_station)[0] != 0, 15.0, "anonymous TLS to be refused")
        wait_for(lambda: echo_tls(tls_station, None, *good)[0] == 0, 15.0, "TLS echo with the client certificate")
        code, out = echo_tls(tls_station, None, *good)
        assert code == 0, out
        code, out = echo_tls(tls_station)
        assert code != 0, out
        code, out = echo_tls(tls_station, None, *rogue)
        assert code != 0, out
        assert echo_plain(tls_station)[0] == 0
    finally:
        configure(tls_station.data, "dicom.tls_require_client_cert=false",
                    "dicom.tls_trusted_ca=")
    wait_for(lambda: echo_tls(tls_station)[0] == 0, 15.0, "TLS echo to succeed")
