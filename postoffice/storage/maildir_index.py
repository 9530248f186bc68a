"""The Maildir index cache (``postoffice-index``) and this process's memory of snapshots.

Per key (``new/NAME`` or ``cur/NAME``): disk size, wire size, UIDL, in snapshot order, plus
the inode and mtime of ``new/`` and ``cur/`` and the time the directories were listed.
``maildir.py`` decides when the cache is trusted; this module only stores and loads it.

- The file starts with a magic line naming the version and the UIDL scheme (an index
  written under another ``mail.uidl_format`` is not used), then the SHA-256 of its body.
  A file that is corrupt, truncated, of another version or scheme, or with malformed
  UIDLs is ignored (and rebuilt by the caller). Keys are checked when used
  (``maildir_names.valid_key``), so a forged index can never name a file outside
  ``new/`` and ``cur/``.
- It is written atomically (temp file, ``os.replace``); a failure to write it is logged,
  never fatal. It is a cache: a torn or lost file is rebuilt by listing, and under the
  natural UIDL scheme the rebuild gives every message the UIDL it had, so it is not
  fsynced. It is fsynced only while it is *pinned*: it holds a UIDL the names alone would
  not give back (a digest handed out because a name's natural UIDL was taken: which of
  the two got it depends on the order they were first seen), or a migration scheme's
  UIDLs and order, read from another server's files that may change or go away.
- ``remember``/``recall`` keep the last snapshots of this process in memory and hand one
  back while the index file (inode, mtime, size) is the one it came from and the
  directories pass the trust rule. A snapshot may hold more than its file: what a listing
  against that file found in a few names and left unwritten (``maildir.py``). What they
  hand back is shared by every session on that maildrop (idle sessions hold it for as
  long as they last): small maildrops are kept packed (``packed.py``), and nothing handed
  back is changed in place.
"""

from __future__ import annotations

import array
import codecs
import contextlib
import hashlib
import itertools
import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from postoffice.storage.base import StoredMessage
from postoffice.storage.column_messages import ColumnMessages
from postoffice.storage.packed import PackedMessages

__all__ = [
    "INDEX_NAME",
    "Columns",
    "DirState",
    "Entry",
    "FileId",
    "Index",
    "load_index",
    "recall",
    "remember",
    "write_index",
]

logger = logging.getLogger(__name__)

INDEX_NAME = "postoffice-index"
_MAGIC = b"postoffice-index 4"
_MTIME_MARGIN_NS = 2_000_000_000
DEFAULT_SCHEME = "postoffice"

# Per key: (disk size, wire size, uid).
Entry = tuple[int, int, str]
# The directories: (new/ inode, new/ mtime in ns, cur/ inode, cur/ mtime in ns); flat, as
# a remembered maildrop keeps one per user.
DirState = tuple[int, int, int, int]
# A file's (inode, mtime in ns, size).
FileId = tuple[int, int, int]
# (keys, disk sizes, wire sizes, uids)
Columns = tuple[list[str], list[int], list[int], list[str]]


def _magic(scheme: str) -> bytes:
    # The original (postoffice) scheme keeps the version line it always had.
    if scheme == DEFAULT_SCHEME:
        return _MAGIC + b"\n"
    return _MAGIC + b" " + scheme.encode("ascii", "backslashreplace") + b"\n"


