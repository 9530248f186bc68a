"""What a server connection asks of its driver.

The connection answers most commands itself from the session's snapshot (STAT, LIST, UIDL,
DELE, RSET, NOOP, CAPA, USER). It hands the driver an event only where the outside world
is needed, and reads no further command until the driver has answered (RFC 2449 §6.6:
pipelined commands are processed in turn).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from postoffice.secret import Secret


class Listing(Protocol):
    """The part of a stored message the protocol needs."""

    @property
    def uid(self) -> str: ...

    @property
    def size(self) -> int: ...


MessageT = TypeVar("MessageT", bound=Listing)


@dataclass(frozen=True, slots=True, kw_only=True)
class NeedData:
    """No complete command is buffered: read more from the peer."""


NEED_DATA = NeedData()


@dataclass(frozen=True, slots=True, kw_only=True)
class PasswordLogin:
    """USER then PASS (RFC 1939 §7). Answer with ``login_accepted`` or ``login_rejected``."""

    username: str
    password: Secret


@dataclass(frozen=True, slots=True, kw_only=True)
class ApopLogin:
    """APOP name digest (RFC 1939 §7), against the timestamp of this session's greeting."""

    username: str
    timestamp: str
    digest: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SaslStart:
    """AUTH mechanism [initial-response] (RFC 5034 §4).

    Answer with ``sasl_challenge``, ``login_accepted`` or ``login_rejected``.
    ``initial_response`` is None when the client sent none, and b"" for ``=``.
    """

    mechanism: str
    initial_response: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SaslResponse:
    """The client's (base64-decoded) answer to the last challenge."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SaslCancelled:
    """The client cancelled with ``*`` or sent bad base64; ``-ERR`` is already queued."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StartTls:
    """STLS was accepted (RFC 2595 §4): send what is queued, then run the TLS handshake.

    Octets that arrived after the STLS line have been discarded, never read as commands
    (the STARTTLS command-injection class of bugs); ``discarded`` counts them.
    Answer with ``tls_started`` once the handshake is done.
    """

    discarded: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageRequest(Generic[MessageT]):
    """RETR (``body_lines`` None) or TOP. Answer with ``message_follows`` and stream it."""

    number: int
    message: MessageT
    body_lines: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateRequest(Generic[MessageT]):
    """QUIT in TRANSACTION: enter UPDATE (RFC 1939 §6). Answer with ``update_done``."""

    deleted: Sequence[MessageT]
    retrieved: Sequence[MessageT]
    """Messages sent in full by RETR and not deleted (for the Seen flag)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseConnection:
    """Send what is queued, then close. Nothing is deleted unless an UPDATE was done."""

    reason: str


Event = (
    NeedData
    | PasswordLogin
    | ApopLogin
    | SaslStart
    | SaslResponse
    | SaslCancelled
    | StartTls
    | MessageRequest[MessageT]
    | UpdateRequest[MessageT]
    | CloseConnection
)
