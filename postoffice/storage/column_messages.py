"""A large maildrop's snapshot as a view of its index's columns: each ``StoredMessage`` made
when asked for.

As a list, a snapshot of 100,000 messages holds 100,000 tuples (8 MB by tracemalloc) beside the
index columns that hold the same keys, UIDLs and sizes, and making them costs tens of
milliseconds at every first login and every load of the index. The view keeps only the
columns, shared with the index (never changed by either). The protocol machine takes the
sizes and UIDLs for STAT, LIST and UIDL column-wise (``sizes``, ``uids``), as it does from
a small maildrop's packed snapshot (``packed.py``); both are ``SnapshotColumns``, which
makes their messages and compares them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import cast, overload

from postoffice.storage.base import StoredMessage

# StoredMessage._make without its Python frame, called by map with the class as its first
# argument (not through a partial).
_new_message = cast(
    Callable[[type[StoredMessage], tuple[str, str, int]], StoredMessage], tuple.__new__
)


def made_messages(
    keys: Iterable[str], uids: Iterable[str], sizes: Iterable[int]
) -> Iterator[StoredMessage]:
    """The messages of three columns, made one by one as the iterator is read."""
    return map(_new_message, itertools.repeat(StoredMessage), zip(keys, uids, sizes, strict=True))


class SnapshotColumns(Sequence[StoredMessage]):
    """An immutable snapshot kept as columns, each message made when asked for: the base of
    ``ColumnMessages`` and of a small maildrop's ``PackedMessages``. Equal to any snapshot,
    list or tuple of the same messages."""

    __slots__ = ()

    def keys(self) -> Sequence[str]:
        raise NotImplementedError

    def uids(self) -> Sequence[str]:
        """The UIDLs in order (never change them)."""
        raise NotImplementedError

    def sizes(self) -> Sequence[int]:
        """The sizes in order (never change them)."""
        raise NotImplementedError

    def _message(self, index: int) -> StoredMessage:
        """Message ``index`` (negative counts from the end); ``IndexError`` past either end."""
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> StoredMessage: ...

    @overload
    def __getitem__(self, index: slice) -> list[StoredMessage]: ...

    def __getitem__(self, index: int | slice) -> StoredMessage | list[StoredMessage]:
        if isinstance(index, slice):
            return list(made_messages(self.keys()[index], self.uids()[index], self.sizes()[index]))
        return self._message(index)

    def __iter__(self) -> Iterator[StoredMessage]:
        return made_messages(self.keys(), self.uids(), self.sizes())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SnapshotColumns):
            return (
                list(self.keys()) == list(other.keys())
                and list(self.uids()) == list(other.uids())
                and list(self.sizes()) == list(other.sizes())
            )
        if isinstance(other, list | tuple):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which do not hash

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)!r})"


class ColumnMessages(SnapshotColumns):
    """``keys[i]``, ``uids[i]`` and ``sizes[i]`` make message i."""

    __slots__ = ("_keys", "_sizes", "_uids")

    def __init__(self, keys: Sequence[str], uids: Sequence[str], sizes: Sequence[int]) -> None:
        """The columns are kept, not copied: the caller never changes them."""
        if not len(keys) == len(uids) == len(sizes):
            raise ValueError("keys, uids and sizes differ in length")
        self._keys = keys
        self._uids = uids
        self._sizes = sizes

    def __len__(self) -> int:
        return len(self._keys)

    def _message(self, index: int) -> StoredMessage:
        return StoredMessage(self._keys[index], self._uids[index], self._sizes[index])

    def keys(self) -> Sequence[str]:
        return self._keys

    def uids(self) -> Sequence[str]:
        return self._uids

    def sizes(self) -> Sequence[int]:
        return self._sizes
