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
  exactly (names are immutable content), everything else is measured.
- The file starts with a version line and the SHA-256 of its body. A file that is corrupt,
  truncated, of another version or with malformed entries is ignored and rebuilt.
- It is written atomically (temp file, fsync, ``os.replace``) after a listing, by
  ``commit`` and by ``correct_size``; a failure to write it is logged, never fatal.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from postoffice.errors import MaildropInUseError, MessageVanishedError, StorageError
from postoffice.storage.base import CommitResult, StoredMessage
from postoffice.storage.wire import WireSizeCounter

__all__ = ["INDEX_NAME", "LOCK_NAME", "MaildirMaildrop", "ensure_maildir"]

logger = logging.getLogger(__name__)

LOCK_NAME = "postoffice.lock"
INDEX_NAME = "postoffice-index"
_INDEX_MAGIC = b"postoffice-index 1\n"
_NEW, _CUR, _TMP = "new", "cur", "tmp"
_MTIME_MARGIN_NS = 2_000_000_000
_CHUNK = 1 << 16
_UID_RE = re.compile(r"[\x21-\x7e]{1,70}")
_MICROS_RE = re.compile(r"M([0-9]{1,6})(?![0-9])")
_TAG_RE = re.compile(r"[A-Za-z]+=.*", re.DOTALL)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC

# Per key: (disk size, wire size, uid).
_Entry = tuple[int, int, str]
# Per directory (new/, cur/): (inode, mtime in ns).
_DirState = tuple[tuple[int, int], tuple[int, int]]


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


def _sort_key(key: str) -> tuple[int, int, str, str]:
    """Oldest first: the delivery time before the first ``.``, then the base name.

    Within one second, an ``M<microseconds>`` right after the dot (our names, Dovecot's)
    orders deliveries, since ``M99`` < ``M123`` would not as text.
    """
    name = key[4:]
    head, _, rest = name.partition(".")
    # A name without a time prefix cannot be dated; it sorts as oldest.
    seconds = int(head) if head.isascii() and head.isdigit() else 0
    micros = _MICROS_RE.match(rest)
    return (seconds, int(micros[1]) if micros else -1, _base_name(name), key)


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


@dataclass(slots=True, kw_only=True)
class _Index:
    dirs: _DirState | None
    """The directories as they were when listed; None: the listing must not be trusted."""
    listed_ns: int
    entries: dict[str, _Entry]

    def trusted(self, dirs: _DirState) -> bool:
        if self.dirs is None or self.dirs != dirs:
            return False
        newest = max(dirs[0][1], dirs[1][1])
        return self.listed_ns - newest > _MTIME_MARGIN_NS


