"""Per-device TLS material: a CA made at `burnstation init` and a server certificate it signs.

Nothing is shipped: every station makes its own keys, so no two devices share a private key.
Files live in `<data>/tls/`: `ca.pem` (give this to peers), `ca.key`, `server.pem`, `server.key`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def tls_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "tls"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_device_tls(data_dir: str | os.PathLike[str], common_name: str, *, days: int = 3650,
                      force: bool = False) -> Path:
    """Make the device CA and server certificate unless they exist; returns the CA certificate path."""
    folder = tls_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    ca_pem = folder / "ca.pem"
    if ca_pem.exists() and (folder / "server.pem").exists() and not force:
        return ca_pem
    now = datetime.datetime.now(datetime.UTC)
    hostname = socket.gethostname()

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "BurnStation"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"BurnStation device CA {hostname}"[:64])])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(hostname),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "BurnStation"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or hostname)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(folder / "ca.key", _key_pem(ca_key))
    _write_private(folder / "server.key", _key_pem(key))
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                                         + ca_cert.public_bytes(serialization.Encoding.PEM))
    ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return ca_pem


def server_context(data_dir: str | os.PathLike[str], *, require_client_cert: bool = False,
                   trusted_ca: str = "") -> ssl.SSLContext:
    """TLS 1.2+ server context with the device certificate (BCP 195)."""
    folder = tls_dir(data_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(folder / "server.pem", folder / "server.key")
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(trusted_ca or str(folder / "ca.pem"))
    return ctx


def client_context(data_dir: str | os.PathLike[str], *, trusted_ca: str = "") -> ssl.SSLContext:
    """TLS 1.2+ client context for outgoing associations to TLS nodes (device cert as client cert)."""
    folder = tls_dir(data_dir)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=trusted_ca or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if (folder / "ca.pem").exists():
        ctx.load_verify_locations(folder / "ca.pem")
    ctx.check_hostname = False
    if (folder / "server.pem").exists():
        ctx.load_cert_chain(folder / "server.pem", folder / "server.key")
    return ctx


def certificate_expiry(data_dir: str | os.PathLike[str]) -> datetime.datetime | None:
    path = tls_dir(data_dir) / "server.pem"
    if not path.exists():
        return None
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.not_valid_after_utc
