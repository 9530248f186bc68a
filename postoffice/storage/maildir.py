"""The Maildir backend of the ``Maildrop`` contract.

Theory of operation
-------------------

*Layout.* A maildir holds ``tmp/`` (deliveries in progress, never served), ``new/`` and
``cur/``. A file name is ``UNIQUE[,KEY=value...][:2,FLAGS]``; the part before ``:`` (the
*base name*) never changes, other programs only move ``new/X`` to ``cur/X:2,`` and change
the flags. A file's content never changes either, so anything learned about a name stays
true while that name exists.

*Lock.* ``lock()`` takes ``flock(LOCK_EX | LOCK_NB)`` on ``postoffice.lock`` in the maildir
through a file descriptor kept for the session. flock belongs to the open file description,
so it excludes other processes and other ``MaildirMaildrop`` objects in this process alike,
and the kernel drops it when the process dies: there are no stale lock files. Deliveries
take no lock (Maildir delivery is lock-free); that is why a commit touches only files of
its own snapshot.

*UIDL.* The base name without ``,KEY=value`` tags, so it survives moves and flag changes.
A name outside RFC 1939 §7 (1-70 characters in 0x21-0x7E) gets ``"D"`` + 40 base32
characters of its SHA-256. If two files would share a UIDL the first keeps it, later ones
get a digest of their full base name.

*Size.* The exact RETR size (``wire.py``). A name carrying ``,S=<s>,W=<w>`` (our own
deliveries, Dovecot's) is believed only if ``s`` is the file's size and ``s <= w <= 2s``;
otherwise the file is read and counted.

*Index cache* (``postoffice-index``). Per key (``new/NAME`` or ``cur/NAME``): disk size,
wire size, UIDL, in snapshot order, plus the inode and mtime of ``new/`` and ``cur/`` and
the time the directories were listed. Rules:

- The listing itself is trusted (no directory is read) only if both directories still have
  the recorded inode and mtime AND the listing started more than 2 seconds after those
  mtimes, so a change within the same timestamp tick (2 s on the coarsest filesystems)
  cannot hide behind an unchanged mtime.
- Otherwise the directories are listed; a cached entry is used only for a key that matches
  exactly (names are immutable content), keeping its size, UIDL and place in the order;
  only unknown names are measured and merged in. A UIDL already handed out is never given
  to a newcomer.
- The file starts with a version line and the SHA-256 of its body. A file that is corrupt,
  truncated, of another version or with malformed UIDLs is ignored and rebuilt. Keys are
  checked when used, so a forged index can never name a file outside ``new/`` and ``cur/``.
- It is written atomically (temp file, fsync, ``os.replace``) after a listing, by
  ``commit`` and by ``correct_size``; a failure to write it is logged, never fatal.
- This process also keeps its last snapshots in memory and reuses one while the index file
  (inode, mtime, size) is the one it came from and the directories pass the rule above.

A file that exists but cannot be read makes ``snapshot`` fail with ``StorageError`` rather
than silently hide mail; a file that vanishes while we list is skipped.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import errno
import fcntl
import hashlib
import itertools
import logging
import os
import re
import secrets
import stat
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from postoffice.errors import MaildropInUseError, MessageVanishedError, StorageError
from postoffice.storage.base import CommitResult, StoredMessage
from postoffice.storage.wire import WireSizeCounter

__all__ = ["INDEX_NAME", "LOCK_NAME", "MaildirMaildrop", "ensure_maildir"]

logger = logging.getLogger(__name__)

LOCK_NAME = "postoffice.lock"
INDEX_NAME = "postoffice-index"
_INDEX_MAGIC = b"postoffice-index 2\n"
_NEW, _CUR, _TMP = "new", "cur", "tmp"
_MTIME_MARGIN_NS = 2_000_000_000
_CHUNK = 1 << 16
_UID_RE = re.compile(r"[\x21-\x7e]{1,70}")
_FAST_NAME_RE = re.compile(
    r"((\d{1,18})\.(?:M(\d{1,6})(?!\d))?[\x21-\x2b\x2d-\x39\x3b-\x7e]*)"  # unique: a valid UIDL
    r"(?:,S=(\d{1,18}))?(?:,W=(\d{1,18}))?(:.*)?",
    re.DOTALL | re.ASCII,
)
_MICROS_RE = re.compile(r"M([0-9]{1,6})(?![0-9])")
_TAG_RE = re.compile(r"[A-Za-z]+=.*", re.DOTALL)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC

# Per key: (disk size, wire size, uid).
_Entry = tuple[int, int, str]
# Per directory (new/, cur/): (inode, mtime in ns).
_DirState = tuple[tuple[int, int], tuple[int, int]]
# A new file while listing: (seconds, microseconds, base, key, disk, wire, natural uid).
_Row = tuple[int, int, str, str, int, int, str]
# A file's (inode, mtime in ns, size).
_FileId = tuple[int, int, int]


def ensure_maildir(path: Path) -> None:
    """Create ``path`` with ``cur/ new/ tmp/`` (mode 0700) where missing."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    for sub in (_CUR, _NEW, _TMP):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path / sub, mode=0o700)


