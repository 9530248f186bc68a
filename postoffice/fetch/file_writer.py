"""A Maildir's file work in a process of its own, beside the fetcher's event loop.

Theory of operation
-------------------
In a thread, making a message's file takes four system calls (create, write, link,
close), and after each the thread waits for the interpreter lock, which the event loop
holds while it decodes the next replies: a group of small messages then takes longer to
make durable than to receive. ``FileWriter`` hands that work to a helper process
(``writer_process.py``, started with the interpreter's ``-I -S``: no site, no
environment, no postoffice imports), which makes the files as the messages arrive:

- the event loop sends each message's octets as they are whole (``send_data``), and
  larger ones in pieces as they come; a record is written by the loop's thread alone, in
  order, without blocking (what the pipe does not take waits in a buffer until it can);
- a group commit (``commit``, from the commit thread) asks for one ``syncfs`` and the
  links, and waits for the answer; ``sync`` asks for a ``syncfs`` alone.

The order of the durability steps is the same as in the thread (``delivery``): content
durable, then named; names durable before they are journaled. A record sent from another
thread is passed to the loop (``call_soon_threadsafe``), so it follows everything the loop
sent before. If the helper ends, the answer pipe reaches its end and ``commit`` or
``sync`` raises ``WriterStopped``; what it had not named vanishes with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import sys
import threading
from pathlib import Path

from postoffice.fetch.writer_process import ANSWER, ITEM, ITEM_ERRNO, RECORD

__all__ = ["FileWriter", "WriterStopped"]

_SCRIPT = str(Path(__file__).with_name("writer_process.py"))
_PIPE_OCTETS = 1 << 20
"""The pipe's size asked for: about a megabyte of messages in flight to the helper."""
UNSENT_OCTETS = 4 << 20
"""Beyond this much waiting for the pipe, the loop waits for the helper to take it (a
message far larger than the batches, arriving faster than the disk takes it)."""


class WriterStopped(OSError):
    """The helper process ended (or could not be reached): nothing it did is answered."""


