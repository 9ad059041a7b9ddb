"""A small private PKI for a lab (or a test's loopback shards): one CA, one server
certificate per shard, with the shard's name and IP as subjectAltName.

Keys are ECDSA P-256 (fast to make and to handshake with) and written mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365


@dataclass(frozen=True)
class KeyPair:
    cert_file: str
    key_file: str


def _write_key(path: str, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: str, cert: x509.Certificate) -> None:
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, public: ec.EllipticCurvePublicKey) -> Any:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
    )


def make_ca(directory: str, common_name: str) -> KeyPair:
    """A new self-signed CA in ``directory`` (ca.pem, ca.key)."""
    os.makedirs(directory, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(common_name, _name(common_name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    pair = KeyPair(f"{directory}/ca.pem", f"{directory}/ca.key")
    _write_key(pair.key_file, key)
    _write_cert(pair.cert_file, cert)
    return pair


def issue_server(
    ca: KeyPair, prefix: str, name: str, sans: Sequence[str], client_too: bool = False
) -> KeyPair:
    """A server certificate signed by ``ca`` for ``name``, valid for each of ``sans`` (IP
    addresses or DNS names), written to ``{prefix}.pem`` and ``{prefix}.key``. ``client_too``:
    usable as a client certificate as well (an etcd member with ``--client-cert-auth``: its
    gRPC gateway dials the member itself with it)."""
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if client_too:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    return _issue(ca, prefix, name, sans, usages)


def issue_client(ca: KeyPair, prefix: str, name: str) -> KeyPair:
    """A client certificate signed by ``ca`` for ``name`` (e.g. a shard to etcd with
    ``--client-cert-auth``), written to ``{prefix}.pem`` and ``{prefix}.key``."""
    return _issue(ca, prefix, name, [name], [ExtendedKeyUsageOID.CLIENT_AUTH])


def _issue(
    ca: KeyPair, prefix: str, name: str, sans: Sequence[str], usages: list[x509.ObjectIdentifier]
) -> KeyPair:
    with open(ca.cert_file, "rb") as f:
        ca_cert = x509.load_pem_x509_certificate(f.read())
    with open(ca.key_file, "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for san in sans:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            alt.append(x509.DNSName(san))
    cert = (
        _builder(name, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pair = KeyPair(f"{prefix}.pem", f"{prefix}.key")
    _write_key(pair.key_file, key)
    _write_cert(pair.cert_file, cert)
    return pair
