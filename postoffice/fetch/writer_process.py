"""The file writer's own process: makes, syncs and names a Maildir's files for the fetcher.

Theory of operation
-------------------
``file_writer.FileWriter`` starts this file as a script (``python -I -S writer_process.py
TMP NEW``) and talks to it over two pipes: records on its standard input, answers on its
standard output. It imports nothing but the standard library's ``os``, ``struct``, ``errno``,
``signal`` and ``ctypes``, so it is running a few milliseconds after it is started.

Its work is what ``delivery.MaildirDestination.commit_group`` does in a thread of the
fetcher, in the same order, so that it runs beside the fetcher's event loop instead of
taking turns with it at the interpreter lock:

- ``D`` (ticket, octets): append the octets to the ticket's file in TMP, made without a
  name (``O_TMPFILE``) at its first ``D``. A failed write is remembered for the ticket.
- ``X`` (ticket): drop the ticket's file (it vanishes: it has no name).
- ``C`` (items: ticket and name): one ``syncfs`` makes every file written so far durable,
  and the names linked by the ``C`` before; then each item's file is linked into NEW
  under its name. Answered with the errno of that ``syncfs`` (0: done) and one per item.
  If the ``syncfs`` failed, the names of the ``C`` before are taken back (they were not
  durable), and every file written so far fails (the error may have been any of theirs).
- ``S``: one ``syncfs`` for the last ``C``'s names; answered, and on failure those names
  are taken back.

The end of its input ends it; files still without a name vanish with it. The directory
TMP is opened before any file is written, so its ``syncfs`` reports every write-back error
since.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct
import sys

RECORD = struct.Struct("!cII")
"""Each record's head: its kind, the ticket, the length of what follows."""
ITEM = struct.Struct("!IH")
"""Each item of a ``C``: the ticket and the length of the name that follows."""
ANSWER = struct.Struct("!II")
"""Each answer's head: the ``syncfs`` errno (0: done) and how many item errnos follow."""
ITEM_ERRNO = struct.Struct("!I")

_READ_OCTETS = 1 << 20
_PROC_FD = "/proc/self/fd/"


