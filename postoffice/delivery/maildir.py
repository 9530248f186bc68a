"""Atomic delivery of one message into a Maildir.

The message is written to ``tmp/`` under a unique name, fsynced, renamed into ``new/`` and
``new/`` is fsynced: a reader sees the whole message or nothing, and once this returns the
message survives a crash. The final name carries ``,S=<disk size>,W=<wire size>`` so that
a POP3 snapshot need not read the file to know its exact size.

Uniqueness does not rely on the clock (which may step back): the name holds the pid, a
per-process counter and 32 random bits, and ``tmp/`` is opened with ``O_EXCL``.

Any ``OSError`` (disk full, I/O error) removes what was written and raises
``TemporaryDeliveryError``: nothing partial is ever left in ``new/`` or ``tmp/``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import socket
import time
from pathlib import Path
from typing import BinaryIO

from postoffice.durable import fsync_directory
from postoffice.errors import TemporaryDeliveryError
from postoffice.storage.maildir import ensure_maildir
from postoffice.storage.wire import WireSizeCounter

__all__ = ["deliver_to_maildir"]

_CHUNK = 1 << 16
_ATTEMPTS = 10
_counter = itertools.count()


def _hostname() -> str:
    # Maildir forbids "/" and ":" in the host part; "," would look like a tag to us.
    host = socket.gethostname() or "localhost"
    return host.replace("/", r"\057").replace(":", r"\072").replace(",", r"\054")


def _unique_name() -> str:
    now = time.time_ns()
    seconds, rest = divmod(now, 1_000_000_000)
    micros = rest // 1000
    return (
        f"{seconds}.M{micros}P{os.getpid()}Q{next(_counter)}R{secrets.token_hex(4)}.{_hostname()}"
    )


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def deliver_to_maildir(maildir: Path, message: bytes | BinaryIO) -> str:
    """Deliver ``message`` into ``maildir/new/`` atomically; return the new file's name.

    Raises ``TemporaryDeliveryError`` on any storage error, leaving no partial file.
    """
    maildir = Path(maildir)
    tmp_path: Path | None = None
    final_path: Path | None = None
    try:
        ensure_maildir(maildir)
        for _ in range(_ATTEMPTS):
            unique = _unique_name()
            try:
                fd = os.open(
                    maildir / "tmp" / unique,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                    0o600,
                )
            except FileExistsError:
                continue
            tmp_path = maildir / "tmp" / unique
            break
        else:
            raise FileExistsError(f"no unique name free in {maildir / 'tmp'}")
        counter = WireSizeCounter()
        try:
            if isinstance(message, bytes | bytearray | memoryview):
                data = bytes(message)
                counter.update(data)
                _write_all(fd, data)
            else:
                while chunk := message.read(_CHUNK):
                    counter.update(chunk)
                    _write_all(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        name = f"{unique},S={counter.octets},W={counter.size}"
        final_path = maildir / "new" / name
        os.rename(tmp_path, final_path)
        tmp_path = None
        fsync_directory(maildir / "new")
    except BaseException as exc:
        # Not known to be durable: take it back so that a retry cannot duplicate it.
        for leftover in (tmp_path, final_path):
            if leftover is not None:
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
        if isinstance(exc, OSError):
            raise TemporaryDeliveryError(f"cannot deliver to {maildir}: {exc}") from exc
        raise
    return name