class Index:
    """The cache in memory: columns as loaded (cheap), or a dict once it is changed, or
    (remembered small maildrops) the snapshot's messages packed with their disk sizes, from
    which the columns are made when asked for."""

    __slots__ = ("_columns", "_entries", "_packed", "dirs", "listed_ns", "pinned")

    def __init__(
        self,
        *,
        dirs: DirState | None,
        listed_ns: int,
        entries: dict[str, Entry] | None = None,
        columns: Columns | None = None,
        packed: PackedMessages | None = None,
        pinned: bool = False,
    ) -> None:
        self.dirs = dirs
        """The directories as they were when listed; None: the listing must not be trusted."""
        self.listed_ns = listed_ns
        self.pinned = pinned
        """Holds a UIDL a rebuild might not give back: written with fsync (module docstring)."""
        self._entries = entries
        self._columns = columns
        self._packed = packed

    def messages(self) -> ColumnMessages:
        """The snapshot's messages: a view of the columns (``column_messages.py``)."""
        keys, _, wire, uids = self.columns()
        return ColumnMessages(keys, uids, wire)

    def trusted(self, dirs: DirState) -> bool:
        """Both directories unchanged, and listed more than 2 s after their last change."""
        return self.trusted_dirs(dirs) == (True, True)

    def trusted_dirs(self, dirs: DirState) -> tuple[bool, bool]:
        """For new/ and cur/ alone: unchanged, and listed more than 2 s after its last change.

        What the index holds for such a directory is still what it contains: any change
        since that listing would have moved its mtime to a later tick.
        """
        if self.dirs is None:
            return (False, False)
        known, listed_ns = self.dirs, self.listed_ns
        new, cur = (
            known[i] == dirs[i]
            and known[i + 1] == dirs[i + 1]
            and listed_ns - dirs[i + 1] > _MTIME_MARGIN_NS
            for i in (0, 2)
        )
        return (new, cur)

    @property
    def entries(self) -> dict[str, Entry]:
        """Key -> (disk size, wire size, uid), in snapshot order; safe to change, but in
        an index of one's own: ``copy()`` one from ``remember`` or ``recall`` first."""
        if self._entries is None:
            keys, disk, wire, uids = self.columns()
            self._entries = dict(zip(keys, zip(disk, wire, uids, strict=True), strict=True))
            self._columns = self._packed = None  # may be shared with other sessions
        return self._entries

    def columns(self) -> Columns:
        """(keys, disk sizes, wire sizes, uids); never change these lists in place."""
        if self._columns is not None:
            return self._columns
        packed = self._packed
        if packed is not None:
            return (packed.keys(), packed.disk_sizes(), packed.sizes(), packed.uids())
        entries = self._entries or {}
        return (
            list(entries),
            [e[0] for e in entries.values()],
            [e[1] for e in entries.values()],
            [e[2] for e in entries.values()],
        )

    def copy(self) -> Index:
        return Index(
            dirs=self.dirs,
            listed_ns=self.listed_ns,
            entries=None if self._entries is None else dict(self._entries),
            columns=self._columns,
            packed=self._packed,
            pinned=self.pinned,
        )


_UIDL_OCTETS = bytes(range(0x21, 0x7F))


def _valid_uids(uids: list[str]) -> bool:
    """All 1-70 characters in 0x21-0x7E and unique, checked with C-speed string methods."""
    if not uids:
        return True
    try:
        blob = "".join(uids).encode("ascii")
    except UnicodeEncodeError:
        return False
    return (
        not blob.translate(None, _UIDL_OCTETS)  # nothing outside 0x21-0x7E
        and all(uids)  # none empty
        and max(map(len, uids)) <= 70
        and len(set(uids)) == len(uids)
    )


# The file: the magic line, the SHA-256 of the body, then the body:
#   "NEW_INO NEW_MTIME CUR_INO CUR_MTIME LISTED_NS COUNT PINNED\n" (or "- - - - ..."),
#   PINNED 1 or 0;
#   COUNT disk sizes, then COUNT wire sizes, each an unsigned 64-bit little-endian integer;
#   COUNT lines of UIDs, then COUNT lines of keys (UTF-8, surrogateescape), each ending "\n".
# Columns rather than records, and binary sizes: loading 100,000 entries is a few C-level
# calls (array.frombytes, one decode, one split), not a Python loop.

_SIZE_CODE = "Q"
_SIZE_OCTETS = array.array(_SIZE_CODE).itemsize
_SWAP = sys.byteorder != "little"


def _sizes(raw: memoryview) -> list[int]:
    sizes = array.array(_SIZE_CODE)
    sizes.frombytes(raw)
    if _SWAP:
        sizes.byteswap()
    return sizes.tolist()


def _size_array(values: list[int]) -> array.array[int]:
    sizes = array.array(_SIZE_CODE, values)  # OverflowError for a negative size
    if _SWAP:
        sizes.byteswap()
    return sizes


# Lines encoded and written this many at a time (a few tens of KB): the text of 100,000
# entries is never held whole, as a string and again as bytes (about 20 MB of fresh
# memory, whose pages cost more to fault in than the encoding itself).
_LINES_AT_ONCE = 2048


class _LineFeedError(ValueError):
    """A key holds a line feed: it cannot be stored as a line."""


def _line_pieces(lines: list[str]) -> Iterator[bytes]:
    """``lines``, each followed by a line feed, encoded a few thousand at a time."""
    for start in range(0, len(lines), _LINES_AT_ONCE):
        piece = lines[start : start + _LINES_AT_ONCE]
        count = len(piece)
        piece.append("")  # the last line's line feed
        text = "\n".join(piece)
        if text.count("\n") != count:
            raise _LineFeedError
        yield text.encode("utf-8", "surrogateescape")


