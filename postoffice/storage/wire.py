"""The POP3 wire size of a stored message (RFC 1939 §11).

A maildrop stores messages with LF or CRLF line ends. RETR sends them as CRLF lines, so the
size LIST reports is: the stored octets, plus one octet for every bare LF (an LF not
preceded by CR), plus a final CRLF when the data does not end with LF (an empty message
too: it goes out as one empty line). Dot-stuffing is not counted. This matches
``proto.framing.MessageEncoder.octets``.

Pure functions on bytes, counted with ``bytes.count`` (C speed) rather than a Python loop.
"""

from __future__ import annotations

__all__ = ["WireSizeCounter", "wire_size"]

_LF = 0x0A
_CR = 0x0D


def wire_size(data: bytes) -> int:
    """The octets RETR sends for ``data`` before dot-stuffing."""
    bare_lf = data.count(b"\n") - data.count(b"\r\n")
    size = len(data) + bare_lf
    if not data.endswith(b"\n"):
        size += 2
    return size


class WireSizeCounter:
    """``wire_size`` computed incrementally over chunks of one message.

    A CRLF split across two chunks (CR ending one, LF starting the next) counts as CRLF.
    """

    __slots__ = ("_bare_lf", "_last", "octets")

    def __init__(self) -> None:
        self.octets = 0
        """Stored octets seen so far (the on-disk size)."""
        self._bare_lf = 0
        self._last = -1

    def update(self, chunk: bytes) -> None:
        """Count one more chunk of the message."""
        if not chunk:
            return
        lf = chunk.count(b"\n")
        if lf and (self._last == _CR or b"\r" in chunk):  # without a CR every LF is bare
            lf -= chunk.count(b"\r\n") + (self._last == _CR and chunk[0] == _LF)
        self.counted(len(chunk), lf, chunk[-1])

    def counted(self, octets: int, bare_lf: int, last: int) -> None:
        """Count a chunk the caller has measured itself: its length, its LFs not preceded by
        a CR (counting a CR that ended the chunk before), its last octet."""
        self.octets += octets
        self._bare_lf += bare_lf
        self._last = last

    @property
    def last(self) -> int:
        """The last octet counted (-1 before any)."""
        return self._last

    @property
    def size(self) -> int:
        """The wire size of everything counted so far, as if the message ended here."""
        final = 0 if self._last == _LF else 2
        return self.octets + self._bare_lf + final
