"""What a client connection hands its driver, one event per reply part, in command order."""

from __future__ import annotations

from dataclasses import dataclass

from postoffice.secret import Secret


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One command line to send. Secret arguments (PASS, SASL data) stay hidden in reprs."""

    keyword: str
    arguments: tuple[str | Secret, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SaslResponse:
    """The client's answer to a ``+`` continuation of AUTH (RFC 5034 §4): base64 or ``*``."""

    data: Secret


@dataclass(frozen=True, slots=True, kw_only=True)
class Greeting:
    """The server's first line (RFC 1939 §4); ``timestamp`` is the APOP msg-id, if any."""

    ok: bool
    text: str
    timestamp: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A single-line reply, or the ``-ERR`` answer to a multi-line command."""

    request: Request
    ok: bool
    text: str
    code: str | None
    """The RFC 2449 §8 response code in brackets after the status, e.g. ``SYS/TEMP``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MultilineStart:
    """The ``+OK`` line of a multi-line reply; ``BodyData`` and ``MultilineEnd`` follow."""

    request: Request
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BodyData:
    """Body octets with dot-stuffing removed and CRLF line ends as sent."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class MultilineEnd:
    """The terminating ``.`` arrived; ``octets`` counts the body as LIST sizes it."""

    request: Request
    octets: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Continuation:
    """A ``+ `` line during AUTH: the server's challenge, still base64 encoded."""

    request: Request
    challenge: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientNeedData:
    """Nothing complete is buffered: read more from the server."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Paused:
    """STLS was accepted: run the TLS handshake, then call ``tls_started``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed:
    """The server closed the connection after every reply was read."""


NEED_DATA = ClientNeedData()
PAUSED = Paused()
CLOSED = ConnectionClosed()

ClientEvent = (
    Greeting
    | Reply
    | MultilineStart
    | BodyData
    | MultilineEnd
    | Continuation
    | ClientNeedData
    | Paused
    | ConnectionClosed
)
