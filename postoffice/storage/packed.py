"""A small maildrop's snapshot kept packed: the messages' keys and UIDLs in one string, their
sizes in one bytes object, each ``StoredMessage`` made when asked for.

A remembered maildrop of a few messages (the usual one) would otherwise hold, per message,
a tuple, two strings and an integer: about 280 octets for some 80 octets of names, most of
it object headers. An idle session holds its snapshot for as long as it lasts, so with
thousands of them this is most of their memory. Packed, five messages of the benchmark's
corpus take 634 octets instead of 1,445 (``sys.getsizeof``). Making a message costs two
slices and an unpacking of its numbers (about 1.4 us); only maildrops below
``maildir_index._PACKED_BELOW`` messages are packed, so a listing of the whole snapshot
stays cheap.
"""

from __future__ import annotations

import functools
import itertools
import operator
import struct
from collections.abc import Iterator, Sequence

from postoffice.storage.base import StoredMessage
from postoffice.storage.column_messages import SnapshotColumns, made_messages

_SEPARATOR = "\0"  # in neither a file name nor a UIDL (0x21-0x7E)
_OCTETS_A_MESSAGE = 24  # two 32-bit ends, two 64-bit sizes
_TWO_ENDS = struct.Struct("<II")
_THREE_ENDS = struct.Struct("<III")
_SIZE = struct.Struct("<Q")


@functools.lru_cache(maxsize=64)
def _numbers(count: int) -> struct.Struct:
    """The layout of the numbers of ``count`` messages."""
    return struct.Struct(f"<{2 * count}I{2 * count}Q")


class PackedMessages(SnapshotColumns):
    """An immutable snapshot: ``keys[i]``, ``uids[i]`` and ``sizes[i]`` make message i.

    It also keeps the messages' sizes on disk, which the index needs and messages do not.
    Two objects in all: the text (keys and UIDLs, separated by NULs) and one bytes object
    of numbers: for each message where its key and its UIDL end in the text (32 bits
    each), then the sizes (64 bits each), then the sizes on disk.
    """

    __slots__ = ("_numbers", "_text")

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
        count = len(keys)
        if not count == len(uids) == len(sizes) == len(disk_sizes):
            raise ValueError("keys, uids and sizes differ in length")
        fields = list(itertools.chain.from_iterable(zip(keys, uids, strict=True)))
        text = _SEPARATOR.join(fields)
        if text.count(_SEPARATOR) != max(len(fields) - 1, 0):
            raise ValueError("a key or UIDL holds a NUL")
        # Field j ends at the NUL after it: the lengths before it and its own, plus j NULs.
        ends = map(operator.add, itertools.accumulate(map(len, fields)), itertools.count())
        try:
            self._numbers = _numbers(count).pack(*ends, *sizes, *disk_sizes)
        except struct.error as error:  # a negative or huge size
            raise ValueError(str(error)) from None
        self._text = text

    def __len__(self) -> int:
        return len(self._numbers) // _OCTETS_A_MESSAGE

    def _message(self, index: int) -> StoredMessage:
        numbers = self._numbers
        count = len(numbers) // _OCTETS_A_MESSAGE
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError("message index out of range")
        if index:
            before, key_end, uid_end = _THREE_ENDS.unpack_from(numbers, 8 * index - 4)
            start = before + 1
        else:
            start = 0
            key_end, uid_end = _TWO_ENDS.unpack_from(numbers, 0)
        (size,) = _SIZE.unpack_from(numbers, 8 * count + 8 * index)
        text = self._text
        return StoredMessage(text[start:key_end], text[key_end + 1 : uid_end], size)

    def __iter__(self) -> Iterator[StoredMessage]:
        if not self._numbers:
            return iter(())
        fields = self._text.split(_SEPARATOR)  # once for both keys and UIDLs
        return made_messages(fields[0::2], fields[1::2], self._size_column(1))

    def keys(self) -> list[str]:
        return self._text.split(_SEPARATOR)[0::2] if self._numbers else []

    def uids(self) -> list[str]:
        return self._text.split(_SEPARATOR)[1::2] if self._numbers else []

    def sizes(self) -> list[int]:
        return list(self._size_column(1))

    def disk_sizes(self) -> list[int]:
        return list(self._size_column(2))

    def _size_column(self, column: int) -> tuple[int, ...]:
        """The sizes (1) or the sizes on disk (2): after the ends, 8 octets a message each."""
        count = len(self)
        return struct.unpack_from(f"<{count}Q", self._numbers, 8 * count * column)
