"""Single-line replies: ``+OK``/``-ERR``, response codes, and the 512-octet rule.

RFC 1939 §3: status indicators are upper case and a reply line is at most 512 octets
including CRLF. RFC 2449 §8 and RFC 3206 add response codes in brackets after ``-ERR``.
Reply text is always our own fixed wording; anything that came from configuration is
reduced to printable ASCII so no control byte ever reaches the wire.
"""

from __future__ import annotations

import enum

MAX_REPLY_OCTETS = 512  # RFC 1939 §3, including CRLF


class ResponseCode(enum.Enum):
    """Extended response codes (RFC 2449 §8, RFC 3206)."""

    IN_USE = "IN-USE"
    LOGIN_DELAY = "LOGIN-DELAY"
    AUTH = "AUTH"
    SYS_TEMP = "SYS/TEMP"
    SYS_PERM = "SYS/PERM"


_PRINTABLE = bytes(range(0x20, 0x7F))
_DELETE_UNPRINTABLE = bytes(set(range(256)) - set(_PRINTABLE))


def printable(text: str) -> str:
    """``text`` with everything but printable ASCII removed (for text from configuration)."""
    raw = text.encode("ascii", "ignore")
    return raw.translate(None, _DELETE_UNPRINTABLE).decode("ascii")


def _line(status: bytes, text: str) -> bytes:
    body = text.encode("ascii", "replace")
    line = status + (b" " + body if body else b"")
    return line[: MAX_REPLY_OCTETS - 2] + b"\r\n"


def ok(text: str = "") -> bytes:
    """A positive single-line reply."""
    return _line(b"+OK", text)


def err(text: str, code: ResponseCode | None = None) -> bytes:
    """A negative single-line reply, with a response code when given."""
    if code is not None:
        text = f"[{code.value}] {text}"
    return _line(b"-ERR", text)


def multiline(first: bytes, lines: list[bytes]) -> bytes:
    """``first`` (a complete ``+OK`` line) followed by lines that never start with ``.``."""
    if not lines:
        return first + b".\r\n"
    return first + b"\r\n".join(lines) + b"\r\n.\r\n"
