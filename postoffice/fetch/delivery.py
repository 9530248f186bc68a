"""Where fetched messages go: a Maildir, written so that a crash never duplicates or loses.

Theory of operation
-------------------
Durability order for one message (the session drives it; this module does steps 1-4):

1. receive the RETR body (CRLF becomes LF, the Maildir convention): held in memory, or
   streamed into its file in ``tmp/`` once it is larger than ``SPILL_OCTETS``;
2. after the terminating dot: write the file (if not yet written) and ``fsync`` it
   (``commit``; ``commit_group`` writes many messages, then makes them durable at once:
   one ``syncfs`` on Linux, else fsyncs from parallel threads that share journal commits;
   fsyncs too while other programs have much data waiting to be written, which a
   ``syncfs`` would wait for);
3. give it its name in ``new/`` (``commit``);
4. ``fsync`` the ``new/`` folder, so the name itself survives a power cut (``sync``;
   one call may cover several messages committed before it; the next ``commit_group``
   does it too, by the same ``syncfs`` that makes its own files durable);
5. (session) append the UIDLs to the journal and make it durable;
6. (session) only then DELE, QUIT, and wait for ``+OK``.

The file in ``tmp/`` has no name where Linux allows it (``O_TMPFILE``, checked once by
``prepare``): step 3 is then one ``linkat`` into ``new/`` instead of a create and a rename
in ``tmp/`` (one folder update, not three), and a crash leaves nothing in ``tmp/``. A
nameless file is on disk with a link count of 0 until linked, and ``fsync`` of ``new/``
does not write the linked file's new count on every filesystem (ext4 without a journal),
so the files of a group are made durable once more after linking: by a second ``syncfs``
(step 4, ``sync``), or by the first one of the next group, which then serves both groups
(``commit`` of one message: an ``fsync`` of the file, then of ``new/``). That ``syncfs``
makes the names durable too. If it fails, the names it was to make durable are removed
again and those messages count as not delivered. Elsewhere (no
``O_TMPFILE``, no ``/proc`` to link through, no ``syncfs``) the file is ``tmp/NAME``,
renamed in step 3.

NAME is derived from (account, UIDL) alone (a digest), plus ``,S=`` and ``,W=`` size tags
that postoffice's and Dovecot's Maildir readers use. So the same message always lands
under the same name: a crash between 3 and 5 leaves ``new/NAME`` (or ``cur/NAME:2,...``
once a reader has seen it), and at start-up ``find_delivered`` finds it by its prefix and
the session journals it instead of downloading it again. ``prepare`` removes our own
leftovers in ``tmp/`` (a crash before 3 with named files): they were never visible to
readers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from postoffice.durable import fsync_directory
from postoffice.errors import PostofficeError
from postoffice.storage.maildir_names import ensure_maildir
from postoffice.storage.wire import WireSizeCounter

__all__ = ["Destination", "MaildirDestination", "MessageSink", "commit_each", "message_key"]

_SUFFIX = ".fetched"
SPILL_OCTETS = 256 * 1024
"""A message held in memory beyond this many octets is streamed into ``tmp/`` instead."""
FSYNC_THREADS = 16
"""Threads that fsync the messages of one group commit at once."""
OTHERS_DIRTY_OCTETS = 64 << 20
"""Data of other programs waiting to be written back (``/proc/meminfo``) above which a
group is made durable by fsyncs of its own files instead of a ``syncfs``, which would
wait for all of it (a gigabyte of someone else's writes cost a 2,000-message fetch about
a second here)."""
_METADATA_OCTETS = 8192
"""Allowance per message for the pages its file and name dirty besides its content."""
_MEMINFO = "/proc/meminfo"
_PROC_FD = "/proc/self/fd/"
"""Where a nameless file is found by its descriptor, to link it (``linkat`` needs a
privilege to link a descriptor directly)."""


class MessageSink(Protocol):
    """One message being delivered."""

    def write(self, data: bytes) -> None: ...

    def commit(self) -> str:
        """Make the message's content durable and visible; return its local name. Blocking.

        The name becomes durable at the destination's next ``sync`` at the latest. The
        sinks of one destination may commit concurrently, each from its own thread."""
        ...

    def abort(self) -> None:
        """Drop what was written; nothing of it may become visible."""
        ...


class Destination(Protocol):
    """A local mail store the fetcher delivers into (Maildir here; mbox and MDA in
    ``spooled``)."""

    idempotent: bool
    """True if ``find_delivered`` can tell what a crash left delivered but unjournaled:
    then the session may group-commit many messages before journaling them."""

    def prepare(self) -> None:
        """Create the store if missing and clean up after a crash. Blocking."""
        ...

    def find_delivered(self, uidls: Iterable[str]) -> dict[str, str]:
        """Of ``uidls``, those already in the store, with their local names. Blocking."""
        ...

    def begin(self, uidl: str) -> MessageSink: ...

    def commit_group(self, sinks: Sequence[MessageSink]) -> list[str | Exception]:
        """``commit`` each of ``sinks`` (begun here), as fast as the store allows: the local
        name of each, or the error that stopped it (that sink is then aborted). Blocking.

        First makes every message committed before it durable, names included, as
        ``sync`` does, and raises ``OSError`` as ``sync`` does (``sinks`` then aborted)."""
        ...

    def sync(self) -> None:
        """Make every committed message durable, names included. Blocking. Raises
        ``OSError`` if that failed: those messages' names are then taken back."""
        ...


