"""The TLS matrix, as Orthanc tests its own TLS: every wrong way in is refused the way the protocol
says, and the station answers the next good request.

DICOM port 2 (TLS) and port 1 (plain), and the web's HTTPS, against one real `burnstation run`,
with real clients: dcmtk's echoscu (+tls) and `openssl s_client`. Cases: plain DICOM on the TLS
port, TLS on the plain port, a CA that did not sign the station's certificate, an expired server
certificate, client certificates required and missing, untrusted or expired, TLS 1.0/1.1, and
weak TLS 1.2 cipher suites (CBC, SHA-1, NULL, anonymous).
"""

from __future__ import annotations

import http.client
import socket
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from support import Station, configure, wait_for, wait_port
from tls_support import echo_plain, echo_tls, load_ca, make_ca, make_client, make_leaf, s_client, station_ca


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory):
    station = Station(tmp_path_factory.mktemp("tlsmatrix") / "data", http__ssl=True)
    station.start()
    wait_port(station.tls_port)
    wait_port(station.http_port)
    yield station
    station.stop()


def https_get(st: Station, path: str = "/setup", ca: str = "") -> int:
    """A GET over HTTPS that verifies the station's certificate; returns the status."""
    ctx = ssl.create_default_context(cafile=ca or station_ca(st))
    conn = http.client.HTTPSConnection("127.0.0.1", st.http_port, context=ctx, timeout=15)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def good_requests(st: Station) -> None:
    """The station still serves both DICOM ports and HTTPS, and still runs."""
    code, out = echo_tls(st)
    assert code == 0, out
    code, out = echo_plain(st)
    assert code == 0, out
    assert https_get(st) == 200
    assert st.proc is not None and st.proc.poll() is None


def other_ca(tmp_path: Path) -> str:
    path = tmp_path / "other-ca.pem"
    path.write_bytes(make_ca("Someone else")[1].public_bytes(serialization.Encoding.PEM))
    return str(path)


# --------------------------------------------------------------------------- ports mixed up


def test_plain_dicom_on_the_tls_port_is_refused(st: Station) -> None:
    code, out = echo_plain(st, st.tls_port)
    assert code != 0, out
    # no TLS, no DICOM: the station closes the connection after the failed handshake
    assert "Association Request Failed: 0006:0317 Peer aborted Association (or never connected)" in out, out
    good_requests(st)


def test_tls_on_the_plain_dicom_port_is_refused(st: Station) -> None:
    code, out = echo_tls(st, st.port)
    assert code != 0, out
    assert "Association Request Failed: 000b:090b TLS error: wrong version number" in out, out
    code, out = s_client(st.port, station_ca(st))
    assert code != 0, out
    assert "Cipher is (NONE)" in out and "wrong version number" in out, out
    # what the station answers a TLS ClientHello on the plain port: a DICOM A-ABORT PDU (type 7,
    # length 4), then it waits for the peer to close (DICOM's Sta13, bounded by the ARTIM timer)
    abort = raw_answer(st.port, client_hello(), upto=10)
    assert abort[:6] == b"\x07\x00\x00\x00\x00\x04" and len(abort) == 10, abort
    good_requests(st)


def client_hello() -> bytes:
    """The first flight of a TLS client, as bytes."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def raw_answer(port: int, data: bytes, upto: int = 1 << 20) -> bytes:
    """Send `data` on a fresh connection; what the station answers until it closes (or `upto` bytes)."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(data)
        try:
            while len(answer) < upto and (chunk := sock.recv(upto - len(answer))):
                answer += chunk
        except ConnectionResetError:  # closed with our bytes unread
            pass
    return answer


def test_plain_http_on_the_https_port_is_dropped(st: Station) -> None:
    answer = raw_answer(st.http_port, b"GET /login HTTP/1.1\r\nHost: station\r\nConnection: close\r\n\r\n")
    assert answer == b"", answer[:400]  # the TLS layer drops it: no byte of a page in clear text
    good_requests(st)


# --------------------------------------------------------------------------- the server's certificate


def test_a_ca_that_did_not_sign_the_station_is_refused(st: Station, tmp_path: Path) -> None:
    wrong = other_ca(tmp_path)
    code, out = echo_tls(st, None, ca=wrong)
    assert code != 0, out
    assert "Association Request Failed: 000b:0886 TLS error: certificate verify failed" in out, out
    for port in (st.tls_port, st.http_port):
        code, out = s_client(port, wrong)
        assert code != 0, out
        assert "self-signed certificate in certificate chain" in out and "certificate verify failed" in out, out
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(st, ca=wrong)
    good_requests(st)