def load_index(path: Path | str, scheme: str = DEFAULT_SCHEME) -> tuple[Index, FileId] | None:
    """The index at ``path`` and its identity; None when absent or not to be trusted."""
    try:
        raw, file_id = _read_whole(path)
    except OSError:
        return None
    magic = _magic(scheme)
    if not raw.startswith(magic):
        return None
    start = raw.find(b"\n", len(magic)) + 1  # the body starts after the checksum line
    view = memoryview(raw)
    checksum = raw[len(magic) : start - 1]
    if not start or hashlib.sha256(view[start:]).hexdigest().encode("ascii") != checksum:
        return None
    try:
        text_start = raw.index(b"\n", start) + 1
        head = raw[start : text_start - 1].decode("ascii").split(" ")
        if len(head) != 7 or head[6] not in ("0", "1"):
            return None
        listed_ns, n, pinned = int(head[4]), int(head[5]), head[6] == "1"
        dirs: DirState | None = None
        if head[0] != "-":
            dirs = (int(head[0]), int(head[1]), int(head[2]), int(head[3]))
        sizes_end = text_start + 2 * n * _SIZE_OCTETS
        if n < 0 or sizes_end > len(raw):
            return None
        disk = _sizes(view[text_start : text_start + n * _SIZE_OCTETS])
        wire = _sizes(view[text_start + n * _SIZE_OCTETS : sizes_end])
        text, _ = codecs.utf_8_decode(view[sizes_end:], "surrogateescape", True)
    except ValueError:  # includes UnicodeDecodeError
        return None
    lines = text.split("\n")
    if len(lines) != 2 * n + 1 or lines[-1]:
        return None
    uids = lines[:n]
    keys = lines[n:-1]
    if not _valid_uids(uids) or len(set(keys)) != n:
        return None
    # Keys are checked when used (valid_key), not here: that keeps loading cheap.
    index = Index(dirs=dirs, listed_ns=listed_ns, columns=(keys, disk, wire, uids), pinned=pinned)
    return index, file_id