def message_key(account: str, uidl: str) -> str:
    """The deterministic part of the local name of (account, UIDL)."""
    digest = hashlib.sha256(f"{account}\0{uidl}".encode()).hexdigest()[:32]
    return f"{digest}.{account}{_SUFFIX}"


def _key_of(name: str) -> str:
    # "KEY,S=..,W=..:2,S" -> "KEY": drop the info part and the size tags.
    return name.partition(":")[0].partition(",")[0]


class MaildirDestination:
    """Delivers into a Maildir under names derived from (account, UIDL)."""

    idempotent = True

    def __init__(self, path: Path, account: str) -> None:
        self.path = path
        self.account = account
        self.nameless = False
        """Files in ``tmp/`` are made without a name (``O_TMPFILE``); set by ``prepare``."""
        self._unsynced: list[_MaildirMessage] = []
        """Named in ``new/`` by ``commit_group``, their names (and link counts) not yet
        durable: the next ``sync`` or ``commit_group`` makes them so."""
        self._unsynced_fd = -1
        """``tmp/``, opened before the messages of ``_unsynced`` were written."""

    def prepare(self) -> None:
        ensure_maildir(self.path)
        tmp = self.path / "tmp"
        for name in os.listdir(tmp):
            if name.endswith(f".{self.account}{_SUFFIX}"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp / name)
        fsync_directory(self.path)
        self.nameless = _nameless_files_work(str(tmp), f"probe.{self.account}{_SUFFIX}")

    def find_delivered(self, uidls: Iterable[str]) -> dict[str, str]:
        present: dict[str, str] = {}
        for sub in ("new", "cur"):
            for name in os.listdir(self.path / sub):
                present.setdefault(_key_of(name), f"{sub}/{name}")
        found: dict[str, str] = {}
        for uidl in uidls:
            local = present.get(message_key(self.account, uidl))
            if local is not None:
                found[uidl] = local
        return found

    def begin(self, uidl: str) -> MessageSink:
        # Plain strings, not Path: this runs for every message, on the event loop.
        key = message_key(self.account, uidl)
        return _MaildirMessage(str(self.path), key, nameless=self.nameless)

    def commit_group(self, sinks: Sequence[MessageSink]) -> list[str | Exception]:
        """Write every message into ``tmp/``, make them all durable at once (``_sync_all``;
        one ``syncfs`` that also makes the names of the group before durable), then name
        each in ``new/``; ``sync`` or the next group makes those names durable.

        While other programs have much data waiting to be written (``_others_dirty``), a
        ``syncfs`` would wait for all of it: the group's own files are fsynced instead,
        made in ``tmp/`` with names, renamed, and ``new/`` fsynced before returning."""
        outcomes: list[str | Exception | None] = [None] * len(sinks)
        written: list[tuple[int, _MaildirMessage, int]] = []
        own = sum(
            sink.stored_octets + _METADATA_OCTETS
            for sink in sinks
            if isinstance(sink, _MaildirMessage)
        )
        whole = _syncfs() is not None and not _others_dirty(own)
        # Opened before the writes: syncfs reports the write-back errors seen since then.
        tmp = os.open(self.path / "tmp", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        new = os.open(self.path / "new", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for index, sink in enumerate(sinks):
                if not isinstance(sink, _MaildirMessage):
                    outcomes[index] = commit_each([sink])[0]
                    continue
                if not whole:
                    sink.use_a_name()  # renamed after one fsync, not linked between two
                try:
                    written.append((index, sink, sink.write_out()))
                except OSError as write_error:
                    sink.abort()
                    outcomes[index] = write_error
            fds = [fd for _, _, fd in written]
            try:
                if self._unsynced and whole:
                    # One syncfs for both: its descriptor was opened before these writes too.
                    self._sync_names(new, whole_filesystem=True)
                    errors: list[OSError | None] = [None] * len(fds)
                else:
                    # Renamed files: an fsync of new/. Nameless ones need their link counts
                    # written too, which only a syncfs can do once their descriptors are
                    # closed: paid once, when groups turn from syncfs to fsyncs.
                    self._sync_names(new, whole_filesystem=self.nameless)
                    errors = _sync_all(tmp, fds) if whole else _fsync_each(fds)
            except OSError:
                for _, message, _ in written:
                    message.abort()
                raise
            named: list[tuple[int, _MaildirMessage]] = []
            for (index, message, _), sync_error in zip(written, errors, strict=True):
                problem: OSError | None = sync_error
                if problem is None:
                    try:
                        outcomes[index] = message.publish(new)
                        named.append((index, message))
                        continue
                    except OSError as name_error:
                        problem = name_error
                message.abort()
                outcomes[index] = problem
            if not whole:
                named = _names_made_durable(new, named, outcomes)
            for _, message in named:
                message.finish()
            if named and whole:
                self._unsynced = [message for _, message in named]
                # Kept for their syncfs: it reports the write-back errors since their writes.
                self._unsynced_fd, tmp = tmp, -1
        finally:
            os.close(new)
            if tmp >= 0:
                os.close(tmp)
        done = [outcome for outcome in outcomes if outcome is not None]
        assert len(done) == len(sinks)
        return done

    def sync(self) -> None:
        if not self._unsynced:
            return
        new = os.open(self.path / "new", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # Nameless files: their link counts too, which an fsync of new/ may not write.
            self._sync_names(new, whole_filesystem=self.nameless)
        finally:
            os.close(new)

    def _sync_names(self, new: int, *, whole_filesystem: bool) -> None:
        """Make the names in ``_unsynced`` durable, by a ``syncfs`` or an fsync of the
        folder ``new``; if that fails, take them back and raise."""
        unsynced, self._unsynced = self._unsynced, []
        fd, self._unsynced_fd = self._unsynced_fd, -1
        if not unsynced:
            return
        try:
            syncfs = _syncfs() if whole_filesystem else None
            if syncfs is not None:
                syncfs(fd)
            else:
                os.fsync(new)
        except OSError:
            for message in unsynced:
                message.unpublish(new)
            raise
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync(fd: int) -> OSError | None:
    try:
        os.fsync(fd)
    except OSError as error:
        return error
    return None


def _sync_all(folder: int, fds: list[int]) -> list[OSError | None]:
    """Make the files ``fds`` (in the folder ``folder``) durable; an error or None each.

    One ``syncfs`` of the filesystem where Linux has one that reports write-back errors:
    a single write-back pass and journal commit for the whole group, far cheaper than an
    fsync per file. Elsewhere, fsyncs from parallel threads, so that they share commits."""
    syncfs = _syncfs()
    if len(fds) > 1 and syncfs is not None:
        try:
            syncfs(folder)
        except OSError as error:
            return [error] * len(fds)
        return [None] * len(fds)
    return _fsync_each(fds)


def _fsync_each(fds: list[int]) -> list[OSError | None]:
    """An fsync of each of ``fds``, from parallel threads when there are several."""
    if len(fds) <= 1:
        return [_fsync(fd) for fd in fds]
    return list(_fsync_pool().map(_fsync, fds))


def _names_made_durable(
    new: int,
    named: list[tuple[int, _MaildirMessage]],
    outcomes: list[str | Exception | None],
) -> list[tuple[int, _MaildirMessage]]:
    """Make the names just given to ``named`` (index, message) durable now, by fsyncs: of
    each nameless file again (its link count), then of ``new``. A message whose name could
    not be made durable is taken back and its outcome becomes the error; the rest are
    returned."""
    nameless = [(index, message) for index, message in named if message.nameless]
    errors = _fsync_each([message.descriptor for _, message in nameless])
    for (index, message), error in zip(nameless, errors, strict=True):
        if error is not None:
            message.unpublish(new)
            outcomes[index] = error
    kept = [
        (index, message) for index, message in named if not isinstance(outcomes[index], OSError)
    ]
    if kept:
        error = _fsync(new)
        if error is not None:
            for index, message in kept:
                message.unpublish(new)
                outcomes[index] = error
            return []
    return kept


def _others_dirty(own: int) -> bool:
    """Whether more than ``OTHERS_DIRTY_OCTETS`` wait to be written back, system-wide,
    besides about ``own`` octets of ours (False where that cannot be read)."""
    waiting = _dirty_octets()
    return waiting is not None and waiting - own > OTHERS_DIRTY_OCTETS


def _dirty_octets() -> int | None:
    """Dirty and Writeback of ``/proc/meminfo`` together, in octets; None where unknown."""
    try:
        with open(_MEMINFO, "rb") as file:
            text = file.read()
    except OSError:
        return None
    total = 0
    for field in (b"\nDirty:", b"\nWriteback:"):
        start = text.find(field)
        end = text.find(b"kB", start)
        if start < 0 or end < 0:
            return None
        try:
            total += int(text[start + len(field) : end]) * 1024
        except ValueError:
            return None
    return total


@functools.cache
def _syncfs() -> Callable[[int], None] | None:
    """``syncfs(2)`` on Linux 5.8 or later (earlier ones did not report write-back
    errors through it), else None."""
    release = re.findall(r"\d+", os.uname().release)[:2] if sys.platform == "linux" else []
    if len(release) < 2 or (int(release[0]), int(release[1])) < (5, 8):
        return None
    import ctypes  # only here: it costs start-up time and is needed only on this path

    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if function(fd) != 0:
            number = ctypes.get_errno()
            raise OSError(number, f"syncfs: {os.strerror(number)}")

    return syncfs


def _nameless_files_work(tmp: str, probe: str) -> bool:
    """Whether a file made without a name in ``tmp`` (``O_TMPFILE``) can be linked into
    it later, through ``/proc/self/fd``, and ``syncfs`` is there to make it durable."""
    nameless = getattr(os, "O_TMPFILE", 0)
    if not nameless or _syncfs() is None:
        return False
    try:
        fd = os.open(tmp, os.O_WRONLY | nameless | os.O_CLOEXEC, 0o600)
    except OSError:  # EOPNOTSUPP, EISDIR: this filesystem or kernel has no O_TMPFILE
        return False
    folder = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(f"{_PROC_FD}{fd}", probe, dst_dir_fd=folder)
        os.unlink(probe, dir_fd=folder)
    except OSError:
        return False
    finally:
        os.close(folder)
        os.close(fd)
    return True


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _fsync_pool() -> ThreadPoolExecutor:
    global _pool  # one pool for the process, made on first use
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(FSYNC_THREADS, "postoffice-fsync")
        return _pool


def commit_each(sinks: Sequence[MessageSink]) -> list[str | Exception]:
    """``commit`` each sink in turn; a failed one is aborted and its error returned."""
    outcomes: list[str | Exception] = []
    for sink in sinks:
        try:
            outcomes.append(sink.commit())
        except (OSError, PostofficeError) as error:
            sink.abort()
            outcomes.append(error)
    return outcomes


class _MaildirMessage:
    """One message: held in memory up to ``SPILL_OCTETS``, streamed into ``tmp/`` beyond.

    A small message touches the filesystem only when committed: creating files on the
    event loop would wait behind the journal commits that other threads' fsyncs cause."""

    __slots__ = (
        "_chunks",
        "_done",
        "_fd",
        "_held_cr",
        "_key",
        "_maildir",
        "_name",
        "_nameless",
        "_size",
    )

    def __init__(self, maildir: str, key: str, *, nameless: bool = False) -> None:
        self._maildir = maildir
        self._key = key
        self._nameless = nameless
        self._name: str | None = None  # in new/, once published
        self._chunks: list[bytes] = []
        self._fd: int | None = None
        # For the ,S= and ,W= tags: the stored size, and the size RETR sends (RFC 1939 §11,
        # as storage.wire counts it): every bare LF goes out as CRLF, a CRLF is added at the end
        # unless the message ends with LF.
        self._size = WireSizeCounter()  # of what is stored: the name's S= and W=
        self._held_cr = False
        self._done = False

    @property
    def stored_octets(self) -> int:
        """Octets stored so far (CRLF made LF)."""
        return self._size.octets

    @property
    def nameless(self) -> bool:
        """Whether the file is (or will be) made without a name in ``tmp/``."""
        return self._nameless

    @property
    def descriptor(self) -> int:
        """The open file, once written out and until ``finish``."""
        assert self._fd is not None
        return self._fd

    def use_a_name(self) -> None:
        """Make the file in ``tmp/`` with a name (renamed into ``new/``), unless it is open
        already: durable by one fsync before its rename, where a nameless one needs a second
        for its link count."""
        if self._fd is None:
            self._nameless = False

    @property
    def _tmp(self) -> str:
        """The file's name in ``tmp/`` (when files there have names)."""
        return os.path.join(self._maildir, "tmp", self._key)

    def _open(self) -> int:
        if self._nameless:
            # Not O_EXCL: that would forbid linking it later.
            folder = os.path.join(self._maildir, "tmp")
            return os.open(folder, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
        # O_TRUNC, not O_EXCL: a leftover of ours by this name is a dead partial copy.
        return os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    def write(self, data: bytes) -> None:
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]  # the LF that may follow is in the next chunk
            self._held_cr = True
        if not data:
            return
        # Split at every line end (CRLF, or a lone CR or LF) and joined with LF. Each CRLF
        # shrinks the data by one octet and a lone CR or LF by none, so the lengths tell
        # whether every line end was CRLF without another pass over the octets; then no
        # CR is stored and every LF stored is bare (about 0.12 s per 100 MB; splitting at
        # CRLF and searching what is between for a CR or LF took 0.17 s).
        lines = data.splitlines()
        if data[-1] in b"\r\n":
            lines.append(b"")  # splitlines drops the last line end
        ends = len(lines) - 1
        joined = b"\n".join(lines) if ends else data
        if self._size.last != 0x0D and len(data) - len(joined) == ends:
            data = joined
            self._size.counted(len(data), ends, data[-1])
        else:
            data = b"\n".join(data.split(b"\r\n"))  # only CRLF becomes LF
            self._size.update(data)
        if self._fd is not None:
            _write_all(self._fd, data)
            return
        self._chunks.append(data)
        if self._size.octets > SPILL_OCTETS:
            self._fd = self._open()
            _write_all(self._fd, b"".join(self._chunks))
            self._chunks = []

    def write_out(self) -> int:
        """Step 1 of ``commit``: everything into ``tmp/``, not yet fsynced; the descriptor."""
        if self._held_cr:
            self._size.update(b"\r")
            self._chunks.append(b"\r")
            self._held_cr = False
        if self._fd is None:
            self._fd = self._open()
        _write_all(self._fd, b"".join(self._chunks))
        self._chunks = []
        return self._fd

    def publish(self, new: int) -> str:
        """Step 3 of ``commit``, once the file is fsynced: its name in ``new/`` (the folder
        ``new``), by a link of the nameless file or a rename. ``finish`` follows."""
        assert self._fd is not None
        name = f"{self._key},S={self._size.octets},W={self._size.size}"
        if self._nameless:
            os.link(f"{_PROC_FD}{self._fd}", name, dst_dir_fd=new)
        else:
            os.rename(self._tmp, name, dst_dir_fd=new)
        self._name = name
        return name

    def unpublish(self, new: int) -> None:
        """Take the name back (its durability failed); the message is then aborted."""
        if self._name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._name, dir_fd=new)
            self._name = None
        self.abort()

    def finish(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._done = True

    def commit(self) -> str:
        fd = self.write_out()
        os.fsync(fd)
        folder = os.path.join(self._maildir, "new")
        new = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            name = self.publish(new)
            if self._nameless:
                try:
                    os.fsync(fd)  # its link count, now 1
                    os.fsync(new)  # and its name: sync() has nothing left to do
                except OSError:
                    self.unpublish(new)
                    raise
        finally:
            os.close(new)
        self.finish()
        return name

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._chunks = []
        if self._fd is None:
            return  # nothing reached the filesystem
        os.close(self._fd)
        self._fd = None
        if not self._nameless:  # a nameless file vanishes with its descriptor
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
