"""What a client connection hands its driver, one event per reply part, in command order.

The events are frozen value objects with keyword-only constructors, compared and hashed
by their fields, as ``@dataclass(frozen=True, slots=True, kw_only=True)`` would make
them, but written out: ``dataclass`` generates and compiles six methods per class at
import time, which for these eleven classes took about 9 ms of every ``postoffice fetch``
start (a tenth of its own imports). ``_Event`` holds what they share.
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from typing import ClassVar

from postoffice.secret import Secret

_set = object.__setattr__


class _Event:
    """Frozen; equal, hashed and shown by the fields its class names in ``__slots__``, in
    that order."""

    __slots__: ClassVar[tuple[str, ...]] = ()

    def _fields(self) -> tuple[object, ...]:
        return tuple([getattr(self, name) for name in self.__slots__])

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, _Event)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__qualname__}({fields})"


class Request(_Event):
    """One command line to send. Secret arguments (PASS, SASL data) stay hidden in reprs."""

    __slots__ = ("keyword", "arguments")  # noqa: RUF023 - in the order reprs show
    keyword: str
    arguments: tuple[str | Secret, ...]

    def __init__(self, *, keyword: str, arguments: tuple[str | Secret, ...] = ()) -> None:
        _set(self, "keyword", keyword)
        _set(self, "arguments", arguments)


class SaslResponse(_Event):
    """The client's answer to a ``+`` continuation of AUTH (RFC 5034 §4): base64 or ``*``."""

    __slots__ = ("data",)
    data: Secret

    def __init__(self, *, data: Secret) -> None:
        _set(self, "data", data)


class Greeting(_Event):
    """The server's first line (RFC 1939 §4); ``timestamp`` is the APOP msg-id, if any."""

    __slots__ = ("ok", "text", "timestamp")
    ok: bool
    text: str
    timestamp: str | None

    def __init__(self, *, ok: bool, text: str, timestamp: str | None) -> None:
        _set(self, "ok", ok)
        _set(self, "text", text)
        _set(self, "timestamp", timestamp)


class Reply(_Event):
    """A single-line reply, or the ``-ERR`` answer to a multi-line command. ``code`` is the
    RFC 2449 §8 response code in brackets after the status, e.g. ``SYS/TEMP``."""

    __slots__ = ("request", "ok", "text", "code")  # noqa: RUF023 - in the order reprs show
    request: Request
    ok: bool
    text: str
    code: str | None

    def __init__(self, *, request: Request, ok: bool, text: str, code: str | None) -> None:
        _set(self, "request", request)
        _set(self, "ok", ok)
        _set(self, "text", text)
        _set(self, "code", code)


class MultilineStart(_Event):
    """The ``+OK`` line of a multi-line reply; ``BodyData`` and ``MultilineEnd`` follow."""

    __slots__ = ("request", "text")
    request: Request
    text: str

    def __init__(self, *, request: Request, text: str) -> None:
        _set(self, "request", request)
        _set(self, "text", text)


class BodyData(_Event):
    """Body octets with dot-stuffing removed and CRLF line ends as sent."""

    __slots__ = ("data",)
    data: bytes

    def __init__(self, *, data: bytes) -> None:
        _set(self, "data", data)


class MultilineEnd(_Event):
    """The terminating ``.`` arrived; ``octets`` counts the body as LIST sizes it."""

    __slots__ = ("request", "octets")  # noqa: RUF023 - in the order reprs show
    request: Request
    octets: int

    def __init__(self, *, request: Request, octets: int) -> None:
        _set(self, "request", request)
        _set(self, "octets", octets)


class Continuation(_Event):
    """A ``+ `` line during AUTH: the server's challenge, still base64 encoded."""

    __slots__ = ("request", "challenge")  # noqa: RUF023 - in the order reprs show
    request: Request
    challenge: str

    def __init__(self, *, request: Request, challenge: str) -> None:
        _set(self, "request", request)
        _set(self, "challenge", challenge)


class ClientNeedData(_Event):
    """Nothing complete is buffered: read more from the server."""

    __slots__ = ()


class Paused(_Event):
    """STLS was accepted: run the TLS handshake, then call ``tls_started``."""

    __slots__ = ()


class ConnectionClosed(_Event):
    """The server closed the connection after every reply was read."""

    __slots__ = ()


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
