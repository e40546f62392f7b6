"""The cluster's HTTPS certificates: a CA made at ``cluster init`` and one certificate
per member, ECDSA P-256 (what every browser and TLS client accepts; Ed25519 server
certificates are still refused by several browsers).

Each member's certificate names its address (IP SAN, or DNS SAN when the address is a
host name) and its member name (DNS SAN), is valid ~10 years (the CA too: a cluster
outlives a 398-day browser rule that only applies to public CAs) and is signed by the CA.

Where the CA's key goes: nowhere but the directory ``cluster init`` wrote
(``<out>/ca/ca.key``), never into a member's configuration. A member needs only its own
certificate and key and the CA's certificate (to hand to clients): a member that leaks
its directory then leaks one server key, not the power to mint certificates for any
name. ``cluster add-node`` can sign a new member's certificate where that CA key was
kept (``sign_member``); without it, an administrator supplies their own
(``http.cert``/``http.key`` in cluster.json).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
MEMBER_CERT = "http.crt"
MEMBER_KEY = "http.key"
VALID_DAYS = 3650


class TlsError(ValueError):
    """A certificate or key that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def make_ca(cluster: str) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hacluster {cluster} CA")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def sign_member(ca: Pem, cluster: str, name: str, host: str) -> Pem:
    """A server certificate for member ``name`` at ``host`` (an IP address or a name)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TlsError("the CA key is not an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    try:
        sans.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        if host != name:
            sans.append(x509.DNSName(host))
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME,
                                                        f"hacluster {cluster}")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_ca(directory: Path, ca: Pem) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(directory / CA_CERT, ca.cert, 0o644)
    _write(directory / CA_KEY, ca.key, 0o600)


def read_ca(directory: Path) -> Pem:
    try:
        return Pem((directory / CA_CERT).read_bytes(), (directory / CA_KEY).read_bytes())
    except OSError as e:
        raise TlsError(f"{directory}: no cluster CA there ({e.strerror}): give the directory "
                       f"cluster init wrote its {CA_CERT} and {CA_KEY} to") from None


def write_member(directory: Path, member: Pem, ca_cert: bytes) -> None:
    """A member's certificate and key (0600) and the CA certificate, into its config dir."""
    _write(directory / MEMBER_CERT, member.cert, 0o644)
    _write(directory / MEMBER_KEY, member.key, 0o600)
    _write(directory / CA_CERT, ca_cert, 0o644)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The TLS context of the API's listener (TLS 1.2 or later)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise TlsError(f"{cert} / {key}: cannot be used as the HTTPS certificate and key "
                       f"({getattr(e, 'strerror', None) or e})") from None
    return ctx
