"""Reading a stored message for RETR: a short read from an unbuffered file is not the end."""

from __future__ import annotations

import io

from postoffice.server.session import _read_fully


class _Trickle(io.RawIOBase):
    """A file that hands out at most ``step`` octets per read, as a slow filesystem may."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = data
        self._step = step
        self._at = 0
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self.reads += 1
        piece = self._data[self._at : self._at + min(self._step, len(buffer))]
        buffer[: len(piece)] = piece
        self._at += len(piece)
        return len(piece)


def test_short_reads_are_joined_up_to_what_was_asked() -> None:
    data = bytes(range(256)) * 40
    file = _Trickle(data, step=7)
    assert _read_fully(file, 1000) == data[:1000]  # type: ignore[arg-type]
    assert _read_fully(file, len(data)) == data[1000:]  # type: ignore[arg-type]
    assert _read_fully(file, 10) == b""  # type: ignore[arg-type]


def test_a_whole_file_in_one_read_is_returned_as_is() -> None:
    file = io.BytesIO(b"hello\n")
    assert _read_fully(file, 7) == b"hello\n"


def test_a_first_read_of_the_whole_size_needs_no_read_for_the_end() -> None:
    file = _Trickle(b"x" * 100, step=100)
    assert _read_fully(file, 101, whole=100) == b"x" * 100  # type: ignore[arg-type]
    assert file.reads == 1
    short = _Trickle(b"y" * 100, step=30)
    assert _read_fully(short, 101, whole=100) == b"y" * 100  # type: ignore[arg-type]
    assert short.reads == 5  # four short reads, then the one that finds the end
