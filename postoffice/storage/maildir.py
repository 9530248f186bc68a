"""The Maildir backend of the ``Maildrop`` contract.

Theory of operation
-------------------

*Layout.* A maildir holds ``tmp/`` (deliveries in progress, never served), ``new/`` and
``cur/``. A file name is ``UNIQUE[,KEY=value...][:2,FLAGS]``; the part before ``:`` (the
*base name*) never changes, other programs only move ``new/X`` to ``cur/X:2,`` and change
the flags. A file's content never changes either, so anything learned about a name stays
true while that name exists (``maildir_names.py``).

*Lock.* ``lock()`` takes ``flock(LOCK_EX | LOCK_NB)`` on ``postoffice.lock`` in the maildir
through a file descriptor kept for the session. flock belongs to the open file description,
so it excludes other processes and other ``MaildirMaildrop`` objects in this process alike,
and the kernel drops it when the process dies: there are no stale lock files. Deliveries
take no lock (Maildir delivery is lock-free); that is why a commit touches only files of
its own snapshot.

*UIDL.* Decided once per message, the first time a listing sees it, by the UIDL scheme
(``mail.uidl_format``, ``uidl.py``): by default the base name without ``,KEY=value`` tags,
so it survives moves and flag changes; under a migration scheme what Dovecot or Courier
served. If two files would share a UIDL the first keeps it, later ones get a digest of
their full base name. After that the index cache keeps it.

*Size.* The exact RETR size, from trustworthy ``,S=,W=`` tags or counted
(``maildir_listing.py``).

*Index cache* (``postoffice-index``, ``maildir_index.py``). The listing itself is trusted
(no directory is read) only if ``new/`` and ``cur/`` still have the recorded inode and
mtime AND the listing started more than 2 seconds after those mtimes, so a change within
the same timestamp tick (2 s on the coarsest filesystems) cannot hide behind an unchanged
mtime. Otherwise the directories are listed against the cache (``maildir_listing.py``),
except one that passes that rule on its own (a delivery changes only ``new/``).
The index is rewritten by ``correct_size`` and after a listing, unless that listing read
only a few names (at most ``_FEW_READ``, typically a delivery into ``new/`` while ``cur/``
is trusted), counted none of them by reading, and handed out no pinned UIDL: any process
listing against the file as it is re-derives the same entries from those few names, at
the cost of reading them again, which is less than rewriting 10,000 entries at each login.
``commit`` rewrites it only when the next listing could not re-derive what it holds from
the names alone (a pinned index, a corrected size) or would have many names to measure
(more than ``_FEW`` removed or renamed). This process also reuses its last snapshot while
neither the index file nor the directories changed, and lists against its copy of the
index (or what its last listing against that file found) rather than reading the file
again while the file is the one it came from.

*Deferred index write.* Writing the index of a large listing (~30 ms for 100,000 messages)
need not delay the login that listed: ``snapshot(defer_index_write=True)`` leaves it to
``write_deferred_index``, which the server runs in a thread once the login is answered.
Everything that changes the index or gives up the lock (``correct_size``, ``commit``,
``unlock``) finishes that write first, so the lock still covers it and the next session,
in any process, finds the file. A pinned index is never deferred: its UIDLs could not be
listed again the same way, so it is durable before any is handed out.

A file that exists but cannot be read makes ``snapshot`` fail with ``StorageError`` rather
than silently hide mail; a file that vanishes while we list is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import logging
import operator
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from postoffice.durable import fsync_directory
from postoffice.errors import MaildropInUseError, MessageVanishedError, StorageError
from postoffice.storage.base import CommitResult, StoredMessage
from postoffice.storage.maildir_index import (
    INDEX_NAME,
    DirState,
    FileId,
    Index,
    load_index,
    recall,
    remember,
    write_index,
)
from postoffice.storage.maildir_listing import READ_FLAGS, list_maildir
from postoffice.storage.maildir_names import (
    CUR,
    NEW,
    base_name,
    ensure_maildir,
    seen_name,
    valid_key,
)
from postoffice.storage.uidl import UidlScheme, parse_uidl_format

__all__ = ["INDEX_NAME", "LOCK_NAME", "MaildirMaildrop", "ensure_maildir"]

logger = logging.getLogger(__name__)

LOCK_NAME = "postoffice.lock"
# Migration schemes whose UIDLs come from another server's files, which may change or go
# away: an index holding them is fsynced (maildir_index.py).
_PINNING_SCHEMES = ("dovecot", "courier")
# An UPDATE that removed or renamed at most this many files leaves the index as it was.
_FEW = 1000
# A message among the last this many of the snapshot is checked without a dict of them all.
_RECENT = 64
# A listing that read at most this many names (none counted by reading the file) and
# added no pinned UIDL leaves the index file as it was (module docstring).
_FEW_READ = 64
DEFER_INDEX_MESSAGES = 10_000
"""A listing of this many messages or more may leave its index to ``write_deferred_index``
(module docstring); below, writing it takes a few milliseconds at most."""


_KEY = operator.attrgetter("key")
# Before the first snapshot (shared: an index is copied before it is changed).
_NO_INDEX = Index(dirs=None, listed_ns=0, columns=([], [], [], []))


class _CollectorPaused:
    """Pause the cyclic garbage collector while a snapshot is built.

    A listing can allocate a tuple or more per name (names not of the usual shape, new
    names merged with known ones); each 700 allocations would start a collection, some of
    them over every object in the process, for no garbage (the tuples hold only strings
    and integers). It took about a third off a cold listing when every snapshot was a
    list of tuples; snapshots are now columns (``column_messages.py``). Another thread
    pausing at the same time may turn the collector back on early; that only costs time.
    A class, not a generator: a login on a small maildrop pays for it too.
    """

    __slots__ = ("_was_enabled",)

    def __enter__(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *_exc: object) -> None:
        if self._was_enabled:
            gc.enable()


class _Relocator:
    """Finds where a message is now, by base name, listing new/ and cur/ once."""

    def __init__(self, maildir: Path) -> None:
        self._maildir = maildir
        self._where: dict[str, str] | None = None

    def find(self, base: str) -> str | None:
        if self._where is None:
            where: dict[str, str] = {}
            for sub in (NEW, CUR):  # cur/ last: it wins, as in snapshot()
                with os.scandir(self._maildir / sub) as it:
                    for entry in it:
                        if not entry.name.startswith("."):
                            where[base_name(entry.name)] = f"{sub}/{entry.name}"
            self._where = where
        return self._where.get(base)


# -- the maildrop --------------------------------------------------------------------------


class MaildirMaildrop:
    """One user's Maildir, opened for one POP3 session (see the module docstring)."""

    __slots__ = (
        "_by_key",
        "_corrected",
        "_create",
        "_deferred_index",
        "_deferred_lock",
        "_dir",
        "_flag_updates",
        "_index",
        "_lock_fd",
        "_moved",
        "_recent",
        "_save_index",
        "_scheme",
        "_snapshot",
    )

    def __init__(
        self,
        path: Path | str,
        *,
        create: bool = True,
        flag_updates: bool = True,
        uidl_format: str | UidlScheme = "postoffice",
        save_index: bool = True,
    ) -> None:
        """``uidl_format``: see ``uidl.py``; ``save_index=False`` never writes the index
        (for tools that only look, such as ``postoffice migrate check``)."""
        # Kept as a string, a Path made only where one is needed (``_path``): an idle
        # session holds its maildrop, and a Path with its parts costs ~400 octets. Paths
        # inside it by concatenation: a login's hot path (os.path.join costs ~1 us).
        self._dir = os.fspath(path)
        self._create = create
        self._flag_updates = flag_updates
        self._scheme = (
            uidl_format if isinstance(uidl_format, UidlScheme) else parse_uidl_format(uidl_format)
        )
        self._save_index = save_index
        self._lock_fd: int | None = None
        self._snapshot: Sequence[StoredMessage] = ()
        self._by_key: dict[str, StoredMessage] | None = None  # built when first needed
        self._recent: Sequence[StoredMessage] | None = None  # the newest, made when needed
        self._index = _NO_INDEX
        self._moved: dict[str, str] | None = None  # snapshot key -> where found since
        self._corrected = False  # correct_size was called: commit must keep that in the index
        self._deferred_index: Index | None = None  # listed, to be written (module docstring)
        self._deferred_lock: threading.Lock | None = None  # made only when a write is deferred

    def __repr__(self) -> str:
        return f"MaildirMaildrop({self._dir!r})"

    @property
    def path(self) -> Path:
        return Path(self._dir)

    _path = path

    def _current(self, key: str) -> str:
        """Where the message of snapshot key ``key`` was last found."""
        return key if self._moved is None else self._moved.get(key, key)

    @property
    def scheme_id(self) -> str:
        """The UIDL scheme's name, as the index file and the memory of snapshots key it."""
        return self._scheme.id

    def _create_missing(self, exc: FileNotFoundError) -> None:
        """After ``exc`` (the maildir or a part of it is missing): create it, or refuse.

        Called only when a stat or open found something missing, so a session on an
        existing maildir makes no mkdir calls.
        """
        if not self._create:
            raise StorageError(f"not a maildir: {self._path}") from exc
        try:
            ensure_maildir(self._path)
        except OSError as error:
            raise StorageError(f"cannot create maildir {self._path}: {error}") from error

    # lock ------------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the session lock; ``MaildropInUseError`` if any other session holds it."""
        if self._lock_fd is not None:
            return
        lock_path = f"{self._dir}/{LOCK_NAME}"
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            try:
                fd = os.open(lock_path, flags, 0o600)
            except FileNotFoundError as exc:
                self._create_missing(exc)
                fd = os.open(lock_path, flags, 0o600)
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

    def unlock(self) -> None:
        """Release the lock if held (closing the descriptor releases the flock), after a
        deferred index write."""
        self.write_deferred_index()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        # A session dropped without unlock() must not keep the maildrop locked forever.
        # (AttributeError: __init__ did not get as far as the lock's field.)
        with contextlib.suppress(OSError, AttributeError):
            self.unlock()

    # snapshot --------------------------------------------------------------------------

    def snapshot(self, *, defer_index_write: bool = False) -> Sequence[StoredMessage]:
        """The complete messages in ``new/`` and ``cur/``, oldest first, with UIDL and size.

        ``defer_index_write``: a large listing's index is left for ``write_deferred_index``
        (module docstring); ``index_write_deferred`` says whether it was."""
        self.write_deferred_index()
        listed_ns = time.time_ns()  # before the stat: see the module docstring
        try:
            try:
                dirs = self._dir_state()
            except FileNotFoundError as exc:
                self._create_missing(exc)
                dirs = self._dir_state()
            recalled = recall(self._dir, self._scheme.id, dirs)
            if recalled is not None and recalled[3]:
                self._index, messages = recalled[0], recalled[1]
            else:
                with _CollectorPaused():
                    messages = self._from_index_or_listing(
                        dirs, listed_ns, recalled, defer_index_write
                    )
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"cannot list maildir {self._path}: {exc}") from exc
        self._snapshot = messages
        self._by_key = None
        self._recent = None
        self._moved = None
        return messages  # shared with the memory of snapshots: never changed in place

    def _from_index_or_listing(
        self,
        dirs: DirState,
        listed_ns: int,
        remembered: tuple[Index, Sequence[StoredMessage], FileId, bool] | None,
        defer_index_write: bool = False,
    ) -> Sequence[StoredMessage]:
        """From the index file if trusted, else by listing against what is known.

        ``remembered``: this process's copy of the index file (or of what a listing against
        that file found), untrusted, its messages and the file's identity: the file is not
        read again.
        """
        loaded = (remembered[0], remembered[2]) if remembered is not None else self._load_index()
        file_id: FileId | None
        if loaded is not None and remembered is None and loaded[0].trusted(dirs):
            self._index, file_id = loaded
        else:
            index = None if loaded is None else loaded[0]
            known = index.columns() if index is not None else ([], [], [], [])
            unchanged = index.trusted_dirs(dirs) if index is not None else (False, False)
            natural = self._scheme.kind == "postoffice" and not (index is None or index.pinned)
            listing = list_maildir(self._path, known, self._scheme, unchanged, natural=natural)
            pinned = (
                listing.alternates
                or self._scheme.kind in _PINNING_SCHEMES
                or (index is not None and index.pinned)
            )
            self._index = Index(
                dirs=dirs, listed_ns=listed_ns, columns=listing.columns, pinned=pinned
            )
            if (
                loaded is not None
                and not pinned
                and not listing.measured
                and listing.read <= _FEW_READ
            ):
                # What this listing added to the file it started from, any process
                # re-derives from the few names it read: leave the file as it is.
                file_id = loaded[1]
            elif (
                defer_index_write
                and self._save_index
                and not pinned
                and len(listing.columns[0]) >= DEFER_INDEX_MESSAGES
            ):
                self._deferred_index = self._index
                self._deferred_lock = threading.Lock()
                file_id = None
            else:
                file_id = self._write_index()
        if file_id is None:
            return self._index.messages()
        self._index, messages = remember(self._dir, self._scheme.id, file_id, self._index)
        return messages

    def remember_index_file(self) -> bool:
        """Read the index file into this process's memory of snapshots, as a login would
        before listing, without the lock (the file is replaced atomically) and without
        listing or writing anything: another process has just written it, and the next
        login here starts from memory. False when there is no usable file."""
        with _CollectorPaused():
            loaded = self._load_index()
            if loaded is None:
                return False
            index, file_id = loaded
            remember(self._dir, self._scheme.id, file_id, index)
        return True

    @property
    def index_write_deferred(self) -> bool:
        """Whether the last snapshot left its index for ``write_deferred_index``."""
        return self._deferred_index is not None

    def write_deferred_index(self) -> None:
        """Write the index the last snapshot deferred, and remember it as a finished
        listing would (for ``recall`` by later sessions of this process). Safe to call from
        another thread while the session goes on reading (the index is not changed), and
        more than once: a second call waits for the first, then finds nothing to do."""
        lock = self._deferred_lock
        if lock is None:  # nothing was ever deferred: the usual case, at every unlock
            return
        with lock:
            index, self._deferred_index = self._deferred_index, None
            if index is None:
                return
            with _CollectorPaused():
                file_id = self._write_index(index)
                if file_id is not None:
                    remember(self._dir, self._scheme.id, file_id, index)

    def _load_index(self) -> tuple[Index, FileId] | None:
        return load_index(f"{self._dir}/{INDEX_NAME}", self._scheme.id)

    def _dir_state(self) -> DirState:
        new = os.stat(f"{self._dir}/{NEW}")
        cur = os.stat(f"{self._dir}/{CUR}")
        return (new.st_ino, new.st_mtime_ns, cur.st_ino, cur.st_mtime_ns)

    def _write_index(self, index: Index | None = None) -> FileId | None:
        """Write ``index`` (default: this snapshot's) unless this maildrop never saves one."""
        if not self._save_index:
            return None
        return write_index(self._path, self._index if index is None else index, self._scheme.id)

    # reading ---------------------------------------------------------------------------

    def _check_member(self, messages: Iterable[StoredMessage]) -> None:
        messages = list(messages)
        if not messages:
            return
        if self._by_key is None:
            if self._recent is None:  # made once: a large snapshot makes them when sliced
                self._recent = self._snapshot[-_RECENT:]
            if all(map(self._recent.__contains__, messages)):
                # The newest messages, which a keep-mode client fetches: found without
                # making a dict of the whole snapshot.
                return
        if self._by_key is None:
            self._by_key = dict(zip(map(_KEY, self._snapshot), self._snapshot, strict=True))
        for message in messages:
            if self._by_key.get(message.key) != message:
                raise ValueError(f"{message.key!r} is not in this session's snapshot")

    def open(self, message: StoredMessage) -> BinaryIO:
        """Open a message of the snapshot, following a move by another program."""
        self._check_member([message])
        key = self._current(message.key)
        try:
            try:
                return self._open_key(key)
            except FileNotFoundError:
                pass
            found = _Relocator(self._path).find(base_name(key[4:]))
            if found is not None:
                try:
                    opened = self._open_key(found)
                except FileNotFoundError:
                    pass
                else:
                    if self._moved is None:
                        self._moved = {}
                    self._moved[message.key] = found
                    return opened
        except OSError as exc:
            raise StorageError(f"cannot open {message.key}: {exc}") from exc
        raise MessageVanishedError(f"message {message.key} is gone")

    def _file(self, key: str) -> str:
        if not valid_key(key):  # only a forged index could bring such a key
            raise StorageError(f"invalid message key {key!r}")
        return f"{self._dir}/{key}"

    def _open_key(self, key: str) -> BinaryIO:
        fd = os.open(self._file(key), READ_FLAGS)
        # Unbuffered: callers read in large pieces, and a buffer would only add a copy.
        return open(fd, "rb", buffering=0)

    def correct_size(self, message: StoredMessage, size: int) -> None:
        """Remember the size RETR found, so the next snapshot lists it."""
        self._check_member([message])
        logger.warning(
            "size of %s was %d, RETR sent %d; index corrected", message.key, message.size, size
        )
        self.write_deferred_index()  # first: it must not overwrite the correction
        self._index = self._index.copy()  # it may be the remembered one, shared
        entry = self._index.entries.get(message.key)
        self._corrected = True
        if entry is not None:
            self._index.entries[message.key] = (entry[0], size, entry[2])
            self._write_index()

    # update ----------------------------------------------------------------------------

    def commit(
        self, *, deleted: Sequence[StoredMessage], retrieved: Sequence[StoredMessage]
    ) -> CommitResult:
        """Remove ``deleted``, mark ``retrieved`` seen (new/ -> cur/), make removals durable.

        Only files of this session's snapshot are touched (found by base name if another
        program renamed them); mail delivered since the snapshot is never removed. Both
        directories are fsynced when something was removed, before the caller answers
        QUIT. A Seen rename alone is not fsynced: if a crash loses it, the message is back
        in new/ without the flag, with the same UIDL.
        """
        self.write_deferred_index()  # the snapshot's index, before any change to it
        if not deleted and not (retrieved and self._flag_updates):
            return CommitResult(removed=0, not_removed=0, remaining=len(self._snapshot))
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
        if not gone and not renamed and not not_removed:
            # Nothing changed on disk: the index and its trust in the directories stand,
            # so the next login is as fast as this one.
            return CommitResult(removed=0, not_removed=0, remaining=len(self._snapshot))
        if gone:
            for sub in (NEW, CUR):
                try:
                    fsync_directory(self._path / sub)
                except OSError as exc:
                    logger.error("cannot fsync %s: %s", self._path / sub, exc)
        if not (self._index.pinned or self._corrected or len(gone) + len(renamed) > _FEW):
            # The next snapshot lists again anyway (our changes moved the directory
            # mtimes), and from the index it has it re-derives the few new names exactly
            # as we would record them: natural UIDLs, sizes from tags. Not writing it
            # keeps the UPDATE (and the QUIT reply) short.
            return CommitResult(
                removed=removed, not_removed=not_removed, remaining=len(self._snapshot) - removed
            )
        # Same order as before; our own changes moved the directory mtimes, so the next
        # snapshot lists again (dirs=None), finding nothing to measure.
        keys, disk, wire, uids = self._index.columns()
        kept = [i for i, key in enumerate(keys) if key not in gone]
        self._index = Index(
            dirs=None,
            listed_ns=self._index.listed_ns,
            columns=(
                [renamed.get(keys[i], keys[i]) for i in kept],
                [disk[i] for i in kept],
                [wire[i] for i in kept],
                [uids[i] for i in kept],
            ),
            pinned=self._index.pinned,
        )
        self._write_index()
        return CommitResult(
            removed=removed,
            not_removed=not_removed,
            remaining=len(self._snapshot) - removed,
        )

    def _unlink(self, key: str, relocator: _Relocator) -> None:
        current = self._current(key)
        try:
            os.unlink(self._file(current))
            return
        except FileNotFoundError:
            pass
        found = relocator.find(base_name(key[4:]))
        if found is None:
            return  # already gone: counts as removed
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path / found)

    def _mark_seen(self, key: str, relocator: _Relocator) -> str | None:
        """Move to cur/ with the S flag; return the new key if we renamed the file."""
        current = self._current(key)
        if not os.path.exists(self._file(current)):
            found = relocator.find(base_name(key[4:]))
            if found is None:
                return None
            current = found
        target = seen_name(current[4:])
        if target is None:
            return None
        target_key = f"{CUR}/{target}"
        if target_key == current:
            return None
        os.rename(self._file(current), self._path / target_key)
        return target_key
