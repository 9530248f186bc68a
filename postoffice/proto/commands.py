"""Parsing one POP3 command line into a keyword and its arguments (RFC 1939 §3).

A command is a case-insensitive keyword of three or four letters, then arguments each
separated by a single space. ``PASS`` takes the rest of the line, spaces included (RFC 1939
§7). Numbers are strict ASCII decimal: no sign, no space, no underscore, no other digits.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from postoffice.errors import RemoteProtocolError

_KEYWORD = re.compile(rb"[A-Za-z]{3,4}")
_NUMBER = re.compile(rb"[0-9]{1,10}")

# Commands whose single argument is the whole rest of the line.
_REST_OF_LINE = frozenset({"PASS", "USER"})


class CommandSyntaxError(RemoteProtocolError):
    """The line is not a well-formed command."""


class Command(NamedTuple):
    keyword: str
    """Upper case, as the RFCs spell it."""
    arguments: tuple[bytes, ...]


# The keywords clients send, as they send them (upper or lower case): found without the
# regular expression and the decoding.
_KNOWN_KEYWORDS = {
    spelling: name
    for name in (
        "USER", "PASS", "APOP", "AUTH", "STLS", "STAT", "LIST", "RETR",
        "DELE", "NOOP", "RSET", "TOP", "UIDL", "QUIT", "CAPA",
    )
    for spelling in (name.encode("ascii"), name.lower().encode("ascii"))
}  # fmt: skip


def parse_command(line: bytes) -> Command:
    """Split a line (without its line end) into keyword and arguments."""
    keyword, separator, rest = line.partition(b" ")
    name = _KNOWN_KEYWORDS.get(keyword)
    if name is None:
        if not _KEYWORD.fullmatch(keyword):
            raise CommandSyntaxError("unknown command")
        name = keyword.decode("ascii").upper()
    if not separator:
        return Command(keyword=name, arguments=())
    if name in _REST_OF_LINE:
        if not rest:
            raise CommandSyntaxError("empty argument")
        return Command(keyword=name, arguments=(rest,))
    arguments = tuple(rest.split(b" "))
    if any(not argument for argument in arguments):
        raise CommandSyntaxError("arguments must be separated by a single space")
    return Command(keyword=name, arguments=arguments)


def parse_number(argument: bytes, *, minimum: int = 1, maximum: int = 2**31 - 1) -> int:
    """A strict decimal number within ``minimum..maximum``."""
    if not _NUMBER.fullmatch(argument):
        raise CommandSyntaxError("not a number")
    value = int(argument)
    if not minimum <= value <= maximum:
        raise CommandSyntaxError("number out of range")
    return value
