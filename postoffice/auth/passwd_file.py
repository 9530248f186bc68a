"""A Dovecot-compatible passwd-file: the user database, and the edits the CLI makes to it.

Format, one user a line (Dovecot's ``passwd-file`` driver)::

    user:{SCHEME}hash:uid:gid:gecos:home:shell:extra_fields

Fields after the password are optional; empty uid/gid mean "not set"; ``extra_fields`` is
the rest of the line and may contain colons. Blank lines and ``#`` comments are skipped.
The first line for a name wins, as in Dovecot.

Theory of operation. ``PasswdFile.lookup`` stats the file on every call and parses it again
only when (mtime_ns, size, inode, device) changed. Like git's "racily clean" index entries,
a file whose mtime was within two seconds of when we read it may still change without its
stat changing (mtime has coarse ticks), so until it ages the bytes are re-read and compared.
A malformed line is skipped and logged by line number only: it may hold a password.

Edits (add/set/delete) take an ``fcntl.flock`` on ``path + ".lock"``, read the file, write a
temporary file in the same directory with the old mode (0600 for a new file), fsync it,
``os.replace`` it over the original and fsync the directory. Lines they do not change are
kept byte for byte.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from postoffice.auth.base import NOT_CURRENT, NotCurrent, UserRecord
from postoffice.auth.schemes import is_known_scheme, is_weak_scheme, scheme_of
from postoffice.auth.usernames import validate_username
from postoffice.errors import InvalidUsernameError, PasswdFileError

_log = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

_NEW_FILE_MODE = 0o600
_RACY_NS = 2_000_000_000


class _MalformedLineError(ValueError):
    """A line that cannot be a user; its text is never shown."""


def _parse_id(field: str, what: str) -> int | None:
    if field == "":
        return None
    if not field.isascii() or not field.isdigit():
        raise _MalformedLineError(f"{what} is not a number")
    return int(field)


def parse_line(line: str, *, lowercase_names: bool = False) -> UserRecord:
    """Parse one non-comment passwd-file line (without its line ending).

    Raises ValueError (never quoting the line) when it is malformed.
    """
    fields = line.split(":", 7)
    if len(fields) < 2:
        raise _MalformedLineError("no ':' after the user name")
    name = fields[0].lower() if lowercase_names else fields[0]
    try:
        validate_username(name)
    except InvalidUsernameError as exc:
        raise _MalformedLineError(str(exc)) from None
    fields += [""] * (8 - len(fields))
    return UserRecord(
        name=name,
        password_hash=fields[1],
        uid=_parse_id(fields[2], "uid"),
        gid=_parse_id(fields[3], "gid"),
        gecos=fields[4],
        home=fields[5],
        shell=fields[6],
        extra_fields=fields[7],
    )


def _is_user_line(content: bytes) -> bool:
    stripped = content.strip()
    return bool(stripped) and not stripped.startswith(b"#")


def _parse_bytes(
    data: bytes, *, source: str, lowercase_names: bool, report: bool = True
) -> dict[str, UserRecord]:
    """The users in ``data``; each skipped line is logged when ``report``."""
    users: dict[str, UserRecord] = {}
    warn = _log.warning if report else _ignore
    for number, raw in enumerate(data.split(b"\n"), start=1):
        content = raw.removesuffix(b"\r")
        if not _is_user_line(content):
            continue
        try:
            record = parse_line(content.decode("utf-8"), lowercase_names=lowercase_names)
        except UnicodeDecodeError:
            warn("passwd-file %s: line %d is not UTF-8; skipped", source, number)
            continue
        except ValueError as exc:
            warn("passwd-file %s: line %d is malformed (%s); skipped", source, number, exc)
            continue
        if record.name in users:
            warn("passwd-file %s: line %d repeats an earlier user; skipped", source, number)
            continue
        users[record.name] = record
    return users


def _ignore(*_args: object) -> None:
    pass


def _typical_hash(users: dict[str, UserRecord]) -> str | None:
    first_of: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for record in users.values():
        scheme = scheme_of(record.password_hash)
        counts[scheme] += 1
        first_of.setdefault(scheme, record.password_hash)
    if not counts:
        return None
    return first_of[counts.most_common(1)[0][0]]


def _report_weak_schemes(source: str, users: dict[str, UserRecord]) -> None:
    """One warning per reading of the file, counting users whose password is stored in a
    weak scheme (plaintext, unsalted digests, MD5 or DES based), rather than a line for
    each such user as they log in."""
    weak: Counter[str] = Counter(
        scheme_of(record.password_hash)
        for record in users.values()
        if is_weak_scheme(record.password_hash)
    )
    if weak:
        _log.warning(
            "passwd-file %s: %d of %d users have passwords in weak schemes (%s); consider "
            "setting them again with `postoffice user passwd`",
            source,
            weak.total(),
            len(users),
            ", ".join(f"{scheme}: {count}" for scheme, count in weak.most_common()),
        )


@dataclass(frozen=True, slots=True)
class _Signature:
    mtime_ns: int
    size: int
    ino: int
    dev: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Signature:
        return cls(st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


class PasswdFile:
    """A UserDatabase read from a Dovecot-format passwd-file, reloaded when it changes.

    Names match exactly; with ``lowercase_names`` both the file's names and the looked-up
    name are lower-cased. Safe to call from several threads.
    """

    def __init__(
        self, path: StrPath, *, lowercase_names: bool = False, warn_weak_schemes: bool = False
    ) -> None:
        """``warn_weak_schemes``: log the count of weak passwords at each reading (the
        server does; a command such as ``deliver`` keeps its output clean)."""
        self._path = os.fspath(path)
        self._lowercase = lowercase_names
        self._warn_weak_schemes = warn_weak_schemes
        self._lock = threading.Lock()
        self._users: dict[str, UserRecord] | None = {}
        """None: released (``release_records``); parsed again from ``_data`` when read."""
        self._signature: _Signature | None = None
        self._data = b""
        self._racy = False
        self._missing_logged = False
        self._typical_hash: str | None = None

    @property
    def path(self) -> str:
        return self._path

    def lookup(self, name: str) -> UserRecord | None:
        """The user called ``name``, or None. Raises PasswdFileError if the file is unreadable."""
        key = name.lower() if self._lowercase else name
        with self._lock:
            self._refresh()
            users = self._users
            if users is None:
                users = self._users = self._parse(self._data, report=False)
            return users.get(key)

    def lookup_if_current(self, name: str) -> UserRecord | NotCurrent | None:
        """Like ``lookup``, but ``NOT_CURRENT`` instead of reading the file again: one
        ``stat``, so it may run on the event loop. Raises PasswdFileError like ``lookup``."""
        key = name.lower() if self._lowercase else name
        with self._lock:
            try:
                signature = _Signature.of(os.stat(self._path))
            except OSError:
                return NOT_CURRENT  # lookup() reports it
            users = self._users
            if signature != self._signature or self._racy or users is None:
                return NOT_CURRENT
            return users.get(key)

    def release_records(self) -> None:
        """Drop the parsed users but keep the file's bytes: the next ``lookup`` parses them
        again without reporting what the last reading reported, and ``lookup_if_current``
        says ``NOT_CURRENT`` until then.

        For a server's parent process before it forks: each worker then parses records of
        its own. Inherited records would be copied into every worker page by page, as
        lookups write their reference counts (measured: about 1.5 KiB more per session with
        5,000 users logging in to two workers)."""
        with self._lock:
            self._users = None

    @property
    def typical_hash(self) -> str | None:
        """The stored hash of a user whose scheme is the file's most common one: an unknown
        name is checked against it, so it costs what a typical user costs (no timing
        tells names apart). None before the file was read or when it has no users."""
        return self._typical_hash

    def _refresh(self) -> None:
        try:
            signature = _Signature.of(os.stat(self._path))
        except FileNotFoundError:
            if not self._missing_logged:
                _log.warning("passwd-file %s does not exist: no users", self._path)
                self._missing_logged = True
            self._users, self._signature, self._data = {}, None, b""
            self._typical_hash = None
            return
        except OSError as exc:
            raise PasswdFileError(f"cannot stat passwd-file {self._path}: {exc.strerror}") from exc
        self._missing_logged = False
        if signature == self._signature and not self._racy:
            return
        try:
            with open(self._path, "rb") as file:
                signature = _Signature.of(os.fstat(file.fileno()))
                data = file.read()
        except FileNotFoundError:
            self._users, self._signature, self._data = {}, None, b""
            self._typical_hash = None
            return
        except OSError as exc:
            raise PasswdFileError(f"cannot read passwd-file {self._path}: {exc.strerror}") from exc
        self._racy = time.time_ns() - signature.mtime_ns < _RACY_NS
        if data != self._data or self._signature is None:
            self._users = self._parse(data, report=True)
            self._data = data
        self._signature = signature

    def _parse(self, data: bytes, *, report: bool) -> dict[str, UserRecord]:
        users = _parse_bytes(
            data, source=self._path, lowercase_names=self._lowercase, report=report
        )
        self._typical_hash = _typical_hash(users)
        if report and self._warn_weak_schemes:
            _report_weak_schemes(self._path, users)
        return users


# --- editing -----------------------------------------------------------------------------


def _check_field(value: str, what: str, *, colon_ok: bool = False) -> str:
    forbidden = "\n\r\0" if colon_ok else ":\n\r\0"
    if any(char in forbidden for char in value):
        raise PasswdFileError(f"{what} must not contain {'newlines' if colon_ok else ':'}")
    return value


def _check_hash(password_hash: str) -> bytes:
    # The messages never include the hash: it could be a {PLAIN} password.
    if not password_hash:
        raise PasswdFileError("the password hash is empty")
    _check_field(password_hash, "the password hash")
    if not is_known_scheme(password_hash):
        raise PasswdFileError("the password hash uses a scheme postoffice cannot verify")
    try:
        return password_hash.encode("utf-8")
    except UnicodeEncodeError:
        raise PasswdFileError("the password hash is not valid UTF-8 text") from None


@contextmanager
def _locked(path: str) -> Iterator[None]:
    try:
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _NEW_FILE_MODE)
    except OSError as exc:
        raise PasswdFileError(f"cannot lock passwd-file {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _read(path: str) -> tuple[list[bytes], os.stat_result | None]:
    try:
        with open(path, "rb") as file:
            st = os.fstat(file.fileno())
            return file.read().splitlines(keepends=True), st
    except FileNotFoundError:
        return [], None
    except OSError as exc:
        raise PasswdFileError(f"cannot read passwd-file {path}: {exc.strerror}") from exc


def _write_atomic(path: str, data: bytes, old: os.stat_result | None) -> None:
    target = os.path.realpath(path)  # replace the file a symlink points at, not the link
    directory, base = os.path.split(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), stat.S_IMODE(old.st_mode) if old else _NEW_FILE_MODE)
                if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                    # Not root: the file becomes ours, as with any editor.
                    with suppress(PermissionError):
                        os.fchown(file.fileno(), old.st_uid, old.st_gid)
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, target)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise PasswdFileError(f"cannot write passwd-file {path}: {exc.strerror}") from exc


def _split_ending(line: bytes) -> tuple[bytes, bytes]:
    content = line.rstrip(b"\r\n")
    return content, line[len(content) :]


def _line_name(content: bytes) -> bytes | None:
    if not _is_user_line(content):
        return None
    return content.split(b":", 1)[0]


def _edit(path: StrPath, change: Callable[[list[bytes]], list[bytes]]) -> None:
    path = os.fspath(path)
    with _locked(path):
        lines, old = _read(path)
        _write_atomic(path, b"".join(change(lines)), old)


def add_user(
    path: StrPath,
    name: str,
    password_hash: str,
    *,
    exist_ok: bool = False,
    uid: int | None = None,
    gid: int | None = None,
    gecos: str = "",
    home: str = "",
    shell: str = "",
    extra_fields: str = "",
) -> None:
    """Add a user line. If the user exists: PasswdFileError, or with ``exist_ok`` the
    password of the existing line is replaced and its other fields are kept."""
    key = validate_username(name).encode("ascii")
    hashed = _check_hash(password_hash)
    for value, what in ((gecos, "gecos"), (home, "home"), (shell, "shell")):
        _check_field(value, what)
    _check_field(extra_fields, "extra_fields", colon_ok=True)
    for value_id, what in ((uid, "uid"), (gid, "gid")):
        if value_id is not None and value_id < 0:
            raise PasswdFileError(f"{what} must not be negative")
    fields = [
        name,
        password_hash,
        "" if uid is None else str(uid),
        "" if gid is None else str(gid),
        gecos,
        home,
        shell,
        extra_fields,
    ]
    new_line = ":".join(fields).encode("utf-8") + b"\n"

    def change(lines: list[bytes]) -> list[bytes]:
        if any(_line_name(_split_ending(line)[0]) == key for line in lines):
            if not exist_ok:
                raise PasswdFileError(f"user {name!r} already exists in {os.fspath(path)}")
            return _replace_hash(lines, key, hashed)
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += b"\n"
        return [*lines, new_line]

    _edit(path, change)


def _replace_hash(lines: list[bytes], key: bytes, hashed: bytes) -> list[bytes]:
    result = []
    for line in lines:
        content, ending = _split_ending(line)
        if _line_name(content) == key:
            parts = content.split(b":", 2)
            parts[1:2] = [hashed]
            line = b":".join(parts) + ending
        result.append(line)
    return result


def set_password(path: StrPath, name: str, password_hash: str) -> None:
    """Replace the password of ``name``; PasswdFileError if there is no such user."""
    key = validate_username(name).encode("ascii")
    hashed = _check_hash(password_hash)

    def change(lines: list[bytes]) -> list[bytes]:
        if not any(_line_name(_split_ending(line)[0]) == key for line in lines):
            raise PasswdFileError(f"no such user {name!r} in {os.fspath(path)}")
        return _replace_hash(lines, key, hashed)

    _edit(path, change)


def delete_user(path: StrPath, name: str) -> None:
    """Remove every line of ``name``; PasswdFileError if there is no such user."""
    key = validate_username(name).encode("ascii")

    def change(lines: list[bytes]) -> list[bytes]:
        kept = [line for line in lines if _line_name(_split_ending(line)[0]) != key]
        if len(kept) == len(lines):
            raise PasswdFileError(f"no such user {name!r} in {os.fspath(path)}")
        return kept

    _edit(path, change)


def list_users(path: StrPath, *, report: bool = True) -> list[UserRecord]:
    """Every well-formed user in file order (malformed lines are skipped, and logged when
    ``report``)."""
    path = os.fspath(path)
    lines, _ = _read(path)
    users = _parse_bytes(b"".join(lines), source=path, lowercase_names=False, report=report)
    return list(users.values())