def _read_whole(path: Path | str) -> tuple[bytes, FileId]:
    """The file's octets and identity: one fstat and, as the file is replaced rather than
    changed, one read of the size it gave (no file object: a login on a maildrop new to
    this process reads its index so)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        raw = os.read(fd, st.st_size + 1)
        if len(raw) != st.st_size:  # a short read, or it grew after all: read to the end
            pieces = [raw]
            while piece := os.read(fd, 1 << 20):
                pieces.append(piece)
            raw = b"".join(pieces)
        return raw, _file_id(st)
    finally:
        os.close(fd)


def write_index(maildir: Path, index: Index, scheme: str = DEFAULT_SCHEME) -> FileId | None:
    """Replace the index atomically and return its identity; log (not raise) a failure.

    Only a pinned index is fsynced (see the module docstring).
    """
    keys, disk, wire, uids = index.columns()
    tmp = maildir / f".{INDEX_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        try:
            written = _write(tmp, scheme, index, index.dirs, (keys, disk, wire, uids))
        except _LineFeedError:
            # A name with a line feed cannot be stored; without it the listing is
            # incomplete, so it must not be trusted.
            os.unlink(tmp)
            keep = [i for i, key in enumerate(keys) if "\n" not in key]
            columns = (
                [keys[i] for i in keep],
                [disk[i] for i in keep],
                [wire[i] for i in keep],
                [uids[i] for i in keep],
            )
            written = _write(tmp, scheme, index, None, columns)
        os.replace(tmp, maildir / INDEX_NAME)
    except (OSError, UnicodeEncodeError, OverflowError) as exc:
        logger.warning("cannot write maildir index in %s: %s", maildir, exc)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return None
    hook = _written_hook
    if hook is not None:
        try:
            hook(maildir, scheme)
        except Exception:  # news for other processes: never a reason to fail here
            logger.exception("index-written hook failed for %s", maildir)
    return written


_written_hook: Callable[[Path, str], None] | None = None


def on_index_written(hook: Callable[[Path, str], None] | None) -> None:
    """Call ``hook(maildir, scheme)`` after each index file this process writes (the
    server tells its other worker processes; ``server/index_news.py``). None: no hook."""
    global _written_hook
    _written_hook = hook


def _write(tmp: Path, scheme: str, index: Index, dirs: DirState | None, columns: Columns) -> FileId:
    """Write the file at ``tmp``, which must not exist; its identity.

    The checksum line comes before the body, which is hashed as it is written: a
    placeholder of its length is written first and overwritten at the end.
    """
    keys, disk, wire, uids = columns
    head = "- - - -" if dirs is None else " ".join(map(str, dirs))
    magic = _magic(scheme)
    checksum = hashlib.sha256()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(magic + b"0" * checksum.digest_size * 2 + b"\n")
            body: Iterable[bytes | array.array[int]] = itertools.chain(
                [
                    f"{head} {index.listed_ns} {len(keys)} {int(index.pinned)}\n".encode("ascii"),
                    _size_array(disk),
                    _size_array(wire),
                ],
                _line_pieces(uids),
                _line_pieces(keys),
            )
            for part in body:
                checksum.update(part)
                f.write(part)
        os.pwrite(fd, magic + checksum.hexdigest().encode("ascii") + b"\n", 0)
        if index.pinned:
            os.fsync(fd)
        return _file_id(os.fstat(fd))
    finally:
        os.close(fd)


def _file_id(st: os.stat_result) -> FileId:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


# Snapshots recently taken in this process, reused while the index file and directories
# are unchanged, so a repeated login on a large maildrop costs a few stat calls.
_memo: dict[tuple[str, str], tuple[FileId, Index, Sequence[StoredMessage]]] = {}  # by dir
_memo_lock = threading.Lock()
_MEMO_MESSAGES = 300_000
_PACKED_BELOW = 1_000
"""A remembered maildrop with fewer messages keeps no columns of its own, only its messages
packed with their disk sizes (``packed.py``): about half the memory, for the many small
maildrops of idle sessions. Larger ones keep their columns (a listing against them needs
them at once), and their messages are a view of those (``column_messages.py``)."""
_memo_total = 0  # messages in _memo, kept as it changes (summing costs O(maildrops))


def remember(
    path: Path | str,
    scheme: str,
    file_id: FileId,
    index: Index,
) -> tuple[Index, Sequence[StoredMessage]]:
    """Keep ``index`` and its snapshot's messages for ``recall``, and return them for the
    caller to use instead of ``index`` (it may hold less memory). Both are shared: never
    change them."""
    columns = index.columns()
    packed = None
    if len(columns[0]) < _PACKED_BELOW:
        # ValueError: a NUL in a key or a size over 64 bits, which only a forged index has.
        with contextlib.suppress(ValueError):
            packed = PackedMessages(columns[0], columns[3], columns[2], columns[1])
    messages: Sequence[StoredMessage]
    if packed is not None:
        messages = packed
        frozen = Index(
            dirs=index.dirs, listed_ns=index.listed_ns, packed=packed, pinned=index.pinned
        )
    else:
        messages = index.messages()
        frozen = Index(
            dirs=index.dirs, listed_ns=index.listed_ns, columns=columns, pinned=index.pinned
        )
    global _memo_total
    key = (os.fspath(path), scheme)
    with _memo_lock:
        previous = _memo.pop(key, None)
        if previous is not None:
            _memo_total -= len(previous[2])
        _memo[key] = (file_id, frozen, messages)
        _memo_total += len(messages)
        while _memo_total > _MEMO_MESSAGES and len(_memo) > 1:
            oldest = next(iter(_memo))
            _memo_total -= len(_memo.pop(oldest)[2])
    return frozen, messages


def remembers(path: Path | str, scheme: str) -> bool:
    """Whether this process keeps a snapshot of the maildrop at ``path`` (of any age)."""
    with _memo_lock:
        return (os.fspath(path), scheme) in _memo


def recall(
    path: Path | str, scheme: str, dirs: DirState
) -> tuple[Index, Sequence[StoredMessage], FileId, bool] | None:
    """The remembered snapshot while the index file is still the one it came from.

    (index, its messages, the file's identity, whether the directories pass the trust
    rule). When they do not, the index is what a listing starts from (the same as loading
    the file, without the cost). Both are shared with other sessions: never change them in
    place.
    """
    with _memo_lock:
        hit = _memo.get((os.fspath(path), scheme))
    if hit is None:
        return None
    file_id, index, messages = hit
    try:
        current = _file_id(os.stat(f"{path}/{INDEX_NAME}"))  # no join: a login's hot path
    except OSError:
        return None
    if current != file_id:
        return None
    return index, messages, file_id, index.trusted(dirs)


def forget_all() -> None:
    """Drop every remembered snapshot (for tests and tools)."""
    global _memo_total
    with _memo_lock:
        _memo.clear()
        _memo_total = 0
