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
import warnings
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


# TLS 1.2 cipher suites a server offers (TLS 1.3's are all AEAD already): forward-secret ECDHE
# with an AEAD cipher only, as BCP 195 (RFC 9325) recommends. Python's default list also accepts
# the CBC suites (ECDHE-*-AES*-SHA256/384) and finite-field DHE: refused here.
SERVER_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"


def _server_base() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(SERVER_CIPHERS)
    return ctx


def server_context(data_dir: str | os.PathLike[str], *, require_client_cert: bool = False,
                   trusted_ca: str = "") -> ssl.SSLContext:
    """TLS 1.2+ server context with the device certificate, AEAD ciphers only (BCP 195)."""
    folder = tls_dir(data_dir)
    ctx = _server_base()
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


# --------------------------------------------------------------------------- the web server's certificate

WEB_CERT, WEB_KEY = "web.pem", "web.key"


class CertificateError(ValueError):
    """An uploaded certificate or key was refused; the message says why."""


def web_cert_paths(data_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The certificate chain and key HTTPS uses: the uploaded pair, else the device's own."""
    folder = tls_dir(data_dir)
    if (folder / WEB_CERT).exists() and (folder / WEB_KEY).exists():
        return folder / WEB_CERT, folder / WEB_KEY
    return folder / "server.pem", folder / "server.key"


def web_context(data_dir: str | os.PathLike[str]) -> ssl.SSLContext:
    """TLS 1.2+ server context for HTTPS with `web_cert_paths`, AEAD ciphers only (BCP 195)."""
    cert, key = web_cert_paths(data_dir)
    ctx = _server_base()
    ctx.load_cert_chain(cert, key)
    return ctx


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(a) for a in san.get_values_for_type(x509.IPAddress))]


def _name_matches(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def _system_issuer(cert: x509.Certificate) -> bool:
    """True when a CA of the system trust store signed `cert` directly."""
    cafile = ssl.get_default_verify_paths().cafile
    if not cafile or not os.path.exists(cafile):
        return False
    marker = b"-----END CERTIFICATE-----"
    for block in Path(cafile).read_bytes().split(marker)[:-1]:
        try:
            with warnings.catch_warnings():  # old roots with odd serial numbers: not ours to judge
                warnings.simplefilter("ignore")
                root = x509.load_pem_x509_certificate(block.strip() + b"\n" + marker + b"\n")
        except ValueError:
            continue
        if root.subject == cert.issuer:
            try:
                cert.verify_directly_issued_by(root)
                return True
            except Exception:
                continue
    return False


def check_web_certificate(cert_pem: bytes, key_pem: bytes, server_name: str = "",
                          now: datetime.datetime | None = None) -> str:
    """Check an uploaded pair before use; returns a summary, or raises CertificateError with the reason.

    The key must match the first certificate, every certificate must be valid now, each must be
    signed by the next (the last one by itself or by a CA the system trusts), and the server
    name (when set) must be among the certificate's names.
    """
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise CertificateError("the certificate file holds no PEM certificate") from None
    try:
        key = load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise CertificateError("the key file holds no PEM private key without a password") from None
    leaf = chain[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise CertificateError("the key does not belong to the certificate")
    now = now or datetime.datetime.now(datetime.UTC)
    for cert in chain:
        subject = cert.subject.rfc4514_string()
        if cert.not_valid_after_utc < now:
            raise CertificateError(f"certificate {subject} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
        if cert.not_valid_before_utc > now:
            raise CertificateError(f"certificate {subject} is valid only from {cert.not_valid_before_utc:%Y-%m-%d}")
    for child, parent in zip(chain, chain[1:], strict=False):
        try:
            child.verify_directly_issued_by(parent)
        except Exception:
            raise CertificateError(f"chain broken: {child.subject.rfc4514_string()} is not signed by the next "
                                   f"certificate in the file ({parent.subject.rfc4514_string()})") from None
    last = chain[-1]
    self_signed = False
    if last.issuer == last.subject:
        try:
            last.verify_directly_issued_by(last)
            self_signed = True
        except Exception:
            pass
    if not self_signed and not _system_issuer(last):
        raise CertificateError(f"chain incomplete: add the certificate of {last.issuer.rfc4514_string()} "
                               "(the intermediate and root CAs) after the server certificate")
    names = _names(leaf)
    if server_name and not any(_name_matches(n, server_name) for n in names):
        raise CertificateError(f"the certificate is for {', '.join(names) or 'no DNS name'}, not for the web "
                               f"server name {server_name!r} (http.server_name)")
    return (f"{leaf.subject.rfc4514_string()}, names {', '.join(names) or '-'}, "
            f"valid until {leaf.not_valid_after_utc:%Y-%m-%d}")


def install_web_certificate(data_dir: str | os.PathLike[str], cert_pem: bytes, key_pem: bytes,
                            server_name: str = "") -> str:
    """Check and store the pair as tls/web.pem and tls/web.key (0600); returns the summary."""
    summary = check_web_certificate(cert_pem, key_pem, server_name)
    folder = tls_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in ((WEB_KEY, key_pem), (WEB_CERT, cert_pem)):
        tmp = folder / f".{name}.tmp"
        _write_private(tmp, data)
        os.replace(tmp, folder / name)
    return summary


def remove_web_certificate(data_dir: str | os.PathLike[str]) -> bool:
    """Back to the device certificate; False when none was uploaded."""
    folder = tls_dir(data_dir)
    found = (folder / WEB_CERT).exists()
    for name in (WEB_CERT, WEB_KEY):
        (folder / name).unlink(missing_ok=True)
    return found


def web_certificate_summary(data_dir: str | os.PathLike[str]) -> dict[str, str] | None:
    """What HTTPS serves: {"source", "subject", "names", "expires"}; None without any certificate."""
    cert_path, _ = web_cert_paths(data_dir)
    if not cert_path.exists():
        return None
    cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    return {"source": "uploaded" if cert_path.name == WEB_CERT else "device", "subject": cert.subject.rfc4514_string(),
            "names": ", ".join(_names(cert)), "expires": f"{cert.not_valid_after_utc:%Y-%m-%d}"}
