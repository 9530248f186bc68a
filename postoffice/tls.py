"""TLS contexts: the server's (TLS 1.2 or newer by default) and a self-signed certificate.

Server contexts are built fresh on every (re)load and swapped in whole, so a SIGHUP whose
new files are broken leaves the old certificate serving; handshakes already done keep
their context.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from postoffice.errors import ConfigError

log = logging.getLogger(__name__)

TLS_VERSIONS = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


def server_context(
    certificate: Path, private_key: Path, *, min_version: str = "1.2", ciphers: str = ""
) -> ssl.SSLContext:
    """A server context for ``certificate`` (leaf first, then intermediates) and its key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[min_version]
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if ciphers:
        context.set_ciphers(ciphers)
    try:
        context.load_cert_chain(certificate, private_key)
    except FileNotFoundError as error:
        raise ConfigError(f"tls: {error.filename}: file not found") from error
    except (ssl.SSLError, OSError) as error:
        raise ConfigError(f"tls: cannot load {certificate} / {private_key}: {error}") from error
    return context


def ensure_self_signed(certificate: Path, private_key: Path, *, hostname: str) -> bool:
    """Write a self-signed certificate and key if neither exists; True if one was made."""
    if certificate.exists() or private_key.exists():
        return False
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alternative_names: list[x509.GeneralName] = [
        x509.DNSName(hostname),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate.parent.mkdir(parents=True, exist_ok=True)
    private_key.parent.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(private_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(key_bytes)
    certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


def fingerprint_sha256(certificate: Path) -> str:
    """The SHA-256 fingerprint of the first certificate in a PEM file, as ``AB:CD:...``."""
    pem = certificate.read_text()
    start = pem.index("-----BEGIN CERTIFICATE-----")
    end = pem.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
    der = ssl.PEM_cert_to_DER_cert(pem[start:end])
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[index : index + 2] for index in range(0, len(digest), 2))


class ListenerContexts:
    """The current server context of each listener kind ("pop3" for STLS, "pop3s").

    ``reload`` (on SIGHUP) builds new contexts from the files and swaps them in only if
    every one loads; sessions take ``current(kind)`` at their handshake.
    """

    def __init__(self, settings: Mapping[str, TlsSettingsLike], *, hostname: str) -> None:
        self._settings = settings
        self._hostname = hostname
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._certificates: dict[str, tuple[bytes, str | None]] = {}

    def load(self) -> None:
        for settings in self._settings.values():
            if settings.self_signed and ensure_self_signed(
                settings.certificate, settings.private_key, hostname=self._hostname
            ):
                log.warning(
                    "made a self-signed certificate %s (SHA-256 %s)",
                    settings.certificate,
                    fingerprint_sha256(settings.certificate),
                )
        contexts = {
            kind: server_context(
                settings.certificate,
                settings.private_key,
                min_version=settings.min_version,
                ciphers=settings.ciphers,
            )
            for kind, settings in self._settings.items()
        }
        self._contexts = contexts
        self._certificates = {
            kind: _leaf_certificate(settings.certificate)
            for kind, settings in self._settings.items()
        }
        for kind, settings in self._settings.items():
            log.info(
                "TLS for %s: %s (SHA-256 %s), TLS %s or newer",
                kind,
                settings.certificate,
                fingerprint_sha256(settings.certificate),
                settings.min_version,
            )

    def reload(self) -> bool:
        """Re-read every certificate; on any error keep serving the old ones."""
        try:
            self.load()
        except ConfigError as error:
            log.error("certificate reload failed, keeping the old certificates: %s", error)
            return False
        return True

    def current(self, kind: str) -> ssl.SSLContext:
        return self._contexts[kind]

    def certificate_der(self, kind: str) -> tuple[bytes, str | None]:
        """The leaf certificate (DER) and its signature hash name, for channel binding."""
        return self._certificates[kind]


def _leaf_certificate(path: Path) -> tuple[bytes, str | None]:
    from cryptography import x509

    pem = path.read_bytes()
    certificate = x509.load_pem_x509_certificate(pem)
    algorithm = certificate.signature_hash_algorithm
    from cryptography.hazmat.primitives.serialization import Encoding

    return certificate.public_bytes(Encoding.DER), algorithm.name if algorithm else None


class TlsSettingsLike(Protocol):
    @property
    def certificate(self) -> Path: ...
    @property
    def private_key(self) -> Path: ...
    @property
    def min_version(self) -> str: ...
    @property
    def ciphers(self) -> str: ...
    @property
    def self_signed(self) -> bool: ...
