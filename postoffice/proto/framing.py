"""Bytes on the wire: command lines in, multi-line bodies out (RFC 1939 §3).

Theory of operation
-------------------
Command lines end with CRLF; a bare LF is accepted too so that a person can type into
``nc``. A line may be at most ``max_line_octets`` long including its line end (255 by
RFC 2449 §4). A longer line is reported once, when its end arrives, and its bytes are
dropped as they come, so memory stays bounded; a peer that sends more than
``max_discard_octets`` without any line end is reported as a flood.

A message body goes out "byte-stuffed": its stored form (LF or CRLF line ends) becomes
CRLF lines, a line starting with ``.`` gets one more ``.``, and the reply ends with
``CRLF.CRLF``. ``MessageEncoder`` does this chunk by chunk with bytes operations only (no
per-line Python loop), carrying across chunk borders a held-back CR and whether the next
byte starts a line. The octets it counts before stuffing equal the size LIST announces
(RFC 1939 §11): each bare LF counts as CRLF and a missing final line end adds a CRLF.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

CRLF = b"\r\n"
TERMINATOR = b".\r\n"
# Where a line starts with "." (stuffing to add or to undo): see find_line_dot.
_DOT_AFTER_LINE_END = re.compile(rb"\n\.")
_DOT_HOPS = 64


def find_line_dot(data: bytes | bytearray, start: int = 0, end: int | None = None) -> int:
    """``data.find(b"\\n.", start, end)``, faster on mail.

    Hops from dot to dot (``find`` of one byte is a ``memchr``): a typical message has a
    few dozen dots, in its headers' names and addresses, and no line that starts with
    one, so this takes about a third of the time of a search for the two bytes. Past
    ``_DOT_HOPS`` dots (prose), a regular expression takes over from there, at about twice
    the speed of ``bytes.find``.
    """
    if end is None:
        end = len(data)
    find = data.find
    at = find(b".", start + 1, end)
    for _ in range(_DOT_HOPS):
        if at < 0:
            return -1
        if data[at - 1] == 0x0A:
            return at - 1
        at = find(b".", at + 1, end)
    if at < 0:
        return -1
    match = _DOT_AFTER_LINE_END.search(data, at - 1, end)
    return -1 if match is None else match.start()


class LineProblem(enum.Enum):
    TOO_LONG = "TOO_LONG"
    """A line longer than the limit ended; its content was dropped."""
    FLOOD = "FLOOD"
    """Too many octets without a line end: the peer should be disconnected."""


@dataclass(slots=True)
class LineBuffer:
    """Splits incoming bytes into lines, within a length limit."""

    max_line_octets: int = 255
    max_discard_octets: int = 65536
    long_prefix: bytes = b""
    """Lines starting with this (any case) may be ``long_line_octets`` long."""
    long_line_octets: int = 0
    _buffer: bytearray | None = None
    """None when empty: an idle session (the usual state) keeps no buffer."""
    _scanned: int = 0
    _discarding: int = 0  # octets dropped of the current over-long line; 0 when not dropping

    def feed(self, data: bytes | memoryview) -> None:
        if self._buffer is None:
            self._buffer = bytearray(data)
        else:
            self._buffer += data

    @property
    def buffered(self) -> int:
        """Octets received but not yet returned as lines."""
        return 0 if self._buffer is None else len(self._buffer)

    @property
    def empty(self) -> bool:
        """Nothing buffered and no over-long line being dropped: the next octets start a
        line."""
        return self._buffer is None and not self._discarding

    def take_unread(self) -> bytes:
        """Everything buffered and not yet returned, emptying the buffer."""
        unread = b"" if self._buffer is None else bytes(self._buffer)
        self._buffer = None
        self._scanned = 0
        return unread

    def next_line(self) -> bytes | LineProblem | None:
        """The next line without its line end, a problem, or None when more data is needed."""
        buffer = self._buffer
        if buffer is None:
            return None
        end = buffer.find(b"\n", self._scanned)
        if end < 0:
            size = len(buffer)
            if self._discarding or (size > self.max_line_octets and size > self._limit(buffer)):
                self._discarding += len(buffer)
                self._buffer = None
                self._scanned = 0
                if self._discarding > self.max_discard_octets:
                    self._discarding = 0
                    return LineProblem.FLOOD
            else:
                self._scanned = len(buffer)
            return None
        line = bytes(buffer[:end])
        if end + 1 == len(buffer):
            self._buffer = None
        else:
            del buffer[: end + 1]
        self._scanned = 0
        if self._discarding:
            self._discarding = 0
            return LineProblem.TOO_LONG
        # +1: the LF; a CR is part of ``line``. Only a long line needs its own limit.
        if len(line) >= self.max_line_octets and len(line) + 1 > self._limit(line):
            return LineProblem.TOO_LONG
        if line.endswith(b"\r"):
            line = line[:-1]
        return line

    def _limit(self, line: bytes | bytearray) -> int:
        prefix = self.long_prefix
        if prefix and line[: len(prefix)].upper() == prefix:
            return max(self.long_line_octets, self.max_line_octets)
        return self.max_line_octets


class MessageEncoder:
    """Encodes a stored message, chunk by chunk, into a dot-stuffed multi-line body."""

    __slots__ = ("_at_line_start", "_pending_cr", "octets")

    def __init__(self) -> None:
        self._pending_cr = False
        self._at_line_start = True
        self.octets = 0
        """Octets sent so far, before dot-stuffing: comparable with the LIST size."""

    def encode(self, chunk: bytes) -> bytes:
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            # The LF that may follow is in the next chunk; decide then.
            chunk = chunk[:-1]
            self._pending_cr = True
        if not chunk:
            return b""
        if b"\r" not in chunk:
            chunk = chunk.replace(b"\n", b"\r\n")  # stored with bare LF: one pass
        elif b"\n" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        self.octets += len(chunk)
        if self._at_line_start and chunk[:1] == b".":
            chunk = b"." + chunk
        if find_line_dot(chunk) >= 0:  # mostly not: no second pass over the chunk
            chunk = chunk.replace(b"\n.", b"\n..")
        self._at_line_start = chunk.endswith(b"\n")
        return chunk

    def finish(self) -> bytes:
        """The end of the body: a line end if the message lacked one, then ``.CRLF``."""
        tail = b""
        if self._pending_cr:
            tail = b"\r"
            self._pending_cr = False
            self._at_line_start = False
        if not self._at_line_start or self.octets + len(tail) == 0:
            tail += CRLF
        self.octets += len(tail)
        self._at_line_start = True
        return tail + TERMINATOR


def encode_message(data: bytes) -> bytes:
    """The whole multi-line body for ``data`` (convenience for small messages and tests)."""
    encoder = MessageEncoder()
    return encoder.encode(data) + encoder.finish()


class TopFilter:
    """Passes a stored message's header, the blank line, and ``body_lines`` body lines.

    RFC 1939 §7 (TOP): if the body has fewer lines, the whole message is passed.
    """

    __slots__ = ("_in_header", "_line_start", "_remaining", "done")

    def __init__(self, body_lines: int) -> None:
        self._remaining = body_lines
        self._in_header = True
        self._line_start = b""  # up to two first octets of the current header line
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return b""
        position = 0
        length = len(chunk)
        while position < length:
            end = chunk.find(b"\n", position)
            if self._in_header:
                if end < 0:
                    self._line_start = (self._line_start + chunk[position : position + 2])[:2]
                    return chunk
                start = (self._line_start + chunk[position : min(end, position + 2)])[:2]
                self._line_start = b""
                position = end + 1
                if start in (b"", b"\r"):
                    self._in_header = False
                    if self._remaining == 0:
                        self.done = True
                        return chunk[:position]
            else:
                if self._remaining == 0:
                    self.done = True
                    return chunk[:position]
                if end < 0:
                    return chunk
                self._remaining -= 1
                position = end + 1
                if self._remaining == 0:
                    self.done = True
                    return chunk[:position]
        return chunk


class MultilineDecoder:
    """Undoes dot-stuffing of a multi-line reply body and finds its end (client side).

    ``take`` decodes from the front of the caller's receive buffer and deletes what it used;
    ``feed`` does the same for octets handed over one piece at a time. Either returns body
    octets (CRLF line ends as sent, stuffing removed). ``done`` becomes true at the
    terminating ``.CRLF`` line; after ``feed``, ``leftover`` then holds the octets received
    after it (pipelined replies), after ``take`` they are still in the buffer.

    Only a line end followed by a dot needs attention (RFC 1939 §3: a dot starting a line
    is stuffing, or the terminator when ``CRLF`` follows it), so one ``find`` of ``LF .``
    per chunk (``find_line_dot``) does the work: a body without such a line is copied once,
    as it is. A dot that may begin the terminator but arrived without the rest stays
    unconsumed.
    """

    __slots__ = ("_at_line_start", "_pending", "done", "leftover", "octets")

    def __init__(self) -> None:
        self._pending = bytearray()  # for ``feed``: octets not consumed yet
        self._at_line_start = True
        self.done = False
        self.leftover = b""
        self.octets = 0

    def feed(self, data: bytes) -> bytes:
        if self.done:
            self.leftover += data
            return b""
        pending = self._pending
        pending += data
        body = self.take(pending, len(pending))
        if self.done:
            self.leftover = bytes(pending)
            pending.clear()
        return body

    def take(self, buffer: bytearray, limit: int) -> bytes:
        """Body octets decoded from the front of ``buffer``, looking at most ``limit``
        octets into it (a little more to tell the terminator); the octets used are
        deleted from ``buffer``."""
        if self.done:
            return b""
        end = min(len(buffer), limit)
        spans: list[tuple[int, int]] = []
        position = 0
        at_line_start = self._at_line_start
        while position < end:
            if at_line_start:
                if buffer[position] == 0x2E:  # "."
                    head = buffer[position : position + 3]
                    if head == TERMINATOR:
                        self.done = True
                        break
                    if len(head) < 3 and TERMINATOR.startswith(head):
                        break  # cannot tell yet: left in the buffer
                    position += 1  # a stuffed dot
                at_line_start = False
                if position == end:
                    break
            found = find_line_dot(buffer, position, end)
            if found < 0:
                spans.append((position, end))
                at_line_start = buffer[end - 1] == 0x0A
                position = end
                break
            spans.append((position, found + 1))
            position = found + 1
            at_line_start = True
        self._at_line_start = at_line_start
        with memoryview(buffer) as view:
            body = b"".join([view[start:stop] for start, stop in spans])
        del buffer[: position + 3 if self.done else position]
        self.octets += len(body)
        return body
