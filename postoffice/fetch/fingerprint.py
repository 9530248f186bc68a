"""Recognising a message after its unique id changed (a server migration).

Each delivery journals a fingerprint of the message: a hash of its header as sent (what
``TOP n 0`` returns too), its Message-ID and its Date. If a session finds that none of the
listed UIDLs is known although the journal expects some of its messages to be still on the
server, the ids were probably all renumbered: the session then asks ``TOP n 0`` for each
listed message and journals every one whose fingerprint matches a delivered message under
its new id, instead of downloading it again. A match is the same header hash, or the same
Message-ID, Date and size. Messages that match nothing are fetched as usual, so a false
alarm (say, another client deleted everything and new mail came) costs one TOP each.

A server without UIDL gets ids made the same way (``without_uidl = "fingerprint"``): the
header hash of each message, from ``TOP n 0`` at every session.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from postoffice.fetch.errors import ServerRefusedError
from postoffice.proto.client_events import Reply, Request

if TYPE_CHECKING:
    from postoffice.fetch.journal import Entry, Journal
    from postoffice.fetch.transport import Pop3Client

__all__ = [
    "Fingerprint",
    "HeaderCollector",
    "fingerprint_ids",
    "fingerprint_of",
    "recover_renumbered",
    "renumbered",
]

MAX_HEADER = 256 * 1024  # a header longer than this is not fingerprinted
_END = b"\r\n\r\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class Fingerprint:
    header_hash: str
    message_id: str | None
    date: str | None


def fingerprint_of(header: bytes) -> Fingerprint:
    """The fingerprint of a header as POP3 sends it (CRLF lines, blank line optional)."""
    header = header.rstrip(b"\r\n")
    fields = _plain_fields(header)
    message_id, date = fields if fields is not None else _parsed_fields(header)
    return Fingerprint(
        header_hash=hashlib.sha256(header).hexdigest(), message_id=message_id, date=date
    )


def _parsed_fields(header: bytes) -> tuple[str | None, str | None]:
    """Message-ID and Date as ``email`` reads them (compat32), whitespace runs made one
    space; None for a field that is missing or empty. The reference for ``_plain_fields``."""
    from email.parser import BytesHeaderParser  # rarely needed: it costs start-up time
    from email.policy import compat32

    fields = BytesHeaderParser(policy=compat32).parsebytes(header + b"\r\n\r\n")
    message_id, date = fields.get("Message-ID"), fields.get("Date")
    return (
        " ".join(str(message_id).split()) if message_id else None,
        " ".join(str(date).split()) if date else None,
    )


# A plain header (without its last line end): lines that are each a field (an RFC 5322 §2.2
# name, then ":") or, after the first, a continuation; CR only in CRLF; no blank line.
# ``_is_plain`` tells it by looking at line starts only (the tests hold it equal to a
# regular expression matching the whole header, which took three times longer).
# A line that is neither a field nor a continuation (an empty one included), found by the
# line end before it: the header is searched with a line end put in front.
_NOT_A_FIELD = re.compile(rb"\n(?![ \t]|[\x21-\x39\x3b-\x7e]+:)")


def _is_plain(header: bytes) -> bool:
    """Whether an ASCII header is plain: the first line is a field, every CR ends a line,
    and every line is a field or a continuation."""
    return (
        header[:1] not in (b" ", b"\t")
        and header.count(b"\r") == header.count(b"\r\n")
        and _NOT_A_FIELD.search(b"\n" + header) is None
    )


# A field's value after its colon, with its continuation lines.
_VALUE = re.compile(rb"[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*")


def _plain_fields(header: bytes) -> tuple[str | None, str | None] | None:
    """``_parsed_fields`` for the usual header, many times faster; None for one that is
    not plain (not ASCII, a bare CR, a line neither a field nor a continuation, a leading
    continuation, a blank line), which ``email`` must then read."""
    if not header.isascii() or not _is_plain(header):
        return None
    # Field names are found in a lower-case copy: two finds, where a case-blind search
    # for a line start costs some 5 us each.
    lowered = header.lower()
    return _field(header, lowered, b"message-id:"), _field(header, lowered, b"date:")


def _field(header: bytes, lowered: bytes, name: bytes) -> str | None:
    """The first field called ``name`` (lower case, with its colon), unfolded."""
    if lowered.startswith(name):
        start = 0
    else:
        start = lowered.find(b"\n" + name) + 1
        if start == 0:
            return None
    return _unfolded(_VALUE.match(header, start + len(name)))


def _unfolded(found: re.Match[bytes] | None) -> str | None:
    # email's test is on the raw value: a field of only spaces and a continuation line
    # is present (and becomes ""), one with nothing after the colon is not.
    if found is None:
        return None
    value = found.group()
    if b"\n" not in value and not value.lstrip(b" \t"):
        return None
    return " ".join(value.decode("ascii").split())


class HeaderCollector:
    """Keeps the header of a streamed RETR body, up to the blank line, within a bound."""

    __slots__ = ("_data", "_header", "done")

    def __init__(self) -> None:
        self._data = bytearray()
        self._header: bytes | None = None  # when it came whole in the first chunk
        self.done = False

    def feed(self, chunk: bytes) -> None:
        if self.done:
            return
        if not self._data:
            end = chunk.find(_END, 0, MAX_HEADER)
            if end >= 0:  # the usual case: the whole header in the first chunk, kept as is
                self._header = chunk[: end + len(_END)]
                self.done = True
                return
        start = max(0, len(self._data) - 3)  # the blank line may straddle two chunks
        self._data += chunk
        end = self._data.find(_END, start)
        if end >= 0:
            del self._data[end + len(_END) :]
            self.done = True
        elif len(self._data) > MAX_HEADER:
            self._data.clear()
            self.done = True  # too long to be worth matching

    def fingerprint(self) -> Fingerprint | None:
        if self._header is not None:
            return fingerprint_of(self._header)
        return fingerprint_of(bytes(self._data)) if self._data else None


class _Listed(Protocol):
    @property
    def number(self) -> int: ...

    @property
    def uidl(self) -> str: ...

    @property
    def size(self) -> int: ...


def renumbered(listing: Sequence[_Listed], entries: Mapping[str, Entry]) -> bool:
    """True if no listed id is known while the journal expects messages on the server."""
    if not listing or any(message.uidl in entries for message in listing):
        return False
    return any(
        entry.delivered and entry.deleted_at is None and entry.gone_since is None
        for entry in entries.values()
    )


async def recover_renumbered(
    client: Pop3Client,
    listing: Sequence[_Listed],
    journal: Journal,
    *,
    window: int,
    now: float,
    log: logging.LoggerAdapter,  # type: ignore[type-arg]
) -> int:
    """Journal listed messages that match a delivered one by fingerprint; return how many."""
    by_hash, by_fields = await asyncio.to_thread(journal.fingerprints)
    log.warning(
        "none of the %d unique ids on the server is known: were they renumbered? "
        "matching the messages by header instead of downloading them again",
        len(listing),
    )
    matched: list[tuple[str, str, int, Fingerprint]] = []
    for start in range(0, len(listing), window):
        batch = listing[start : start + window]
        await client.send(*(Request(keyword="TOP", arguments=(str(m.number), "0")) for m in batch))
        for message in batch:
            header = await client.collect(limit=MAX_HEADER + 2)
            if isinstance(header, Reply):
                continue  # no TOP for this one: it will simply be fetched
            found = fingerprint_of(header)
            local = by_hash.get(found.header_hash)
            if local is None and found.message_id:
                local = by_fields.get((found.message_id, found.date, message.size))
            if local is not None:
                matched.append((message.uidl, local, message.size, found))
    if matched:
        await asyncio.to_thread(journal.record_delivered_many, matched, now=now, delete=False)
    log.warning("%d of %d messages matched messages fetched before", len(matched), len(listing))
    return len(matched)


async def fingerprint_ids(client: Pop3Client, numbers: list[int], *, window: int) -> dict[int, str]:
    """Unique ids made from ``TOP n 0`` for a server without UIDL (``without_uidl =
    "fingerprint"``): ``fp-`` and a header hash, ``-2``, ``-3``... for identical headers."""
    ids: dict[int, str] = {}
    seen: dict[str, int] = {}
    for start in range(0, len(numbers), window):
        batch = numbers[start : start + window]
        await client.send(*(Request(keyword="TOP", arguments=(str(n), "0")) for n in batch))
        for number in batch:
            header = await client.collect(limit=MAX_HEADER + 2)
            if isinstance(header, Reply):
                raise ServerRefusedError(
                    f"without UIDL, TOP is needed to fingerprint messages: {header.text}"
                )
            base = "fp-" + fingerprint_of(header).header_hash[:40]
            seen[base] = seen.get(base, 0) + 1
            ids[number] = base if seen[base] == 1 else f"{base}-{seen[base]}"
    return ids
