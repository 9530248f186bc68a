"""Reading a stored message for RETR: a short read from an unbuffered file is not the end."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

from postoffice.server.session import READ_CHUNK, _open_and_read, _read_fully
from postoffice.storage.base import StoredMessage


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


class _OneFile:
    """Stands in for a maildrop whose every message is ``file``."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    def open(self, message: StoredMessage) -> BinaryIO:
        return self.file


_MESSAGE = StoredMessage(key="cur/1.x", uid="1.x", size=0)


def test_a_short_first_read_of_a_large_file_is_not_its_end() -> None:
    """Of a file larger than a chunk, a first read one octet short of the chunk is not
    the whole file: the reply must go on streaming."""
    data = b"z" * (READ_CHUNK + 10)
    file = _Trickle(data, step=READ_CHUNK - 1)
    _, chunk, complete = _open_and_read(_OneFile(file), _MESSAGE)  # type: ignore[arg-type]
    assert chunk == data[:READ_CHUNK]
    assert not complete


def test_a_small_file_is_read_whole_in_one_read(tmp_path: Path) -> None:
    path = tmp_path / "m"
    path.write_bytes(b"Subject: s\n\nbody\n")
    with open(path, "rb", buffering=0) as file:
        _, chunk, complete = _open_and_read(_OneFile(file), _MESSAGE)  # type: ignore[arg-type]
    assert chunk == b"Subject: s\n\nbody\n"
    assert complete
