"""Where fetched messages go: a Maildir, written so that a crash never duplicates or loses.

Theory of operation
-------------------
Durability order for one message (the session drives it; this module does steps 1-4):

1. receive the RETR body (CRLF becomes LF, the Maildir convention): held in memory, or
   streamed into ``tmp/NAME`` once it is larger than ``SPILL_OCTETS``;
2. after the terminating dot: write ``tmp/NAME`` (if not yet there) and ``fsync`` it
   (``commit``);
3. ``rename`` it to ``new/NAME`` (``commit``);
4. ``fsync`` the ``new/`` folder, so the rename itself survives a power cut (``sync``;
   one call may cover several messages committed before it);
5. (session) append the UIDLs to the journal and make it durable;
6. (session) only then DELE, QUIT, and wait for ``+OK``.

NAME is derived from (account, UIDL) alone (a digest), plus ``,S=`` and ``,W=`` size tags
that postoffice's and Dovecot's Maildir readers use. So the same message always lands
under the same name: a crash between 3 and 5 leaves ``new/NAME`` (or ``cur/NAME:2,...``
once a reader has seen it), and at start-up ``find_delivered`` finds it by its prefix and
the session journals it instead of downloading it again. ``prepare`` removes our own
leftovers in ``tmp/`` (a crash before 3): they were never visible to readers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Protocol

from postoffice.durable import fsync_directory
from postoffice.storage.maildir import ensure_maildir
from postoffice.storage.wire import WireSizeCounter

__all__ = ["Destination", "MaildirDestination", "MessageSink", "message_key"]

_SUFFIX = ".fetched"
SPILL_OCTETS = 256 * 1024
"""A message held in memory beyond this many octets is streamed into ``tmp/`` instead."""


class MessageSink(Protocol):
    """One message being delivered."""

    def write(self, data: bytes) -> None: ...

    def commit(self) -> str:
        """Make the message's content durable and visible; return its local name. Blocking.

        The name becomes durable at the destination's next ``sync``. The sinks of one
        destination may commit concurrently, each from its own thread."""
        ...

    def abort(self) -> None:
        """Drop what was written; nothing of it may become visible."""
        ...


class Destination(Protocol):
    """A local mail store the fetcher delivers into (Maildir here; mbox and MDA in
    ``spooled``)."""

    idempotent: bool
    """True if ``find_delivered`` can tell what a crash left delivered but unjournaled:
    then the session may group-commit many messages before journaling them."""

    def prepare(self) -> None:
        """Create the store if missing and clean up after a crash. Blocking."""
        ...

    def find_delivered(self, uidls: Iterable[str]) -> dict[str, str]:
        """Of ``uidls``, those already in the store, with their local names. Blocking."""
        ...

    def begin(self, uidl: str) -> MessageSink: ...

    def sync(self) -> None:
        """Make every committed message durable, names included. Blocking."""
        ...


def message_key(account: str, uidl: str) -> str:
    """The deterministic part of the local name of (account, UIDL)."""
    digest = hashlib.sha256(f"{account}\0{uidl}".encode()).hexdigest()[:32]
    return f"{digest}.{account}{_SUFFIX}"


def _key_of(name: str) -> str:
    # "KEY,S=..,W=..:2,S" -> "KEY": drop the info part and the size tags.
    return name.partition(":")[0].partition(",")[0]


class MaildirDestination:
    """Delivers into a Maildir under names derived from (account, UIDL)."""

    idempotent = True

    def __init__(self, path: Path, account: str) -> None:
        self.path = path
        self.account = account

    def prepare(self) -> None:
        ensure_maildir(self.path)
        tmp = self.path / "tmp"
        for name in os.listdir(tmp):
            if name.endswith(f".{self.account}{_SUFFIX}"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp / name)
        fsync_directory(self.path)

    def find_delivered(self, uidls: Iterable[str]) -> dict[str, str]:
        present: dict[str, str] = {}
        for sub in ("new", "cur"):
            for name in os.listdir(self.path / sub):
                present.setdefault(_key_of(name), f"{sub}/{name}")
        found: dict[str, str] = {}
        for uidl in uidls:
            local = present.get(message_key(self.account, uidl))
            if local is not None:
                found[uidl] = local
        return found

    def begin(self, uidl: str) -> MessageSink:
        return _MaildirMessage(self.path, message_key(self.account, uidl))

    def sync(self) -> None:
        fsync_directory(self.path / "new")


class _MaildirMessage:
    """One message: held in memory up to ``SPILL_OCTETS``, streamed into ``tmp/`` beyond.

    A small message touches the filesystem only in ``commit`` (create, write, fsync, close,
    rename), which the session runs in worker threads: creating files on the event loop
    would wait behind the journal commits other threads' fsyncs cause."""

    __slots__ = ("_chunks", "_counter", "_done", "_file", "_held_cr", "_key", "_maildir", "_tmp")

    def __init__(self, maildir: Path, key: str) -> None:
        self._maildir = maildir
        self._key = key
        self._tmp = maildir / "tmp" / key
        self._chunks: list[bytes] = []
        self._file: BinaryIO | None = None
        self._counter = WireSizeCounter()
        self._held_cr = False
        self._done = False

    def _open(self) -> BinaryIO:
        # O_TRUNC, not O_EXCL: a leftover of ours by this name is a dead partial copy.
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]  # the LF that may follow is in the next chunk
            self._held_cr = True
        data = data.replace(b"\r\n", b"\n")
        self._counter.update(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._chunks.append(data)
        if self._counter.octets > SPILL_OCTETS:
            self._file = self._open()
            self._file.writelines(self._chunks)
            self._chunks = []

    def commit(self) -> str:
        if self._held_cr:
            self._counter.update(b"\r")
            self._chunks.append(b"\r")
            self._held_cr = False
        file = self._file if self._file is not None else self._open()
        self._file = file
        try:
            file.writelines(self._chunks)
            self._chunks = []
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()
        name = f"{self._key},S={self._counter.octets},W={self._counter.size}"
        os.rename(self._tmp, self._maildir / "new" / name)
        self._done = True
        return name

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._chunks = []
        if self._file is None:
            return  # nothing reached the filesystem
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)
