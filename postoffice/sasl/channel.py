"""TLS channel-binding data, as the caller hands it in (RFC 5056).

The pure code never reads a TLS connection. The caller takes the data from its TLS layer:
``tls-exporter`` (RFC 9266) is the TLS exporter's output for the label
``EXPORTER-Channel-Binding`` with an empty context, 32 octets; ``tls-server-end-point``
(RFC 5929 §4) is a hash of the server's certificate, which ``tls_server_end_point`` computes
from the DER bytes and the certificate's signature hash.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

TLS_EXPORTER = "tls-exporter"
TLS_SERVER_END_POINT = "tls-server-end-point"
_CB_NAME = re.compile(r"[A-Za-z0-9.-]+")  # RFC 5056 §7 / RFC 5802 §7 cb-name


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelBinding:
    """One channel binding: its RFC 5056 type name and its data."""

    type: str
    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _CB_NAME.fullmatch(self.type):
            raise ValueError("a channel-binding type is letters, digits, '.' and '-'")
        if not self.data:
            raise ValueError("channel-binding data must not be empty")


def tls_server_end_point(certificate_der: bytes, signature_hash: str | None) -> ChannelBinding:
    """The ``tls-server-end-point`` binding of a server certificate (RFC 5929 §4.1).

    ``signature_hash`` is the hash of the certificate's signature algorithm as hashlib
    names it (``sha256``, ``sha384``...); MD5 and SHA-1 are replaced by SHA-256. A
    signature without a single hash (Ed25519: None) leaves the binding undefined, and
    ValueError is raised.
    """
    if signature_hash is None:
        raise ValueError("tls-server-end-point is undefined for this signature algorithm")
    name = signature_hash.lower().replace("-", "")
    if name in ("md5", "sha1"):
        name = "sha256"
    try:
        digest = hashlib.new(name, certificate_der).digest()
    except ValueError:
        raise ValueError(f"unknown certificate signature hash {signature_hash!r}") from None
    return ChannelBinding(type=TLS_SERVER_END_POINT, data=digest)
