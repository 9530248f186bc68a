"""An in-memory maildrop that keeps the same contract as the Maildir backend.

For tests of the session layer and the fetcher: a ``MemoryStore`` holds every user's
messages and locks; ``store.maildrop(user)`` opens one session's view, as
``MaildirMaildrop(path)`` does. Not thread-safe; one event loop at a time.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from postoffice.errors import MaildropInUseError, MessageVanishedError
from postoffice.storage.base import CommitResult, StoredMessage
from postoffice.storage.wire import wire_size

__all__ = ["MemoryMaildrop", "MemoryStore"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Mailbox:
    messages: dict[str, bytes] = field(default_factory=dict)
    """UID -> stored bytes, oldest first (dicts keep insertion order)."""
    seen: set[str] = field(default_factory=set)
    holder: MemoryMaildrop | None = None
    corrected: dict[str, int] = field(default_factory=dict)


class MemoryStore:
    """Every user's in-memory maildrop; the lock is shared through this object."""

    def __init__(self) -> None:
        self._boxes: dict[str, _Mailbox] = {}
        self._uids = itertools.count(1)

    def _box(self, user: str) -> _Mailbox:
        return self._boxes.setdefault(user, _Mailbox())

    def deliver(self, user: str, message: bytes) -> str:
        """Add a message for ``user``; return its UID (never reused in this store)."""
        uid = f"M{next(self._uids)}"
        self._box(user).messages[uid] = bytes(message)
        return uid

    def remove(self, user: str, uid: str) -> None:
        """Remove a message behind every session's back, as another program might."""
        self._box(user).messages.pop(uid, None)

    def maildrop(self, user: str) -> MemoryMaildrop:
        """A maildrop view of ``user`` for one session."""
        return MemoryMaildrop(self, user)

    def messages(self, user: str) -> dict[str, bytes]:
        """A copy of what is stored for ``user`` (UID -> bytes), for assertions."""
        return dict(self._box(user).messages)

    def seen(self, user: str) -> set[str]:
        """UIDs marked seen by a commit."""
        return set(self._box(user).seen)

    def corrected_sizes(self, user: str) -> dict[str, int]:
        """Sizes recorded through ``correct_size``."""
        return dict(self._box(user).corrected)


class MemoryMaildrop:
    """One session's view of a ``MemoryStore`` user, keeping the ``Maildrop`` contract."""

    def __init__(self, store: MemoryStore, user: str) -> None:
        self._box = store._box(user)
        self._user = user
        self._messages: dict[str, StoredMessage] = {}

    def __repr__(self) -> str:
        return f"MemoryMaildrop({self._user!r})"

    def lock(self) -> None:
        if self._box.holder is self:
            return
        if self._box.holder is not None:
            raise MaildropInUseError(f"maildrop of {self._user!r} is locked")
        self._box.holder = self

    def unlock(self) -> None:
        if self._box.holder is self:
            self._box.holder = None

    def snapshot(self) -> list[StoredMessage]:
        corrected = self._box.corrected
        messages = [
            StoredMessage(key=uid, uid=uid, size=corrected.get(uid, wire_size(data)))
            for uid, data in self._box.messages.items()
        ]
        self._messages = {m.key: m for m in messages}
        return messages

    def _check_member(self, messages: Sequence[StoredMessage]) -> None:
        for message in messages:
            if self._messages.get(message.key) != message:
                raise ValueError(f"{message.key!r} is not in this session's snapshot")

    def open(self, message: StoredMessage) -> BinaryIO:
        self._check_member([message])
        try:
            return io.BytesIO(self._box.messages[message.key])
        except KeyError:
            raise MessageVanishedError(f"message {message.key} is gone") from None

    def correct_size(self, message: StoredMessage, size: int) -> None:
        self._check_member([message])
        logger.warning("size of %s was %d, RETR sent %d", message.key, message.size, size)
        self._box.corrected[message.key] = size

    def commit(
        self, *, deleted: Sequence[StoredMessage], retrieved: Sequence[StoredMessage]
    ) -> CommitResult:
        self._check_member([*deleted, *retrieved])
        removed_keys = {m.key for m in deleted}
        for key in removed_keys:
            self._box.messages.pop(key, None)
            self._box.corrected.pop(key, None)
        self._box.seen.update(m.key for m in retrieved if m.key not in removed_keys)
        return CommitResult(
            removed=len(removed_keys),
            not_removed=0,
            remaining=len(self._messages) - len(removed_keys),
        )