def test_an_expired_server_certificate_is_refused_by_the_clients(st: Station, tmp_path: Path) -> None:
    """The station serves what it has; clients that check (dcmtk, openssl, Python) refuse an expired one."""
    tls = st.data / "tls"
    saved = {name: (tls / name).read_bytes() for name in ("server.pem", "server.key")}
    ca_key, ca = load_ca(tls)
    key, cert = make_leaf(ca_key, ca, tmp_path, "expired-server", expired=True, server=True)
    (tls / "server.key").write_bytes(Path(key).read_bytes())
    (tls / "server.pem").write_bytes(Path(cert).read_bytes())
    (tls / "web.key").write_bytes(Path(key).read_bytes())  # HTTPS: as if an uploaded certificate had expired
    (tls / "web.pem").write_bytes(Path(cert).read_bytes())
    configure(st.data, "dicom.timeout=31")  # any settings change makes the DICOM listeners reload the certificate
    try:
        for port in (st.tls_port, st.http_port):
            wait_for(lambda port=port: "certificate has expired" in s_client(port, station_ca(st))[1], 15,
                     f"the expired certificate on port {port}")
            code, out = s_client(port, station_ca(st))
            assert code != 0, out
            assert "certificate has expired" in out, out
        with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
            https_get(st)
        code, out = echo_tls(st)
        assert code != 0, out
        assert "TLS error: certificate verify failed" in out, out
    finally:
        for name, data in saved.items():
            (tls / name).write_bytes(data)
        (tls / "web.pem").unlink()
        (tls / "web.key").unlink()
        configure(st.data, "dicom.timeout=30")
    wait_for(lambda: echo_tls(st)[0] == 0, 15, "TLS echo with the good certificate")
    wait_for(lambda: s_client(st.http_port, station_ca(st))[0] == 0, 15, "HTTPS with the good certificate")
    good_requests(st)


# --------------------------------------------------------------------------- client certificates


def test_client_certificate_required_missing_untrusted_or_expired(st: Station, tmp_path: Path) -> None:
    ca_key, ca = make_ca("Hospital clients CA")
    trusted = tmp_path / "clients-ca.pem"
    trusted.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    good = make_client(ca_key, ca, tmp_path, "modality")
    expired = make_leaf(ca_key, ca, tmp_path, "old-modality", expired=True)
    rogue_key, rogue_ca = make_ca("Rogue CA")
    rogue = make_client(rogue_key, rogue_ca, tmp_path, "rogue")
    configure(st.data, "dicom.tls_require_client_cert=true", f"dicom.tls_trusted_ca={trusted}")
    try:
        wait_for(lambda: echo_tls(st, None, *good)[0] == 0 and echo_tls(st)[0] != 0, 15,
                 "client certificates to be required")
        for cert, alert in ((None, "certificate required"), (rogue, "unknown ca"), (expired, "certificate expired")):
            code, out = echo_tls(st, None, *(cert or ()))
            assert code != 0, out
            args = ["-cert", cert[1], "-key", cert[0]] if cert else []
            # TLS 1.2: the server's verdict arrives within the handshake, as an alert
            code, out = s_client(st.tls_port, station_ca(st), "-tls1_2", *args)
            assert code != 0, out
            assert f"alert {alert}" in out or (cert is None and "alert handshake failure" in out), (alert, out)
            code, out = echo_tls(st, None, *good)
            assert code == 0, out
        # plain DICOM and HTTPS never ask for a client certificate
        assert echo_plain(st)[0] == 0
        assert https_get(st) == 200
    finally:
        configure(st.data, "dicom.tls_require_client_cert=false", "dicom.tls_trusted_ca=")
    wait_for(lambda: echo_tls(st)[0] == 0, 15, "anonymous TLS echo again")
    good_requests(st)


# --------------------------------------------------------------------------- protocol versions and ciphers


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_tls_1_0_and_1_1_are_refused(st: Station, version: str) -> None:
    """openssl offers exactly that version; the station answers with the protocol_version alert (70)."""
    for port in (st.tls_port, st.http_port):
        code, out = s_client(port, station_ca(st), version, "-cipher", "DEFAULT:@SECLEVEL=0")
        assert code != 0, out
        assert "alert protocol version" in out, out
    good_requests(st)


WEAK = ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384",  # CBC (Lucky 13 family), not AEAD
        "ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA",        # CBC with SHA-1
        "ECDHE-ECDSA-NULL-SHA", "NULL", "aNULL"]                    # no encryption, no authentication


@pytest.mark.parametrize("cipher", WEAK)
def test_weak_tls_1_2_ciphers_are_refused(st: Station, cipher: str) -> None:
    for port in (st.tls_port, st.http_port):
        code, out = s_client(port, station_ca(st), "-tls1_2", "-cipher", f"{cipher}:@SECLEVEL=0")
        assert code != 0, out
        assert "alert handshake failure" in out, out
    good_requests(st)


def test_strong_ciphers_and_tls_1_3_are_served(st: Station) -> None:
    """The control for the refusals above: the same client with a modern suite gets through."""
    for port in (st.tls_port, st.http_port):
        code, out = s_client(port, station_ca(st), "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
        assert code == 0, out
        assert "Cipher is ECDHE-ECDSA-AES128-GCM-SHA256" in out, out
        code, out = s_client(port, station_ca(st), "-tls1_3")
        assert code == 0, out
        assert "TLSv1.3" in out, out