# -- names ---------------------------------------------------------------------------------


def _base_name(name: str) -> str:
    return name.partition(":")[0]


def _natural_uid(base: str) -> str:
    """The UIDL of a base name: tags removed, digested if not a valid RFC 1939 UIDL."""
    uid = base
    if "," in base:
        first, *rest = base.split(",")
        uid = ",".join([first, *(part for part in rest if not _TAG_RE.fullmatch(part))])
    if _UID_RE.fullmatch(uid):
        return uid
    return _digest_uid(uid)


def _digest_uid(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()
    return "D" + base64.b32encode(digest).decode("ascii")[:40]


def _alternate_uid(base: str, taken: set[str]) -> str:
    uid = _digest_uid(base)
    n = 1
    while uid in taken:
        uid = _digest_uid(f"{base}\0{n}")
        n += 1
    return uid


def _size_tags(base: str) -> tuple[int, int] | None:
    """``(s, w)`` from ``,S=<s>`` and ``,W=<w>`` tags, if both are present."""
    if ",S=" not in base or ",W=" not in base:
        return None
    s = w = None
    for part in base.split(",")[1:]:
        value = part[2:]
        if not (value.isascii() and value.isdigit()):
            continue
        if part.startswith("S="):
            s = int(value)
        elif part.startswith("W="):
            w = int(value)
    if s is None or w is None:
        return None
    return s, w


def _parse_name(name: str) -> tuple[int, int, str, str, tuple[int, int] | None]:
    """(seconds, microseconds or -1, base name, natural UIDL, (S, W) tags) of a file name.

    Oldest first means: the delivery time before the first ``.``, then, within one second,
    an ``M<microseconds>`` right after the dot (our names, Dovecot's), then the base name.
    """
    match = _FAST_NAME_RE.fullmatch(name)
    if match is not None:  # the usual shape, parsed by one regex
        unique, seconds, micros, s, w, info = match.groups()
        base = name if info is None else name[: match.start(6)]
        natural = unique if len(unique) <= 70 else _digest_uid(unique)
        tags = (int(s), int(w)) if s is not None and w is not None else None
        return int(seconds), -1 if micros is None else int(micros), base, natural, tags
    base = _base_name(name)
    head, _, rest = base.partition(".")
    # A name without a time prefix cannot be dated; it sorts as oldest.
    seconds_ = int(head) if head.isascii() and head.isdigit() else 0
    micros_match = _MICROS_RE.match(rest)
    micros_ = int(micros_match[1]) if micros_match else -1
    return seconds_, micros_, base, _natural_uid(base), _size_tags(base)


def _order(keys: list[str], item: int | _Row) -> tuple[int, int, str, str]:
    """The sort key of a known key (by position) or of a new row."""
    if isinstance(item, int):
        key = keys[item]
        seconds, micros, base, _, _ = _parse_name(key[4:])
        return (seconds, micros, base, key)
    return item[:4]


def _wins(key: str, other: str) -> bool:
    """Of two names of one message, the cur/ one, else the smaller, is served."""
    if key[:4] != other[:4]:
        return key.startswith("cur/")
    return key < other


def _dedupe(keys: list[str], kept: list[int], rows: list[_Row]) -> tuple[list[int], list[_Row]]:
    """One entry per base name (a message moved while we listed is seen twice)."""
    best: dict[str, _Row] = {}
    for row in rows:
        previous = best.get(row[2])
        if previous is None or _wins(row[3], previous[3]):
            best[row[2]] = row
    known_base = {keys[i][4:].partition(":")[0]: i for i in kept}
    dropped: set[int] = set()
    result = []
    for base, row in best.items():
        i = known_base.get(base)
        if i is None or _wins(row[3], keys[i]):
            result.append(row)
            if i is not None:
                dropped.add(i)
    if dropped:
        kept = [i for i in kept if i not in dropped]
    return kept, result


def _measure(entry: os.DirEntry[str], tags: tuple[int, int] | None) -> tuple[int, int] | None:
    """(disk size, wire size) from trustworthy tags or by reading; None if not servable."""
    if tags is not None:
        s, w = tags
        if 0 < s <= w <= 2 * s:
            try:
                if entry.stat(follow_symlinks=False).st_size == s:
                    return s, w
            except FileNotFoundError:
                return None
    return _count_file(Path(entry.path))


def _seen_name(name: str) -> str | None:
    """The name with the Seen flag (``:2,`` flags kept sorted); None for unknown info."""
    base, sep, info = name.partition(":")
    if not sep:
        return base + ":2,S"
    if not info.startswith("2,"):
        return None
    flags = info[2:]
    if "S" in flags:
        return name
    return f"{base}:2,{''.join(sorted({*flags, 'S'}))}"


def _valid_key(key: object) -> bool:
    # A key from the cache must not lead outside new/ and cur/.
    return (
        isinstance(key, str)
        and key[:4] in ("new/", "cur/")
        and len(key) > 4
        and "/" not in key[4:]
        and "\0" not in key
        and not key.startswith(".", 4)
    )


# -- the index cache -----------------------------------------------------------------------


_Columns = tuple[list[str], list[int], list[int], list[str]]


class _Index:
    """The cache in memory: columns as loaded (cheap), or a dict once it is changed."""

    __slots__ = ("_columns", "_entries", "dirs", "listed_ns")

    def __init__(
        self,
        *,
        dirs: _DirState | None,
        listed_ns: int,
        entries: dict[str, _Entry] | None = None,
        columns: _Columns | None = None,
    ) -> None:
        self.dirs = dirs
        """The directories as they were when listed; None: the listing must not be trusted."""
        self.listed_ns = listed_ns
        self._entries = entries
        self._columns = columns

    def trusted(self, dirs: _DirState) -> bool:
        if self.dirs is None or self.dirs != dirs:
            return False
        newest = max(dirs[0][1], dirs[1][1])
        return self.listed_ns - newest > _MTIME_MARGIN_NS

    @property
    def entries(self) -> dict[str, _Entry]:
        """Key -> (disk size, wire size, uid), in snapshot order; safe to change."""
        if self._entries is None:
            keys, disk, wire, uids = self.columns()
            self._entries = dict(zip(keys, zip(disk, wire, uids, strict=True), strict=True))
            self._columns = None  # the lists may be shared with other sessions
        return self._entries

    def columns(self) -> _Columns:
        """(keys, disk sizes, wire sizes, uids); never change these lists in place."""
        if self._columns is not None:
            return self._columns
        entries = self._entries or {}
        return (
            list(entries),
            [e[0] for e in entries.values()],
            [e[1] for e in entries.values()],
            [e[2] for e in entries.values()],
        )

    def copy(self) -> _Index:
        return _Index(
            dirs=self.dirs,
            listed_ns=self.listed_ns,
            entries=None if self._entries is None else dict(self._entries),
            columns=self._columns,
        )


def _valid_uids(uids: list[str]) -> bool:
    """All 1-70 characters in 0x21-0x7E and unique, checked with C-speed string methods."""
    if not uids:
        return True
    blob = "".join(uids)
    return (
        blob.isascii()
        and blob.isprintable()  # for ASCII: 0x20-0x7E
        and " " not in blob
        and min(map(len, uids)) >= 1
        and max(map(len, uids)) <= 70
        and len(set(uids)) == len(uids)
    )


# The file: the magic line, the SHA-256 of the body, then the body (UTF-8, surrogateescape):
#   "NEW_INO NEW_MTIME CUR_INO CUR_MTIME LISTED_NS COUNT" (or "- - - - LISTED_NS COUNT")
#   disk sizes, space-separated
#   wire sizes, space-separated
#   COUNT lines of UIDs
#   COUNT lines of keys
# Columns rather than records: loading is a few C-level splits, not a Python loop.


def _load_index(path: Path) -> tuple[_Index, _FileId] | None:
    """The index at ``path`` and its identity; None when absent or not to be trusted."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
            file_id = _file_id(os.fstat(f.fileno()))
    except OSError:
        return None
    if not raw.startswith(_INDEX_MAGIC):
        return None
    checksum, _, body = raw[len(_INDEX_MAGIC) :].partition(b"\n")
    if hashlib.sha256(body).hexdigest().encode("ascii") != checksum:
        return None
    try:
        lines = body.decode("utf-8", "surrogateescape").split("\n")
        head = lines[0].split(" ")
        if len(head) != 6:
            return None
        listed_ns, n = int(head[4]), int(head[5])
        dirs: _DirState | None = None
        if head[0] != "-":
            dirs = ((int(head[0]), int(head[1])), (int(head[2]), int(head[3])))
        if n < 0 or len(lines) != 3 + 2 * n + 1 or lines[-1]:
            return None
        disk = list(map(int, lines[1].split()))
        wire = list(map(int, lines[2].split()))
        uids = lines[3 : 3 + n]
        keys = lines[3 + n : 3 + 2 * n]
    except ValueError:  # includes UnicodeDecodeError
        return None
    if len(disk) != n or len(wire) != n or (n and min(min(disk), min(wire)) < 0):
        return None
    if not _valid_uids(uids) or len(set(keys)) != n:
        return None
    # Keys are checked when used (_valid_key), not here: that keeps loading cheap.
    index = _Index(dirs=dirs, listed_ns=listed_ns, columns=(keys, disk, wire, uids))
    return index, file_id


def _write_index(maildir: Path, index: _Index) -> _FileId | None:
    """Replace the index atomically and return its identity; log (not raise) a failure."""
    keys, disk, wire, uids = index.columns()
    dirs = index.dirs
    if "\n" in "".join(keys):
        # A name with a line feed cannot be stored; without it the listing is incomplete.
        keep = [i for i, key in enumerate(keys) if "\n" not in key]
        keys = [keys[i] for i in keep]
        disk = [disk[i] for i in keep]
        wire = [wire[i] for i in keep]
        uids = [uids[i] for i in keep]
        dirs = None
    head = "- - - -" if dirs is None else f"{dirs[0][0]} {dirs[0][1]} {dirs[1][0]} {dirs[1][1]}"
    text = "\n".join(
        [
            f"{head} {index.listed_ns} {len(keys)}",
            " ".join(map(str, disk)),
            " ".join(map(str, wire)),
            *uids,
            *keys,
            "",
        ]
    )
    tmp = maildir / f".{INDEX_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        body = text.encode("utf-8", "surrogateescape")
        data = _INDEX_MAGIC + hashlib.sha256(body).hexdigest().encode("ascii") + b"\n" + body
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "wb", closefd=False) as f:
                f.write(data)
            os.fsync(fd)
            written = _file_id(os.fstat(fd))
        finally:
            os.close(fd)
        os.replace(tmp, maildir / INDEX_NAME)
    except (OSError, UnicodeEncodeError) as exc:
        logger.warning("cannot write maildir index in %s: %s", maildir, exc)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return None
    return written


def _file_id(st: os.stat_result) -> _FileId:
    return (st.st_ino, st.st_mtime_ns, st.st_size)


# Snapshots recently taken in this process, reused while the index file and directories
# are unchanged, so a repeated login on a large maildrop costs a few stat calls.
_memo: dict[Path, tuple[_FileId, _Index, list[StoredMessage]]] = {}
_memo_lock = threading.Lock()
_MEMO_MESSAGES = 300_000


def _remember(path: Path, file_id: _FileId, index: _Index, messages: list[StoredMessage]) -> None:
    frozen = _Index(dirs=index.dirs, listed_ns=index.listed_ns, columns=index.columns())
    with _memo_lock:
        _memo.pop(path, None)
        _memo[path] = (file_id, frozen, messages)
        total = sum(len(entry[2]) for entry in _memo.values())
        while total > _MEMO_MESSAGES and len(_memo) > 1:
            oldest = next(iter(_memo))
            total -= len(_memo.pop(oldest)[2])


def _recall(path: Path, dirs: _DirState) -> tuple[_Index, list[StoredMessage]] | None:
    with _memo_lock:
        hit = _memo.get(path)
    if hit is None:
        return None
    file_id, index, messages = hit
    try:
        current = _file_id(os.stat(path / INDEX_NAME))
    except OSError:
        return None
    if current != file_id or not index.trusted(dirs):
        return None
    return index.copy(), list(messages)


# -- reading -------------------------------------------------------------------------------


def _count_file(path: Path) -> tuple[int, int] | None:
    """``(disk size, wire size)`` by reading; None if it is gone or not a regular file."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink: never served
            return None
        raise
    with open(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        counter = WireSizeCounter()
        while chunk := f.read(_CHUNK):
            counter.update(chunk)
        return counter.octets, counter.size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Relocator:
    """Finds where a message is now, by base name, listing new/ and cur/ once."""

    def __init__(self, maildir: Path) -> None:
        self._maildir = maildir
        self._where: dict[str, str] | None = None

    def find(self, base: str) -> str | None:
        if self._where is None:
            where: dict[str, str] = {}
            for sub in (_NEW, _CUR):  # cur/ last: it wins, as in snapshot()
                with os.scandir(self._maildir / sub) as it:
                    for entry in it:
                        if not entry.name.startswith("."):
                            where[_base_name(entry.name)] = f"{sub}/{entry.name}"
            self._where = where
        return self._where.get(base)


# -- the maildrop --------------------------------------------------------------------------


class MaildirMaildrop:
    """One user's Maildir, opened for one POP3 session (see the module docstring)."""

    def __init__(self, path: Path, *, create: bool = True, flag_updates: bool = True) -> None:
        self._path = Path(path)
        self._create = create
        self._flag_updates = flag_updates
        self._prepared = False
        self._lock_fd: int | None = None
        self._lock_finalizer: weakref.finalize[[int], MaildirMaildrop] | None = None
        self._snapshot: list[StoredMessage] = []
        self._by_key: dict[str, StoredMessage] | None = None  # built when first needed
        self._index = _Index(dirs=None, listed_ns=0, entries={})
        self._moved: dict[str, str] = {}  # snapshot key -> where open() found it since

    def __repr__(self) -> str:
        return f"MaildirMaildrop({str(self._path)!r})"

    @property
    def path(self) -> Path:
        return self._path

    def _prepare(self) -> None:
        if self._prepared:
            return
        try:
            if self._create:
                ensure_maildir(self._path)
            else:
                for sub in (_NEW, _CUR):
                    if not (self._path / sub).is_dir():
                        raise StorageError(f"not a maildir: {self._path}")
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(f"cannot create maildir {self._path}: {exc}") from exc
        self._prepared = True

    # lock ------------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the session lock; ``MaildropInUseError`` if any other session holds it."""
        if self._lock_fd is not None:
            return
        self._prepare()
        try:
            fd = os.open(self._path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open lock file in {self._path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise MaildropInUseError(f"maildrop {self._path} is locked") from exc
            raise StorageError(f"cannot lock {self._path}: {exc}") from exc
        self._lock_fd = fd
        # A session dropped without unlock() must not keep the maildrop locked forever.
        self._lock_finalizer = weakref.finalize(self, os.close, fd)

    def unlock(self) -> None:
        """Release the lock if held (closing the descriptor releases the flock)."""
        if self._lock_finalizer is not None:
            self._lock_finalizer()
        self._lock_fd = None
        self._lock_finalizer = None

    # snapshot --------------------------------------------------------------------------

    def snapshot(self) -> list[StoredMessage]:
        """The complete messages in ``new/`` and ``cur/``, oldest first, with UIDL and size."""
        self._prepare()
        listed_ns = time.time_ns()  # before the stat: see the module docstring
        try:
            dirs = self._dir_state()
            recalled = _recall(self._path, dirs)
            if recalled is not None:
                self._index, messages = recalled
            else:
                messages = self._from_index_or_listing(dirs, listed_ns)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"cannot list maildir {self._path}: {exc}") from exc
        self._snapshot = messages
        self._by_key = None
        self._moved = {}
        return list(messages)

    def _from_index_or_listing(self, dirs: _DirState, listed_ns: int) -> list[StoredMessage]:
        loaded = _load_index(self._path / INDEX_NAME)
        index = None if loaded is None else loaded[0]
        file_id: _FileId | None
        if loaded is not None and loaded[0].trusted(dirs):
            self._index, file_id = loaded
        else:
            columns = self._list(index.columns() if index is not None else ([], [], [], []))
            self._index = _Index(dirs=dirs, listed_ns=listed_ns, columns=columns)
            file_id = _write_index(self._path, self._index)
        keys, _, wire, uids = self._index.columns()
        messages = [
            StoredMessage(key=key, uid=uid, size=size)
            for key, uid, size in zip(keys, uids, wire, strict=True)
        ]
        if file_id is not None:
            _remember(self._path, file_id, self._index, messages)
        return messages

    def _dir_state(self) -> _DirState:
        new = os.stat(self._path / _NEW)
        cur = os.stat(self._path / _CUR)
        return ((new.st_ino, new.st_mtime_ns), (cur.st_ino, cur.st_mtime_ns))

    def _list(self, known: _Columns) -> _Columns:
        """List new/ and cur/; known keys keep their cached sizes, UIDs and order."""
        keys, disk, wire, uids = known
        position = dict(zip(keys, range(len(keys)), strict=True))
        present = bytearray(len(keys))
        added: list[tuple[str, os.DirEntry[str]]] = []
        # new/ first, then cur/: a message moved between the two listings is then seen
        # twice rather than not at all; _dedupe keeps the cur/ name.
        for sub in (_NEW, _CUR):
            prefix = sub + "/"
            with os.scandir(self._path / sub) as it:
                for entry in it:
                    name = entry.name
                    if name.startswith("."):
                        continue
                    key = prefix + name
                    i = position.get(key)
                    if i is not None:
                        present[i] = 1
                        continue
                    try:
                        if entry.is_file(follow_symlinks=False):
                            added.append((key, entry))
                    except OSError:
                        continue
        kept = list(itertools.compress(range(len(keys)), present))
        if not added:
            if len(kept) == len(keys):
                return known
            return (
                [keys[i] for i in kept],
                [disk[i] for i in kept],
                [wire[i] for i in kept],
                [uids[i] for i in kept],
            )

        rows: list[_Row] = []
        for key, entry in added:
            seconds, micros, base, natural, tags = _parse_name(key[4:])
            measured = _measure(entry, tags)
            if measured is not None:
                rows.append((seconds, micros, base, key, *measured, natural))
        kept, rows = _dedupe(keys, kept, rows)

        # Known rows are in order already; insert a few new ones, or sort everything.
        items: list[int | _Row] = list(kept)
        rows.sort()
        if len(rows) * 20 < len(kept):
            for row in rows:
                at = bisect.bisect_right(items, row[:4], key=lambda item: _order(keys, item))
                items.insert(at, row)
        else:
            items.extend(rows)
            items.sort(key=lambda item: _order(keys, item))

        # A UID handed out before stays; a new file whose UID is taken gets a digest.
        taken = {uids[i] for i in kept}
        out_keys: list[str] = []
        out_disk: list[int] = []
        out_wire: list[int] = []
        out_uids: list[str] = []
        for item in items:
            if isinstance(item, int):
                out_keys.append(keys[item])
                out_disk.append(disk[item])
                out_wire.append(wire[item])
                out_uids.append(uids[item])
                continue
            uid = item[6]
            if uid in taken:
                uid = _alternate_uid(item[2], taken)
            taken.add(uid)
            out_keys.append(item[3])
            out_disk.append(item[4])
            out_wire.append(item[5])
            out_uids.append(uid)
        return out_keys, out_disk, out_wire, out_uids

    # reading ---------------------------------------------------------------------------

    def _check_member(self, messages: Iterable[StoredMessage]) -> None:
        if self._by_key is None:
            self._by_key = {m.key: m for m in self._snapshot}
        for message in messages:
            if self._by_key.get(message.key) != message:
                raise ValueError(f"{message.key!r} is not in this session's snapshot")

    def open(self, message: StoredMessage) -> BinaryIO:
        """Open a message of the snapshot, following a move by another program."""
        self._check_member([message])
        key = self._moved.get(message.key, message.key)
        try:
            try:
                return self._open_key(key)
            except FileNotFoundError:
                pass
            found = _Relocator(self._path).find(_base_name(key[4:]))
            if found is not None:
                try:
                    opened = self._open_key(found)
                except FileNotFoundError:
                    pass
                else:
                    self._moved[message.key] = found
                    return opened
        except OSError as exc:
            raise StorageError(f"cannot open {message.key}: {exc}") from exc
        raise MessageVanishedError(f"message {message.key} is gone")

    def _file(self, key: str) -> Path:
        if not _valid_key(key):  # only a forged index could bring such a key
            raise StorageError(f"invalid message key {key!r}")
        return self._path / key

    def _open_key(self, key: str) -> BinaryIO:
        fd = os.open(self._file(key), _READ_FLAGS)
        return open(fd, "rb")

    def correct_size(self, message: StoredMessage, size: int) -> None:
        """Remember the size RETR found, so the next snapshot lists it."""
        self._check_member([message])
        logger.warning(
            "size of %s was %d, RETR sent %d; index corrected", message.key, message.size, size
        )
        entry = self._index.entries.get(message.key)
        if entry is not None:
            self._index.entries[message.key] = (entry[0], size, entry[2])
            _write_index(self._path, self._index)

    # update ----------------------------------------------------------------------------

    def commit(
        self, *, deleted: Sequence[StoredMessage], retrieved: Sequence[StoredMessage]
    ) -> CommitResult:
        """Remove ``deleted``, mark ``retrieved`` seen (new/ -> cur/), fsync both directories.

        Only files of this session's snapshot are touched (found by base name if another
        program renamed them); mail delivered since the snapshot is never removed.
        """
        self._check_member([*deleted, *retrieved])
        relocator = _Relocator(self._path)
        gone: set[str] = set()
        renamed: dict[str, str] = {}
        deleted_keys = dict.fromkeys(m.key for m in deleted)
        removed = not_removed = 0
        for key in deleted_keys:
            try:
                self._unlink(key, relocator)
            except OSError as exc:
                not_removed += 1
                logger.error("cannot remove %s from %s: %s", key, self._path, exc)
            else:
                removed += 1
                gone.add(key)
        if self._flag_updates:
            for message in retrieved:
                if message.key in deleted_keys:
                    continue
                try:
                    new_key = self._mark_seen(message.key, relocator)
                except OSError as exc:
                    logger.warning("cannot mark %s as seen: %s", message.key, exc)
                else:
                    if new_key is not None:
                        renamed[message.key] = new_key
        for sub in (_NEW, _CUR):
            try:
                _fsync_dir(self._path / sub)
            except OSError as exc:
                logger.error("cannot fsync %s: %s", self._path / sub, exc)
        # Same order as before; our own changes moved the directory mtimes, so the next
        # snapshot lists again (dirs=None), finding nothing to measure.
        keys, disk, wire, uids = self._index.columns()
        kept = [i for i, key in enumerate(keys) if key not in gone]
        self._index = _Index(
            dirs=None,
            listed_ns=self._index.listed_ns,
            columns=(
                [renamed.get(keys[i], keys[i]) for i in kept],
                [disk[i] for i in kept],
                [wire[i] for i in kept],
                [uids[i] for i in kept],
            ),
        )
        _write_index(self._path, self._index)
        return CommitResult(
            removed=removed,
            not_removed=not_removed,
            remaining=len(self._snapshot) - removed,
        )

    def _unlink(self, key: str, relocator: _Relocator) -> None:
        current = self._moved.get(key, key)
        try:
            os.unlink(self._file(current))
            return
        except FileNotFoundError:
            pass
        found = relocator.find(_base_name(key[4:]))
        if found is None:
            return  # already gone: counts as removed
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path / found)

    def _mark_seen(self, key: str, relocator: _Relocator) -> str | None:
        """Move to cur/ with the S flag; return the new key if we renamed the file."""
        current = self._moved.get(key, key)
        if not self._file(current).exists():
            found = relocator.find(_base_name(key[4:]))
            if found is None:
                return None
            current = found
        target = _seen_name(current[4:])
        if target is None:
            return None
        target_key = f"{_CUR}/{target}"
        if target_key == current:
            return None
        os.rename(self._file(current), self._path / target_key)
        return target_key
