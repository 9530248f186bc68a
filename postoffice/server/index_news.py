"""Index news between worker processes.

Each worker remembers the snapshots it took (``storage/maildir_index.py``), and a login
that lands on the worker which listed the maildrop last costs a few ``stat`` calls; on
another worker it first reads the index file that one wrote (about 10 ms for 10,000
messages, 100 ms for 100,000). The kernel picks the worker for each connection, so a
user's next login went to either at random. Now a worker that writes a maildrop's index
tells the others over a datagram socket, and they read the file into their memory
straight away, so the next login finds it remembered wherever it lands: a large file
(in a thread), and a small one only by a worker that remembers an earlier version (it
has served that maildrop), so that N workers do not each read every small file.

While a worker reads a large file it stops accepting connections (at most
``HOLD_ACCEPTING_SECONDS``): a login that would land there now, as a client that logs in
again right after QUIT does, goes to a worker that has the snapshot in memory already.
Every worker but the writer hears the news, so they would all pause together; a worker
holds at most once every ``HOLD_INTERVAL_SECONDS``, which bounds what a burst of large
first logins (after a restart) costs in accepting.

Reading is all they do: no lock, no listing, no write, and so no news back. The memory
is checked against the file and the directories at every login as before, so news that
arrives late or out of order costs time, never correctness.

The same channel carries the passwords a worker verified against an expensive hash
(``auth/verified_cache.py``): the user's name, stored hash, the keyed digest and its
expiry, so the others skip the hash too. News lost costs the next login there one hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from postoffice.auth.verified_cache import DIGEST_OCTETS, VerifiedPasswords
from postoffice.storage import maildir_index
from postoffice.storage.maildir import MaildirMaildrop

log = logging.getLogger(__name__)

THREAD_FROM_OCTETS = 512 * 1024
"""An index file larger than this (about 5,000 messages) is read in a thread, not on the
event loop, so the sessions of this worker are not held up by it."""
HOLD_ACCEPTING_SECONDS = 0.5
"""The longest a worker stops accepting while it reads index files it was told of."""
HOLD_INTERVAL_SECONDS = 5.0
"""A worker stops accepting for such a read at most once in this time."""
_NEWS_OCTETS = 65536  # a datagram: a scheme name and a path, or a verified password
_VERIFIED = b"\x01"  # first octet of verified-password news (never starts a scheme name)
_EXPIRY = struct.Struct("!d")


def channels(workers: int) -> list[tuple[socket.socket, socket.socket]]:
    """One (inbox, address) datagram pair per worker, made before the workers are forked:
    worker ``i`` reads ``inbox`` of pair ``i`` and sends to ``address`` of the others."""
    pairs = []
    for _ in range(workers):
        inbox, address = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        inbox.setblocking(False)
        address.setblocking(False)
        pairs.append((inbox, address))
    return pairs


class IndexNews:
    """This worker's end: tells the others of the index files it writes, and reads the
    files they tell it of."""

    def __init__(
        self,
        inbox: socket.socket,
        others: list[socket.socket],
        *,
        uidl_format: str,
        verified: VerifiedPasswords | None = None,
    ) -> None:
        """``verified``: the cache this worker shares (its key) with the others, or None."""
        self._inbox = inbox
        self._others = others
        self._uidl_format = uidl_format
        self._verified = verified
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading: set[tuple[str, str]] = set()  # (path, scheme) being read in a thread
        self._hold_accepting: Callable[[bool], None] | None = None
        self._hold_ends: asyncio.TimerHandle | None = None
        self._held_at = -HOLD_INTERVAL_SECONDS  # loop time of the last hold

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        hold_accepting: Callable[[bool], None] | None = None,
    ) -> None:
        """``hold_accepting(True)`` stops this worker accepting connections while it reads
        a large index file, ``(False)`` goes on (module docstring)."""
        self._loop = loop
        self._hold_accepting = hold_accepting
        loop.add_reader(self._inbox.fileno(), self._receive)
        maildir_index.on_index_written(self.announce)
        if self._verified is not None:
            self._verified.on_remember = self.announce_verified

    def close(self) -> None:
        self._accept_again()
        maildir_index.on_index_written(None)
        if self._verified is not None:
            self._verified.on_remember = None
        if self._loop is not None:
            self._loop.remove_reader(self._inbox.fileno())
            self._loop = None

    def announce(self, maildir: Path, scheme: str) -> None:
        """Tell the other workers (any thread may call this; a full inbox loses the news,
        which only costs the next login there the reading of the file)."""
        self._send(scheme.encode("utf-8", "surrogateescape") + b"\0" + os.fsencode(maildir))

    def announce_verified(self, name: str, stored_hash: str, digest: bytes, expires: float) -> None:
        """Tell the other workers of a password verified here (from a hashing thread)."""
        text = (name + "\0" + stored_hash).encode("utf-8", "surrogateescape")
        self._send(_VERIFIED + digest + _EXPIRY.pack(expires) + text)

    def _send(self, news: bytes) -> None:
        for other in self._others:
            with contextlib.suppress(OSError):
                other.send(news)

    def _receive(self) -> None:
        for _ in range(64):  # the rest at the next wake-up
            try:
                news = self._inbox.recv(_NEWS_OCTETS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warning("index news: %s", error)
                return
            if news[:1] == _VERIFIED:
                self._learn(news)
                continue
            scheme_raw, separator, path_raw = news.partition(b"\0")
            if not separator or not path_raw:
                continue
            self._read(os.fsdecode(path_raw), scheme_raw.decode("utf-8", "surrogateescape"))

    def _learn(self, news: bytes) -> None:
        verified = self._verified
        head = 1 + DIGEST_OCTETS + _EXPIRY.size
        if verified is None or len(news) <= head:
            return
        digest = news[1 : 1 + DIGEST_OCTETS]
        (expires,) = _EXPIRY.unpack_from(news, 1 + DIGEST_OCTETS)
        name, separator, stored_hash = (
            news[head:].decode("utf-8", "surrogateescape").partition("\0")
        )
        if separator and name and stored_hash:
            verified.learn(name, stored_hash, digest, expires)

    def _read(self, path: str, scheme: str) -> None:
        maildrop = MaildirMaildrop(Path(path), uidl_format=self._uidl_format)
        if maildrop.scheme_id != scheme:
            return  # written under another UIDL scheme: not what logins here would use
        try:
            size = os.stat(os.path.join(path, maildir_index.INDEX_NAME)).st_size
        except OSError:
            return
        if size <= THREAD_FROM_OCTETS:
            # A small maildrop this worker has not served costs its first login here a few
            # milliseconds: not worth every worker reading every file.
            if maildir_index.remembers(maildrop.path, scheme):
                self._remember(maildrop)
            return
        key = (path, scheme)
        if key in self._reading or self._loop is None:
            return
        now = self._loop.time()
        if (
            not self._reading
            and self._hold_accepting is not None
            and now - self._held_at >= HOLD_INTERVAL_SECONDS
        ):
            self._held_at = now
            self._hold_accepting(True)
            self._hold_ends = self._loop.call_later(HOLD_ACCEPTING_SECONDS, self._accept_again)
        self._reading.add(key)
        future = self._loop.run_in_executor(None, self._remember, maildrop)
        future.add_done_callback(lambda _future: self._read_done(key))

    def _read_done(self, key: tuple[str, str]) -> None:
        self._reading.discard(key)
        if not self._reading:
            self._accept_again()

    def _accept_again(self) -> None:
        if self._hold_ends is None:
            return  # not holding (or the deadline already ended the hold)
        self._hold_ends.cancel()
        self._hold_ends = None
        if self._hold_accepting is not None:
            self._hold_accepting(False)

    @staticmethod
    def _remember(maildrop: MaildirMaildrop) -> None:
        try:
            maildrop.remember_index_file()
        except Exception:  # a cache warmed ahead of time: the next login reads the file
            log.exception("index news: cannot read the index of %s", maildrop.path)