class _Input:
    """Records from a descriptor, read in large pieces; a large payload is read straight
    into its own buffer (one copy from the pipe, none after)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self._start = 0

    def take(self, count: int) -> bytearray | None:
        """The next ``count`` octets, or None at the end of the input."""
        held = len(self._buffer) - self._start
        if held >= count:
            piece = self._buffer[self._start : self._start + count]
            self._start += count
            return piece
        piece = bytearray(count)
        piece[:held] = memoryview(self._buffer)[self._start :]
        self._buffer = bytearray()
        self._start = 0
        view = memoryview(piece)
        filled = held
        while filled < count:
            if count - filled >= _READ_OCTETS:
                got = os.readv(self._fd, [view[filled:]])
                if not got:
                    return None
                filled += got
                continue
            chunk = os.read(self._fd, _READ_OCTETS)  # this piece and what follows it
            if not chunk:
                return None
            used = min(len(chunk), count - filled)
            view[filled : filled + used] = chunk[:used]
            filled += used
            if used < len(chunk):
                self._buffer = bytearray(chunk[used:])
        return piece


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Writer:
    def __init__(self, tmp: str, new: str, *, fail_syncfs_at: int) -> None:
        self.tmp = tmp
        self.tmp_fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.new_fd = os.open(new, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.files: dict[int, int] = {}  # ticket -> descriptor
        self.failed: dict[int, int] = {}  # ticket -> errno of its failed write
        self.unsynced: list[str] = []  # names linked by the last C, not yet durable
        self._syncfs = ctypes.CDLL(None, use_errno=True).syncfs
        self._syncfs.argtypes = [ctypes.c_int]
        self._syncfs.restype = ctypes.c_int
        self._syncs = 0
        self._fail_syncfs_at = fail_syncfs_at  # for tests: that syncfs reports EIO

    def data(self, ticket: int, octets: bytearray) -> None:
        if ticket in self.failed:
            return
        fd = self.files.get(ticket)
        try:
            if fd is None:
                fd = os.open(self.tmp, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
                self.files[ticket] = fd
            _write_all(fd, octets)
        except OSError as error:
            self.drop(ticket)
            self.failed[ticket] = error.errno or errno.EIO

    def drop(self, ticket: int) -> None:
        self.failed.pop(ticket, None)
        fd = self.files.pop(ticket, None)
        if fd is not None:
            os.close(fd)

    def sync(self) -> int:
        """``syncfs``; its errno (0: done). On failure the unsynced names are taken back,
        and every file written so far fails too: that ``syncfs`` has reported the write-back
        error, which may have been one of theirs, and the next one will not report it."""
        self._syncs += 1
        if self._syncs == self._fail_syncfs_at:
            problem = errno.EIO
        elif self._syncfs(self.tmp_fd) != 0:
            problem = ctypes.get_errno() or errno.EIO
        else:
            self.unsynced = []
            return 0
        for name in self.unsynced:
            try:  # noqa: SIM105 - no contextlib: the helper imports as little as it can
                os.unlink(name, dir_fd=self.new_fd)
            except FileNotFoundError:
                pass
        self.unsynced = []
        for ticket in list(self.files):
            self.drop(ticket)
            self.failed[ticket] = problem
        return problem

    def commit(self, items: list[tuple[int, str]]) -> tuple[int, list[int]]:
        problem = self.sync()
        if problem:
            for ticket, _ in items:
                self.drop(ticket)  # the session stops delivering: forget them
            return problem, []
        outcomes = []
        for ticket, name in items:
            outcome = self.failed.pop(ticket, 0)
            fd = self.files.pop(ticket, None)
            if fd is None and not outcome:
                outcome = errno.ENOENT  # never written: nothing to name
            if fd is not None:
                if not outcome:
                    try:
                        os.link(f"{_PROC_FD}{fd}", name, dst_dir_fd=self.new_fd)
                        self.unsynced.append(name)
                    except OSError as error:
                        outcome = error.errno or errno.EIO
                os.close(fd)
            outcomes.append(outcome)
        return 0, outcomes


def _items(payload: bytearray) -> list[tuple[int, str]]:
    items = []
    position = 0
    while position < len(payload):
        ticket, length = ITEM.unpack_from(payload, position)
        position += ITEM.size
        items.append((ticket, payload[position : position + length].decode("utf-8")))
        position += length
    return items


def _answer(fd: int, problem: int, outcomes: list[int]) -> None:
    parts = [ANSWER.pack(problem, len(outcomes))]
    parts.extend(ITEM_ERRNO.pack(outcome) for outcome in outcomes)
    _write_all(fd, b"".join(parts))


def serve(
    tmp: str, new: str, *, fail_syncfs_at: int = 0, input_fd: int = 0, output_fd: int = 1
) -> int:
    """Carry out records until the end of the input; the exit status."""
    writer = _Writer(tmp, new, fail_syncfs_at=fail_syncfs_at)
    source = _Input(input_fd)
    while True:
        head = source.take(RECORD.size)
        if head is None:
            return 0
        kind, ticket, length = RECORD.unpack(head)
        payload = source.take(length) if length else bytearray()
        if payload is None:
            return 1  # cut short: the fetcher is gone
        if kind == b"D":
            writer.data(ticket, payload)
        elif kind == b"X":
            writer.drop(ticket)
        elif kind == b"C":
            problem, outcomes = writer.commit(_items(payload))
            _answer(output_fd, problem, outcomes)
        elif kind == b"S":
            _answer(output_fd, writer.sync(), [])
        else:
            return 2


def main(argv: list[str]) -> int:
    # Ctrl-C reaches the whole process group: the fetcher stops, then closes the input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tmp, new = argv[1], argv[2]
    fail_syncfs_at = int(argv[3]) if len(argv) > 3 else 0
    try:
        return serve(tmp, new, fail_syncfs_at=fail_syncfs_at)
    except (OSError, ValueError, struct.error):
        return 3  # the fetcher sees the end of the answers and stops delivering


if __name__ == "__main__":
    sys.exit(main(sys.argv))