def _load_index(path: Path) -> _Index | None:
    """The index at ``path``, or None when it is absent or cannot be trusted at all."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if not raw.startswith(_INDEX_MAGIC):
        return None
    checksum, _, body = raw[len(_INDEX_MAGIC) :].partition(b"\n")
    if hashlib.sha256(body).hexdigest().encode("ascii") != checksum:
        return None
    try:
        data = json.loads(body)
        dirs_raw = data["dirs"]
        dirs: _DirState | None = None
        if dirs_raw is not None:
            (new_ino, new_mtime), (cur_ino, cur_mtime) = dirs_raw
            dirs = ((int(new_ino), int(new_mtime)), (int(cur_ino), int(cur_mtime)))
        listed_ns = data["listed_ns"]
        entries: dict[str, _Entry] = {}
        for key, disk, wire, uid in data["entries"]:
            if not (
                _valid_key(key)
                and type(disk) is int
                and type(wire) is int
                and type(uid) is str
                and _UID_RE.fullmatch(uid)
            ):
                return None
            entries[key] = (disk, wire, uid)
        if type(listed_ns) is not int:
            return None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return _Index(dirs=dirs, listed_ns=listed_ns, entries=entries)


def _write_index(maildir: Path, index: _Index) -> None:
    """Replace the index atomically; log (do not raise) on failure."""
    body = json.dumps(
        {
            "dirs": index.dirs,
            "listed_ns": index.listed_ns,
            "entries": [[key, *entry] for key, entry in index.entries.items()],
        },
        separators=(",", ":"),
    ).encode("ascii")
    data = _INDEX_MAGIC + hashlib.sha256(body).hexdigest().encode("ascii") + b"\n" + body
    tmp = maildir / f".{INDEX_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "wb", closefd=False) as f:
                f.write(data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, maildir / INDEX_NAME)
    except OSError as exc:
        logger.warning("cannot write maildir index in %s: %s", maildir, exc)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


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
        self._messages: dict[str, StoredMessage] = {}
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
        index = _load_index(self._path / INDEX_NAME)
        listed_ns = time.time_ns()  # before the stat: see the module docstring
        try:
            dirs = self._dir_state()
            messages = None
            if index is not None and index.trusted(dirs):
                self._index = index
                messages = self._from_trusted(index)
            if messages is None:
                known = index.entries if index is not None else {}
                self._index = _Index(dirs=dirs, listed_ns=listed_ns, entries={})
                messages = self._from_listing(known)
                _write_index(self._path, self._index)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"cannot list maildir {self._path}: {exc}") from exc
        self._messages = {m.key: m for m in messages}
        self._moved = {}
        return messages

    def _dir_state(self) -> _DirState:
        new = os.stat(self._path / _NEW)
        cur = os.stat(self._path / _CUR)
        return ((new.st_ino, new.st_mtime_ns), (cur.st_ino, cur.st_mtime_ns))

    def _from_trusted(self, index: _Index) -> list[StoredMessage] | None:
        messages = []
        taken: set[str] = set()
        for key, (_, size, uid) in index.entries.items():
            if uid in taken:  # only a forged file could do this: list again
                return None
            taken.add(uid)
            messages.append(StoredMessage(key=key, uid=uid, size=size))
        return messages

    def _from_listing(self, known: dict[str, _Entry]) -> list[StoredMessage]:
        # new/ first, then cur/: a message moved between the two listings is then seen
        # twice rather than not at all, and the cur/ name wins.
        found: dict[str, tuple[str, os.DirEntry[str]]] = {}
        for sub in (_NEW, _CUR):
            with os.scandir(self._path / sub) as it:
                for entry in it:
                    name = entry.name
                    if name.startswith("."):
                        continue
                    try:
                        if not entry.is_file(follow_symlinks=False):
                            continue
                    except OSError:
                        continue
                    base = _base_name(name)
                    previous = found.get(base)
                    key = f"{sub}/{name}"
                    if previous is None or previous[0][:4] == "new/" or key < previous[0]:
                        found[base] = (key, entry)

        rows: list[tuple[str, int, int, str | None]] = []
        for base, (key, entry) in found.items():
            cached = known.get(key)
            if cached is not None:
                rows.append((key, cached[0], cached[1], cached[2]))
                continue
            measured = self._measure(base, entry)
            if measured is not None:
                rows.append((key, measured[0], measured[1], None))
        rows.sort(key=lambda row: _sort_key(row[0]))

        # Known UIDs keep their UID even if a newer file would claim it first by order.
        taken: set[str] = set()
        uids: list[str | None] = []
        for _key, _disk, _wire, uid in rows:
            if uid is not None and uid not in taken:
                taken.add(uid)
                uids.append(uid)
            else:
                uids.append(None)
        messages = []
        entries = self._index.entries
        for (key, disk, wire, _), uid in zip(rows, uids, strict=True):
            if uid is None:
                base = _base_name(key[4:])
                uid = _natural_uid(base)
                if uid in taken:
                    uid = _alternate_uid(base, taken)
                taken.add(uid)
            entries[key] = (disk, wire, uid)
            messages.append(StoredMessage(key=key, uid=uid, size=wire))
        return messages

    def _measure(self, base: str, entry: os.DirEntry[str]) -> tuple[int, int] | None:
        tags = _size_tags(base)
        if tags is not None:
            s, w = tags
            if 0 < s <= w <= 2 * s:
                try:
                    st_size = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    return None
                if st_size == s:
                    return s, w
        return _count_file(Path(entry.path))

    # reading ---------------------------------------------------------------------------

    def _check_member(self, messages: Iterable[StoredMessage]) -> None:
        for message in messages:
            if self._messages.get(message.key) != message:
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

    def _open_key(self, key: str) -> BinaryIO:
        fd = os.open(self._path / key, _READ_FLAGS)
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
        entries = self._index.entries
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
                entries.pop(key, None)
        if self._flag_updates:
            for message in retrieved:
                if message.key in deleted_keys:
                    continue
                try:
                    self._mark_seen(message.key, relocator)
                except OSError as exc:
                    logger.warning("cannot mark %s as seen: %s", message.key, exc)
        for sub in (_NEW, _CUR):
            try:
                _fsync_dir(self._path / sub)
            except OSError as exc:
                logger.error("cannot fsync %s: %s", self._path / sub, exc)
        # Our own changes moved the directory mtimes: the next snapshot lists again.
        self._index.dirs = None
        _write_index(self._path, self._index)
        return CommitResult(
            removed=removed,
            not_removed=not_removed,
            remaining=len(self._messages) - removed,
        )

    def _unlink(self, key: str, relocator: _Relocator) -> None:
        current = self._moved.get(key, key)
        try:
            os.unlink(self._path / current)
            return
        except FileNotFoundError:
            pass
        found = relocator.find(_base_name(key[4:]))
        if found is None:
            return  # already gone: counts as removed
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path / found)

    def _mark_seen(self, key: str, relocator: _Relocator) -> None:
        current = self._moved.get(key, key)
        if not (self._path / current).exists():
            found = relocator.find(_base_name(key[4:]))
            if found is None:
                return
            current = found
        target = _seen_name(current[4:])
        if target is None:
            return
        target_key = f"{_CUR}/{target}"
        if target_key == current:
            return
        os.rename(self._path / current, self._path / target_key)
        entry = self._index.entries.pop(key, None)
        if entry is not None:
            self._index.entries[target_key] = entry
