"""A development certificate authority for mTLS on one machine (``safehub up``, tests).

Creates a CA, a server certificate for the hub's endpoints (localhost, 127.0.0.1) and one
client certificate per client system (subject CN = client id, as the directory names it).
Production deployments bring their own PKI; the gateway only needs the CA bundle and its
own key pair.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=30)


@dataclass(frozen=True)
class KeyPair:
    """PEM paths of a certificate and its private key."""

    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM)."""
        return self.cert.read_bytes(), self.key.read_bytes()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class DevPki:
    """A CA under ``root`` that issues server and client certificates on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = KeyPair(root / "ca.pem", root / "ca.key")
        if not self.ca.cert.exists():
            self._create_ca()
        self._ca_cert = x509.load_pem_x509_certificate(self.ca.cert.read_bytes())
        loaded = serialization.load_pem_private_key(self.ca.key.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise TypeError("dev CA key must be an EC key")
        self._ca_key = loaded

    def _create_ca(self) -> None:
        key = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SafeHub dev CA")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256())
        )
        _write(self.ca.key, _pem_key(key), private=True)
        _write(self.ca.cert, cert.public_bytes(serialization.Encoding.PEM))

    def _issue(self, name: str, path: Path, *, server: bool) -> KeyPair:
        pair = KeyPair(path.with_suffix(".pem"), path.with_suffix(".key"))
        if pair.cert.exists() and pair.key.exists():
            return pair
        key = _key()
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self._ca_key, hashes.SHA256())
        _write(pair.key, _pem_key(key), private=True)
        _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
        return pair

    def server(self, name: str = "safehub-hub") -> KeyPair:
        """A server certificate for localhost / 127.0.0.1."""
        return self._issue(name, self.root / "servers" / name, server=True)

    def client(self, client_id: str) -> KeyPair:
        """A client certificate whose CN is ``client_id``."""
        return self._issue(client_id, self.root / "clients" / client_id, server=False)

    def grpc_channel(self, address: str, client_id: str) -> grpc.Channel:
        """An mTLS gRPC channel to ``address`` as ``client_id`` (demo, benchmarks, tests)."""
        pair = self.client(client_id)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca.cert.read_bytes(),
            private_key=pair.key.read_bytes(),
            certificate_chain=pair.cert.read_bytes(),
        )
        return grpc.secure_channel(address, credentials)
