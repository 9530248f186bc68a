"""Destinations that take a message only whole: an mbox file, an MDA command, LMTP/SMTP.

Theory of operation
-------------------
Both spool the RETR body (CRLF made LF) into an anonymous temporary file, and act only in
``commit``, after the terminating dot: so an MDA is never handed a truncated message, and
an mbox never gets half of one. Neither can be checked afterwards for what it already
holds, so they are not *idempotent*: the session journals each of their messages right
after its commit (no group commit), which leaves a crash window of one message between the
destination's durability point and the journal (the Maildir has none; see ``delivery``).

mbox (mboxrd, as mutt and procmail read it): a ``From `` line with the Return-Path sender
and the time, the message with every line matching ``>*From `` given one more ``>``, and a
blank line. The file is locked as mutt and procmail do, a ``.lock`` dotlock (when the
folder is writable) and then ``fcntl``; the append is fsynced, and on any error the file
is cut back to its old length, so no partial message stays.

LMTP (RFC 2033), to a local MTA or Dovecot, or SMTP to a local MTA: one connection per
message, ``MAIL FROM`` the Return-Path, ``RCPT TO`` the account's ``recipient``; the 250
after the data is the durability point (the MTA has taken responsibility). Any other
answer raises, and the message is not journaled.

MDA: the command runs by the shell in the configuration's folder with the message on
stdin and ``POSTOFFICE_ACCOUNT`` / ``POSTOFFICE_UIDL`` in its environment; exit status 0
means delivered. One that runs longer than ``MDA_TIMEOUT`` is killed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from postoffice.fetch.config import MtaAddress
from postoffice.fetch.delivery import MessageSink, commit_each
from postoffice.fetch.errors import DeliveryFailedError

__all__ = ["ForwardDestination", "MboxDestination", "MdaDestination"]

MDA_TIMEOUT = 300.0
DOTLOCK_TIMEOUT = 30.0
DOTLOCK_STALE = 300.0  # procmail's default: an older dotlock is left over from a crash
_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
_FROM_LINE = re.compile(rb">*From ")
_RETURN_PATH = re.compile(rb"(?im)^Return-Path:[ \t]*<?([^>\r\n]*)>?")


class _Spool:
    """A message being received: LF line ends, in a temporary file."""

    def __init__(self) -> None:
        self.file: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 - closed by finish
        self._held_cr = False
        self.done = False

    def write(self, data: bytes) -> None:
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data.endswith(b"\r"):
            data, self._held_cr = data[:-1], True
        self.file.write(data.replace(b"\r\n", b"\n"))

    def rewind(self) -> BinaryIO:
        if self._held_cr:
            self.file.write(b"\r")
            self._held_cr = False
        self.file.flush()
        self.file.seek(0)
        return self.file

    def finish(self) -> None:
        self.done = True
        self.file.close()

    abort = finish


# -- MDA ------------------------------------------------------------------------------------


class MdaDestination:
    idempotent = False

    def __init__(self, command: str, *, account: str, workdir: Path) -> None:
        self.command = command
        self.account = account
        self.workdir = workdir

    def prepare(self) -> None:
        return None

    def find_delivered(self, uidls: Iterable[str]) -> dict[str, str]:
        return {}

    def sync(self) -> None:
        return None  # the MDA's exit status 0 is its durability point

    def commit_group(self, sinks: Sequence[MessageSink]) -> list[str | Exception]:
        return commit_each(sinks)

    def begin(self, uidl: str) -> _MdaMessage:
        return _MdaMessage(self, uidl)


class _MdaMessage(_Spool):
    def __init__(self, destination: MdaDestination, uidl: str) -> None:
        super().__init__()
        self.destination = destination
        self.uidl = uidl

    def commit(self) -> str:
        destination = self.destination
        env = {**os.environ, "POSTOFFICE_ACCOUNT": destination.account}
        env["POSTOFFICE_UIDL"] = self.uidl
        try:
            completed = subprocess.run(  # noqa: S602 - the user's own configured command
                destination.command,
                shell=True,
                stdin=self.rewind(),
                cwd=destination.workdir,
                env=env,
                timeout=MDA_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise DeliveryFailedError(
                f"mda did not finish within {MDA_TIMEOUT:.0f}s and was killed"
            ) from error
        finally:
            self.finish()
        if completed.returncode != 0:
            raise DeliveryFailedError(f"mda exited with status {completed.returncode}")
        return f"mda:{self.uidl}"


# -- LMTP -----------------------------------------------------------------------------------


class ForwardDestination:
    """Hands each message to an LMTP or SMTP server."""

    idempotent = False

    def __init__(self, address: MtaAddress, *, recipient: str, timeout: float) -> None:
        self.address = address
        self.recipient = recipient
        self.timeout = timeout

    def prepare(self) -> None:
        return None

    def find_delivered(self, uidls: Iterable[str]) -> dict[str, str]:
        return {}

    def sync(self) -> None:
        return None  # the server's 250 after the data is its durability point

    def commit_group(self, sinks: Sequence[MessageSink]) -> list[str | Exception]:
        return commit_each(sinks)

    def begin(self, uidl: str) -> _ForwardMessage:
        return _ForwardMessage(self)


class _ForwardMessage(_Spool):
    def __init__(self, destination: ForwardDestination) -> None:
        super().__init__()
        self.destination = destination

    def commit(self) -> str:
        destination = self.destination
        address = destination.address
        try:
            spool = self.rewind()
            sender = _return_path(spool)
            data = spool.read().replace(b"\n", b"\r\n")  # smtplib sends bytes as they are
            where = address.host if address.port is None else f"{address.host}:{address.port}"
            where = f"{address.protocol.upper()} {where}"
            try:
                if address.protocol == "lmtp":
                    client: smtplib.SMTP = smtplib.LMTP(
                        address.host, address.port or 0, timeout=destination.timeout
                    )
                else:
                    client = smtplib.SMTP(
                        address.host, address.port or 25, timeout=destination.timeout
                    )
                with client:
                    if address.protocol == "lmtp":
                        code, _ = client.ehlo()  # LHLO (RFC 2033 §4.1): no HELO fallback
                        if code != 250:
                            raise DeliveryFailedError(f"{where} refused LHLO ({code})")
                    refused = client.sendmail(sender, [destination.recipient], data)
            except smtplib.SMTPException as error:
                raise DeliveryFailedError(f"{where} refused the message: {error}") from None
            if refused:
                raise DeliveryFailedError(f"{where} refused the message: {refused}")
        finally:
            self.finish()
        return f"{address.protocol}:{destination.recipient}"


# -- mbox -----------------------------------------------------------------------------------


def _return_path(spool: BinaryIO) -> str:
    """The envelope sender from the Return-Path header ("" for none or the null sender)."""
    head = spool.read(64 * 1024)
    spool.seek(0)
    match = _RETURN_PATH.search(head.split(b"\n\n", 1)[0])
    sender = match.group(1).strip() if match else b""
    if any(c <= 0x20 or c >= 0x7F for c in sender):
        return ""
    return sender.decode("ascii")


def _take_dotlock(lock: Path) -> bool:
    """Create ``lock``; False if the folder is not writable (then fcntl alone, as mutt)."""
    deadline = time.monotonic() + DOTLOCK_TIMEOUT
    while True:
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except PermissionError:
            return False
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - lock.stat().st_mtime > DOTLOCK_STALE:
                    lock.unlink()  # left over by a crashed writer
                    continue
            if time.monotonic() > deadline:
                raise DeliveryFailedError(f"{lock} is held by another program") from None
            time.sleep(0.1)  # another writer holds the dotlock; mutt and procmail poll too
        else:
            return True


@contextlib.contextmanager
def _dotlock(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    taken = _take_dotlock(lock)
    try:
        yield
    finally:
        if taken:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


def _mboxrd(spool: BinaryIO) -> Iterator[bytes]:
    """The spooled message with mboxrd quoting, ending in a newline."""
    last = b"\n"
    for line in spool:
        last = line
        yield b">" + line if _FROM_LINE.match(line) else line
    if not last.endswith(b"\n"):
        yield b"\n"


class MboxDestination:
    idempotent = False

    def __init__(self, path: Path) -> None:
        self.path = path

    def prepare(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def find_delivered(self, uidls: Iterable[str]) -> dict[str, str]:
        return {}

    def sync(self) -> None:
        return None  # each append is fsynced under the lock

    def commit_group(self, sinks: Sequence[MessageSink]) -> list[str | Exception]:
        return commit_each(sinks)

    def begin(self, uidl: str) -> _MboxMessage:
        return _MboxMessage(self.path)


class _MboxMessage(_Spool):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def _from_line(self, spool: BinaryIO) -> bytes:
        sender = _return_path(spool) or "MAILER-DAEMON"
        return b"From " + sender.encode() + b" " + time.asctime().encode() + b"\n"

    def commit(self) -> str:
        spool = self.rewind()
        try:
            with _dotlock(self.path):
                fd = os.open(
                    self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
                )
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX)
                    start = os.fstat(fd).st_size
                    try:
                        with os.fdopen(os.dup(fd), "ab") as out:
                            out.write(self._from_line(spool))
                            out.writelines(_mboxrd(spool))
                            out.write(b"\n")
                            out.flush()
                            os.fsync(out.fileno())
                    except BaseException:
                        os.ftruncate(fd, start)  # no partial message stays behind
                        raise
                finally:
                    os.close(fd)  # releases the fcntl lock
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise DeliveryFailedError(f"{self.path}: disk full") from error
            raise
        finally:
            self.finish()
        return f"mbox:{start}"
