"""The maildrop contract every storage backend fulfils.

A POP3 session uses a maildrop like this (RFC 1939 §4, §6)::

    maildrop.lock()                      # exclusive; MaildropInUseError if held elsewhere
    messages = maildrop.snapshot()       # numbers, sizes and UIDLs fixed for the session
    with maildrop.open(messages[0]) as f: ...   # the stored bytes (LF or CRLF line ends)
    maildrop.commit(deleted=[...], retrieved=[...])  # only after QUIT
    maildrop.unlock()

Backends must keep these promises, checked by the shared contract tests:
- ``snapshot`` never lists a message that is not complete (Maildir ``tmp/`` is never served)
  and lists every message at most once; UIDs are 1-70 characters in 0x21-0x7E, unique, and
  stable across sessions and flag changes made by other programs.
- ``size`` is the exact number of octets RETR sends before dot-stuffing (RFC 1939 §11).
  A backend may take it from metadata it believes without reading the message (Maildir's
  ``,S=,W=`` name tags, as Dovecot does); if RETR then sends another number of octets, the
  session reports it through ``correct_size`` and the next snapshot lists the truth.
- ``commit`` removes exactly the messages given in ``deleted``; one already gone counts as
  removed. Messages delivered after the snapshot are never touched.
- Nothing is removed unless ``commit`` is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple, Protocol


class StoredMessage(NamedTuple):
    """One message as the session's snapshot sees it.

    A named tuple rather than a frozen dataclass: a snapshot of 100,000 messages is made
    from the index columns by ``map(StoredMessage._make, zip(...))``, several times faster.
    """

    key: str
    """The backend's handle for the message (for Maildir: ``new/NAME`` or ``cur/NAME``)."""
    uid: str
    """The UIDL (RFC 1939 §7): 1-70 characters in 0x21-0x7E, unique in the maildrop."""
    size: int
    """Exact octets RETR sends before dot-stuffing: bare LF counted as CRLF."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitResult:
    """What an UPDATE did."""

    removed: int
    """Messages marked deleted that are now gone (including ones already gone)."""
    not_removed: int
    """Messages marked deleted that could not be removed (a storage error)."""
    remaining: int
    """Messages of the snapshot still in the maildrop."""


class Maildrop(Protocol):
    """One user's maildrop, opened for one session."""

    def lock(self) -> None:
        """Take the exclusive session lock; raise ``MaildropInUseError`` if it is held.

        The lock must be released if the process dies (no stale lock files) and must exclude
        sessions in other processes and in this process alike.
        """

    def unlock(self) -> None:
        """Release the lock if held. Safe to call more than once."""

    def snapshot(self) -> Sequence[StoredMessage]:
        """List the complete messages now in the maildrop, in a stable order (oldest first).

        The sequence may be shared with other sessions: never change it."""

    def open(self, message: StoredMessage) -> BinaryIO:
        """Open a message of the snapshot for reading; ``MessageVanishedError`` if it is gone."""

    def correct_size(self, message: StoredMessage, size: int) -> None:
        """Record that RETR found ``size`` octets where the snapshot said ``message.size``."""

    def commit(
        self, *, deleted: Sequence[StoredMessage], retrieved: Sequence[StoredMessage]
    ) -> CommitResult:
        """UPDATE state: remove ``deleted``, mark ``retrieved`` as seen, make it durable."""
