"""The bodies of CAPA, LIST and UIDL replies (RFC 2449 §5, RFC 1939 §5, §7).

The server builds LIST and UIDL bodies here; the client parses them. A body for 100,000
messages is one ``%`` formatting of one template (C speed), not a Python loop per line.
That still takes about 20 ms, so the last two bodies of each kind for big maildrops are
kept, keyed by their content: a client that lists an unchanged maildrop at every poll gets
the body for the cost of comparing the sizes or UIDLs (about 5 ms for 100,000).
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from postoffice.errors import RemoteProtocolError

_UIDL = re.compile(r"[\x21-\x7e]{1,70}")  # RFC 1939 §7: 1 to 70 characters 0x21..0x7E
# Smaller bodies are formatted faster than a cache could be consulted.
_CACHED_FROM_MESSAGES = 10_000


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


def _numbered(values: Sequence[object], deleted: Collection[int]) -> tuple[int, tuple[object, ...]]:
    """(count, (number, value, number, value, ...)) for the messages not deleted."""
    if deleted:
        kept = [i for i in range(len(values)) if i not in deleted]
        numbers: Sequence[int] = [i + 1 for i in kept]
        values = [values[i] for i in kept]
    else:
        numbers = range(1, len(values) + 1)
    flat = tuple(itertools.chain.from_iterable(zip(numbers, values, strict=True)))
    return len(numbers), flat


def scan_listing_body(sizes: Sequence[int], deleted: Collection[int] = ()) -> bytes:
    """``"<number> <size>\\r\\n"`` for each message not in ``deleted`` (0-based indexes)."""
    if not deleted and len(sizes) >= _CACHED_FROM_MESSAGES:
        return _cached_scan_listing(tuple(sizes))
    return _scan_listing(sizes, deleted)


def uid_listing_body(uids: Sequence[str], deleted: Collection[int] = ()) -> bytes:
    """``"<number> <uid>\\r\\n"`` for each message not in ``deleted``; UIDs are ASCII."""
    if not deleted and len(uids) >= _CACHED_FROM_MESSAGES:
        return _cached_uid_listing(tuple(uids))
    return _uid_listing(uids, deleted)


def _scan_listing(sizes: Sequence[int], deleted: Collection[int]) -> bytes:
    count, flat = _numbered(sizes, deleted)
    return b"%d %d\r\n" * count % flat


def _uid_listing(uids: Sequence[str], deleted: Collection[int]) -> bytes:
    count, flat = _numbered(uids, deleted)
    return ("%d %s\r\n" * count % flat).encode("ascii")


@functools.lru_cache(maxsize=2)
def _cached_scan_listing(sizes: tuple[int, ...]) -> bytes:
    return _scan_listing(sizes, ())


@functools.lru_cache(maxsize=2)
def _cached_uid_listing(uids: tuple[str, ...]) -> bytes:
    return _uid_listing(uids, ())


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
