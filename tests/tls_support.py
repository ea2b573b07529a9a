"""TLS helpers shared by the TLS tests: certificates made on the fly, dcmtk echoscu and openssl s_client."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import Station, dcmtk

PrivateKey = ec.EllipticCurvePrivateKey


def make_ca(name: str) -> tuple[PrivateKey, x509.Certificate]:
    """A throw-away CA (key, certificate), valid for two days."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def load_ca(folder: Path) -> tuple[PrivateKey, x509.Certificate]:
    """The station's own device CA (tls/ca.key, tls/ca.pem)."""
    key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())


def make_leaf(ca_key: PrivateKey, ca: x509.Certificate, folder: Path, name: str, *,
              expired: bool = False, server: bool = False) -> tuple[str, str]:
    """A certificate signed by `ca` (key file, certificate file); `expired`: ended yesterday;
    `server`: names 127.0.0.1 and localhost, with the CA appended (a chain as the station serves it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start, end = ((now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)) if expired
                  else (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2)))
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if server:
        import ipaddress
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    chain = cert.public_bytes(serialization.Encoding.PEM)
    if server:
        chain += ca.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(chain)
    return str(key_path), str(cert_path)


def make_client(ca_key: PrivateKey, ca: x509.Certificate, folder: Path, name: str) -> tuple[str, str]:
    """A client certificate signed by `ca` (key file, certificate file)."""
    return make_leaf(ca_key, ca, folder, name)


def station_ca(st: Station) -> str:
    return str(st.data / "tls" / "ca.pem")


def echo_plain(st: Station, port: int | None = None) -> tuple[int, str]:
    """dcmtk echoscu without TLS: (exit code, output)."""
    r = dcmtk("echoscu", "-d", "-to", "10", "-ta", "10", "-aec", "BURNSTATION", "127.0.0.1",
              str(port or st.port), timeout=60)
    return r.returncode, r.stdout + r.stderr


def echo_tls(st: Station, port: int | None = None, *cert: str, ca: str = "") -> tuple[int, str]:
    """dcmtk echoscu over TLS trusting `ca` (default the station's CA); `cert`: (key, certificate)
    to present, else anonymous (+tla)."""
    how = ["+tls", *cert] if cert else ["+tla"]
    r = dcmtk("echoscu", "-d", "-to", "10", "-ta", "10", *how, "+cf", ca or station_ca(st), "-aec", "BURNSTATION",
              "127.0.0.1", str(port or st.tls_port), timeout=60)
    return r.returncode, r.stdout + r.stderr


def s_client(port: int, ca: str, *args: str) -> tuple[int, str]:
    """`openssl s_client` to 127.0.0.1:port, verifying the peer against `ca`, closing at once
    after the handshake: (exit code, stdout + stderr)."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", ca,
                        "-verify_return_error", *args], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=30)
    return r.returncode, r.stdout + r.stderr
