"""Base64 framing of SASL data in POP3 (RFC 5034 §4).

Server to client, a challenge is ``+ <base64>``; client to server, a response is a line of
base64, an empty line for empty data, or ``*`` to cancel. An initial response on the AUTH
line is base64, or ``=`` for empty data. Lines here carry no CRLF unless the name says
``line``. Decoding is strict: only the RFC 4648 §4 alphabet, correct padding, no whitespace,
and the canonical encoding only (unused trailing bits must be zero), so one payload has
exactly one spelling.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re

from postoffice.sasl.errors import MalformedSaslError

_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_MAX_COMMAND_OCTETS = 255  # RFC 2449 §4, CRLF included


class Cancel(enum.Enum):
    """The client's ``*`` line: abort the exchange (RFC 5034 §4)."""

    CANCEL = "*"


CANCEL = Cancel.CANCEL


def encode_base64(data: bytes) -> bytes:
    """``data`` in base64 (RFC 4648 §4), padded; empty data gives b""."""
    return base64.b64encode(data)


def decode_base64(text: bytes | str) -> bytes:
    """Strictly decode base64; raises MalformedSaslError on anything but canonical base64."""
    if isinstance(text, str):
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError:
            raise MalformedSaslError("non-ASCII character in base64") from None
    else:
        raw = text
    if _BASE64.fullmatch(raw) is None:
        raise MalformedSaslError("malformed base64")
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):  # pragma: no cover - the pattern already checked
        raise MalformedSaslError("malformed base64") from None
    if base64.b64encode(decoded) != raw:
        raise MalformedSaslError("non-canonical base64 (trailing bits set)")
    return decoded


# --- server side ---------------------------------------------------------------------------


def challenge_line(data: bytes) -> bytes:
    """The wire line for a challenge: ``+ <base64>`` and CRLF (RFC 5034 §4)."""
    return b"+ " + encode_base64(data) + b"\r\n"


def decode_response(line: bytes) -> bytes | Cancel:
    """A client's answer to a challenge, CRLF removed: its data, or CANCEL for ``*``."""
    if line == b"*":
        return CANCEL
    return decode_base64(line)


def decode_initial_response(argument: bytes) -> bytes:
    """The initial-response argument of AUTH: ``=`` is empty data (RFC 5034 §4)."""
    if argument == b"=":
        return b""
    if not argument:
        raise MalformedSaslError("empty initial response argument")
    return decode_base64(argument)


# --- client side ---------------------------------------------------------------------------


def decode_challenge_line(line: bytes) -> bytes:
    """The data of a ``+ <base64>`` line (CRLF removed); a bare ``+`` is an empty challenge."""
    if line in (b"+", b"+ "):
        return b""
    if not line.startswith(b"+ "):
        raise MalformedSaslError("a challenge line starts with '+ '")
    return decode_base64(line[2:])


def response_line(data: bytes | Cancel) -> bytes:
    """The wire line answering a challenge: base64 (empty for no data) or ``*``, and CRLF."""
    if data is CANCEL:
        return b"*\r\n"
    return encode_base64(data) + b"\r\n"


def initial_response_argument(data: bytes) -> bytes:
    """The AUTH argument carrying ``data`` as initial response: base64, or ``=`` if empty."""
    return encode_base64(data) or b"="


def initial_response_fits(mechanism: str, data: bytes) -> bool:
    """True if ``AUTH mechanism <initial-response>`` fits in a 255-octet command line.

    Otherwise the client sends AUTH without it and answers the server's empty challenge with
    the same data (RFC 5034 §4, RFC 2449 §4). The client mechanisms here do that by
    themselves: given an empty first challenge, they answer with their initial response.
    """
    line = b"AUTH " + mechanism.encode("ascii") + b" " + initial_response_argument(data)
    return len(line) + 2 <= _MAX_COMMAND_OCTETS