class FileWriter:
    """The parent's end of a ``writer_process``; see the module docstring."""

    def __init__(
        self, pid: int, records: int, answers: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.pid = pid
        self._records = records  # non-blocking, written by the loop's thread only
        self._answers = answers  # blocking, read by whoever waits for an answer
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._unsent = bytearray()  # what the pipe did not take yet
        self._broken: OSError | None = None
        self._asking = threading.Lock()  # one question at a time
        self._closed = False

    @classmethod
    def start(
        cls, tmp: str, new: str, loop: asyncio.AbstractEventLoop, *, fail_syncfs_at: int = 0
    ) -> FileWriter:
        """Start the helper for the Maildir folders ``tmp`` and ``new``; called on the
        loop's thread. ``fail_syncfs_at``: for tests, that ``syncfs`` fails with EIO."""
        if not sys.executable or not os.path.isfile(_SCRIPT):
            raise OSError(errno.ENOENT, "no interpreter or script to run the file writer with")
        records_read, records_write = os.pipe()
        answers_read, answers_write = os.pipe()
        try:
            with contextlib.suppress(OSError, AttributeError):  # Linux only; a hint
                fcntl.fcntl(records_write, fcntl.F_SETPIPE_SZ, _PIPE_OCTETS)
            arguments = [sys.executable, "-I", "-S", _SCRIPT, tmp, new]
            if fail_syncfs_at:
                arguments.append(str(fail_syncfs_at))
            pid = os.posix_spawn(
                sys.executable,
                arguments,
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, records_read, 0),
                    (os.POSIX_SPAWN_DUP2, answers_write, 1),
                ],
            )
        except BaseException:
            for fd in (records_read, records_write, answers_read, answers_write):
                os.close(fd)
            raise
        os.close(records_read)
        os.close(answers_write)
        os.set_blocking(records_write, False)
        return cls(pid, records_write, answers_read, loop)

    # -- records (any thread; written by the loop's) ----------------------------------

    def send_data(self, ticket: int, octets: bytes) -> None:
        """Append ``octets`` to the file of ``ticket`` (made at its first piece)."""
        self._send(RECORD.pack(b"D", ticket, len(octets)), octets)

    def drop(self, ticket: int) -> None:
        """Forget the file of ``ticket``: it was never named."""
        self._send(RECORD.pack(b"X", ticket, 0), b"")

    def _send(self, head: bytes, payload: bytes) -> None:
        if threading.get_ident() == self._loop_thread:
            self._write(head, payload)
        else:
            self._loop.call_soon_threadsafe(self._write, head, payload)

    def _write(self, head: bytes, payload: bytes) -> None:
        if self._broken is not None or self._closed:
            return  # the answer pipe tells whoever waits
        if self._unsent:
            self._unsent += head
            self._unsent += payload
            if len(self._unsent) > UNSENT_OCTETS:
                self._drain_now()
            return
        data = head + payload if len(payload) < 4096 else None
        for piece in (data,) if data is not None else (head, payload):
            if self._unsent:
                self._unsent += piece
                continue
            try:
                written = os.write(self._records, piece)
            except BlockingIOError:
                written = 0
            except OSError as error:
                self._broken = error
                return
            if written < len(piece):
                self._unsent += memoryview(piece)[written:]
        if len(self._unsent) > UNSENT_OCTETS:
            self._drain_now()
        elif self._unsent:
            self._loop.add_writer(self._records, self._flush)

    def _flush(self) -> None:
        try:
            written = os.write(self._records, self._unsent)
        except BlockingIOError:
            return
        except OSError as error:
            self._broken = error
            written = len(self._unsent)
        del self._unsent[:written]
        if not self._unsent:
            self._loop.remove_writer(self._records)

    def _drain_now(self) -> None:
        self._loop.remove_writer(self._records)
        os.set_blocking(self._records, True)
        try:
            while self._unsent:
                del self._unsent[: os.write(self._records, self._unsent)]
        except OSError as error:
            self._broken = error
            self._unsent.clear()
        finally:
            os.set_blocking(self._records, False)

    # -- questions (a worker thread: they block until answered) -------------------------

    def commit(self, items: list[tuple[int, str]]) -> list[int]:
        """One ``syncfs``, then each item's file linked under its name; an errno per item
        (0: named). Raises ``OSError`` if that ``syncfs`` failed (the names of the commit
        before are then taken back), ``WriterStopped`` if the helper is gone."""
        payload = b"".join(
            ITEM.pack(ticket, len(name.encode())) + name.encode() for ticket, name in items
        )
        with self._asking:
            self._send(RECORD.pack(b"C", 0, len(payload)), payload)
            problem, outcomes = self._answer()
        if problem:
            raise OSError(problem, f"syncfs: {os.strerror(problem)}")
        return outcomes

    def sync(self) -> None:
        """One ``syncfs`` for the names of the last commit; raises as ``commit`` does."""
        with self._asking:
            self._send(RECORD.pack(b"S", 0, 0), b"")
            problem, _ = self._answer()
        if problem:
            raise OSError(problem, f"syncfs: {os.strerror(problem)}")

    def _answer(self) -> tuple[int, list[int]]:
        if threading.get_ident() == self._loop_thread and self._unsent:
            self._drain_now()  # the loop cannot flush while its own thread waits here
        head = self._read(ANSWER.size)
        problem, count = ANSWER.unpack(head)
        body = self._read(count * ITEM_ERRNO.size)
        outcomes = [value for (value,) in ITEM_ERRNO.iter_unpack(body)]
        return problem, outcomes

    def _read(self, count: int) -> bytes:
        pieces = []
        while count:
            try:
                piece = os.read(self._answers, count)
            except OSError as error:
                raise WriterStopped(error.errno, f"the file writer: {error.strerror}") from error
            if not piece:
                raise WriterStopped(errno.EPIPE, "the file writer stopped")
            pieces.append(piece)
            count -= len(piece)
        return b"".join(pieces)

    # -- the end ------------------------------------------------------------------------

    def close(self) -> None:
        """End the helper's input (on the loop's thread); ``wait`` then reaps it."""
        if self._closed:
            return
        self._closed = True
        if self._unsent:
            self._loop.remove_writer(self._records)
            self._unsent.clear()
        os.close(self._records)

    def wait(self) -> int:
        """Until the helper has ended (blocking); its exit status."""
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = 0
        finally:
            with contextlib.suppress(OSError):
                os.close(self._answers)
        return os.waitstatus_to_exitcode(status)
