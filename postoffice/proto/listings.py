"""The bodies of CAPA, LIST and UIDL replies (RFC 2449 §5, RFC 1939 §5, §7).

The server builds LIST and UIDL bodies here; the client parses them. A body for 100,000
messages is one ``%`` formatting of one template (C speed), not a Python loop per line.
That still takes about 20 ms, so the last two bodies of each kind for big maildrops are
kept, keyed by their content: a client that lists an unchanged maildrop at every poll gets
the body for the cost of comparing the sizes or UIDLs (about 5 ms for 100,000). New mail
is listed after the old (oldest first), so a maildrop that only gained messages since a
kept body starts with that body's values: its body is the kept one with the new lines
appended (a keep-mode client's UIDL at each poll after new mail).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from postoffice.errors import RemoteProtocolError

_UIDL = re.compile(r"[\x21-\x7e]{1,70}")  # RFC 1939 §7: 1 to 70 characters 0x21..0x7E
# Smaller bodies are formatted faster than a cache could be consulted.
_CACHED_FROM_MESSAGES = 10_000
_KEPT_BODIES = 2  # of each kind
_Value = TypeVar("_Value")


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """The CAPA answer: tag (upper case) to its arguments."""

    tags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __contains__(self, tag: str) -> bool:
        return tag.upper() in self.tags

    def arguments(self, tag: str) -> tuple[str, ...]:
        return self.tags.get(tag.upper(), ())

    @property
    def sasl(self) -> tuple[str, ...]:
        return tuple(mechanism.upper() for mechanism in self.arguments("SASL"))


def _numbered(
    values: Sequence[object], deleted: Collection[int], first: int = 1
) -> tuple[int, tuple[object, ...]]:
    """(count, (number, value, number, value, ...)) for the messages not deleted, the
    first value numbered ``first``."""
    if deleted:
        kept = [i for i in range(len(values)) if i not in deleted]
        numbers: Sequence[int] = [i + first for i in kept]
        values = [values[i] for i in kept]
    else:
        numbers = range(first, len(values) + first)
    flat = tuple(itertools.chain.from_iterable(zip(numbers, values, strict=True)))
    return len(numbers), flat


def scan_listing_body(sizes: Sequence[int], deleted: Collection[int] = ()) -> bytes:
    """``"<number> <size>\\r\\n"`` for each message not in ``deleted`` (0-based indexes)."""
    if not deleted and len(sizes) >= _CACHED_FROM_MESSAGES:
        return _SCAN_BODIES.body(tuple(sizes))
    return _scan_listing(sizes, deleted)


def uid_listing_body(uids: Sequence[str], deleted: Collection[int] = ()) -> bytes:
    """``"<number> <uid>\\r\\n"`` for each message not in ``deleted``; UIDs are ASCII."""
    if not deleted and len(uids) >= _CACHED_FROM_MESSAGES:
        return _UID_BODIES.body(tuple(uids))
    return _uid_listing(uids, deleted)


def _scan_listing(sizes: Sequence[int], deleted: Collection[int], first: int = 1) -> bytes:
    count, flat = _numbered(sizes, deleted, first)
    return b"%d %d\r\n" * count % flat


def _uid_listing(uids: Sequence[str], deleted: Collection[int], first: int = 1) -> bytes:
    count, flat = _numbered(uids, deleted, first)
    return ("%d %s\r\n" * count % flat).encode("ascii")


class _KeptBodies(Generic[_Value]):
    """The last ``_KEPT_BODIES`` bodies of one kind, by the values they list (whole
    maildrops, nothing deleted)."""

    def __init__(self, make: Callable[[Sequence[_Value], Collection[int], int], bytes]) -> None:
        self._make = make
        self._kept: list[tuple[tuple[_Value, ...], bytes]] = []  # the latest first

    def body(self, values: tuple[_Value, ...]) -> bytes:
        kept = self._kept
        body: bytes | None = None
        for index, (known, known_body) in enumerate(kept):
            if known == values:  # tuples of different lengths differ at once
                del kept[index]
                body = known_body
                break
        if body is None:
            for known, known_body in kept:
                count = len(known)
                # A listing that only gained messages at its end: the new lines follow.
                if count < len(values) and values[:count] == known:
                    body = known_body + self._make(values[count:], (), count + 1)
                    break
            else:
                body = self._make(values, (), 1)
        kept.insert(0, (values, body))
        del kept[_KEPT_BODIES:]
        return body


_SCAN_BODIES: _KeptBodies[int] = _KeptBodies(_scan_listing)
_UID_BODIES: _KeptBodies[str] = _KeptBodies(_uid_listing)


def parse_capabilities(body: bytes) -> Capabilities:
    tags: dict[str, tuple[str, ...]] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        words = line.split()
        if words:
            tags[words[0].upper()] = tuple(words[1:])
    return Capabilities(tags=tags)


def _pairs(body: bytes, what: str) -> list[tuple[int, str]]:
    pairs: list[tuple[int, str]] = []
    for line in body.split(b"\r\n"):
        if not line:
            continue
        parts = line.split(b" ")
        # RFC 1939 §7 allows text after the size in LIST; be lenient on extra fields there.
        if len(parts) < 2 or not parts[0].isdigit():
            raise RemoteProtocolError(f"malformed {what} line: {line[:80]!r}")
        pairs.append((int(parts[0]), parts[1].decode("ascii", "replace")))
    return pairs


def parse_scan_listing(body: bytes) -> dict[int, int]:
    """Message number to size, from a LIST body."""
    sizes: dict[int, int] = {}
    for number, size in _pairs(body, "LIST"):
        if not size.isdigit():
            raise RemoteProtocolError(f"malformed LIST size for message {number}")
        sizes[number] = int(size)
    return sizes


def parse_uidl_listing(body: bytes) -> dict[int, str]:
    """Message number to unique id, from a UIDL body; a repeated id is a server fault."""
    uids: dict[int, str] = {}
    seen: set[str] = set()
    for number, uid in _pairs(body, "UIDL"):
        if not _UIDL.fullmatch(uid):
            raise RemoteProtocolError(f"malformed unique id for message {number}")
        if uid in seen:
            # Two messages with one id: deleting by id could remove the wrong one.
            raise RemoteProtocolError(f"the server lists unique id {uid!r} twice")
        seen.add(uid)
        uids[number] = uid
    return uids
