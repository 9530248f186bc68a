"""A small maildrop's snapshot kept packed: the messages' keys and UIDLs in one string, their
sizes in an array, each ``StoredMessage`` made when asked for.

A remembered maildrop of a few messages (the usual one) would otherwise hold, per message,
a tuple, two strings and an integer: about 280 octets for some 80 octets of names, most of
it object headers. An idle session holds its snapshot for as long as it lasts, so with
thousands of them this is most of their memory. Packed, five messages take about 700
octets instead of 1,400. Making a message costs two slices (under a microsecond); only
maildrops below ``maildir_index._DERIVED_BELOW`` messages are packed, so a listing of the
whole snapshot stays cheap.
"""

from __future__ import annotations

import array
from collections.abc import Iterator, Sequence
from typing import overload

from postoffice.storage.base import StoredMessage

_SEPARATOR = "\0"  # in neither a file name nor a UIDL (0x21-0x7E)
_new_message = StoredMessage._make


class PackedMessages(Sequence[StoredMessage]):
    """An immutable snapshot: ``keys[i]``, ``uids[i]`` and ``sizes[i]`` make message i.

    It also keeps the messages' sizes on disk, which the index needs and messages do not.
    """

    __slots__ = ("_ends", "_sizes", "_text")

    def __init__(
        self,
        keys: Sequence[str],
        uids: Sequence[str],
        sizes: Sequence[int],
        disk_sizes: Sequence[int] | None = None,
    ) -> None:
        """``disk_sizes``: None: the same as ``sizes``."""
        if disk_sizes is None:
            disk_sizes = sizes
        if not len(keys) == len(uids) == len(sizes) == len(disk_sizes):
            raise ValueError("keys, uids and sizes differ in length")
        fields = [field for pair in zip(keys, uids, strict=True) for field in pair]
        text = _SEPARATOR.join(fields)
        if text.count(_SEPARATOR) != max(len(fields) - 1, 0):
            raise ValueError("a key or UIDL holds a NUL")
        ends = array.array("I")  # where each field ends in ``text``
        end = -1
        for field in fields:
            end += len(field) + 1
            ends.append(end)
        self._text = text
        self._ends = ends
        self._sizes = array.array("Q", sizes)  # then the sizes on disk: one array, not two
        self._sizes.extend(disk_sizes)

    def __len__(self) -> int:
        return len(self._ends) // 2

    @overload
    def __getitem__(self, index: int) -> StoredMessage: ...

    @overload
    def __getitem__(self, index: slice) -> list[StoredMessage]: ...

    def __getitem__(self, index: int | slice) -> StoredMessage | list[StoredMessage]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        count = len(self._ends) // 2
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError("message index out of range")
        ends, text = self._ends, self._text
        start = ends[2 * index - 1] + 1 if index else 0
        middle = ends[2 * index]
        return StoredMessage(
            text[start:middle], text[middle + 1 : ends[2 * index + 1]], self._sizes[index]
        )

    def __iter__(self) -> Iterator[StoredMessage]:
        return map(_new_message, zip(self.keys(), self.uids(), self.sizes(), strict=True))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedMessages):
            return (
                self._text == other._text
                and self._ends == other._ends
                and self.sizes() == other.sizes()
            )
        if isinstance(other, list | tuple):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which do not hash

    def __repr__(self) -> str:
        return f"PackedMessages({list(self)!r})"

    def keys(self) -> list[str]:
        return self._text.split(_SEPARATOR)[0::2] if self._ends else []

    def uids(self) -> list[str]:
        return self._text.split(_SEPARATOR)[1::2] if self._ends else []

    def sizes(self) -> list[int]:
        return self._sizes[: len(self._ends) // 2].tolist()

    def disk_sizes(self) -> list[int]:
        return self._sizes[len(self._ends) // 2 :].tolist()
