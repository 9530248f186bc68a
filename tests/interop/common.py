"""What the interop tests share: the test messages, their wire form, Maildirs, client runs.

Theory of operation: the server keeps each message as delivered and sends it with every
line ended by CRLF (RFC 1939 §3), adding a final CRLF when the stored message lacks one.
``wire()`` computes exactly those octets (before dot-stuffing), which is also what LIST
must report (RFC 1939 §11). Every client's local copy is then a documented function of
the wire form: curl prints it unchanged (minus dot-stuffing), the Maildir writers turn
CRLF into LF (``local_lf()``) and some prepend their own header lines, which each test
module checks separately.
"""

from __future__ import annotations

import os
import poplib
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from tests.conftest import ServerHarness

#: Every subprocess gets at most this many seconds; the clients finish in well under one.
CLIENT_TIMEOUT = 30

#: The local user name the clients see (mpop and fetchmail write it into Received:).
LOCAL_USER = "tester"

DOTS = (
    b"From: Sender <sender@example.org>\n"
    b"To: alice@example.org\n"
    b"Subject: dots and 8-bit bytes\n"
    b"\n"
    b"Line one.\n"
    b".Line starting with a dot.\n"
    b"..two dots\n"
    b".\n"
    b"From the start of a line, as mbox writers would quote it\n"
    b"Gr\xc3\xbc\xc3\x9fe, an 8-bit body\n"
    b"\n"
    b"\n"
    b"Last line after two blank lines.\n"
)
CRLF = b"From: crlf@example.org\r\nSubject: stored with CRLF\r\n\r\nbody\r\n.\r\n\r\n"
NO_FINAL_NEWLINE = b"Subject: no final newline\n\nlast line without a line end"
BIG = b"Subject: big\n\n" + b"".join(b".%05d " % i + b"x" * 90 + b"\n" for i in range(3000))

#: Delivered in this order, so message number N is ``MESSAGES[N - 1]``.
MESSAGES: tuple[bytes, ...] = (DOTS, CRLF, NO_FINAL_NEWLINE, BIG)

#: One more message, delivered between runs of a client in keep mode.
LATE = b"From: late@example.org\nSubject: delivered later\n\nA message that came later.\n"


def wire(message: bytes) -> bytes:
    """The octets RETR sends for ``message`` before dot-stuffing: each line ends in CRLF."""
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


def local_lf(message: bytes) -> bytes:
    """The wire form with CRLF turned into LF, as Unix Maildir writers store mail."""
    return wire(message).replace(b"\r\n", b"\n")


def deliver_all(server: ServerHarness, messages: Iterable[bytes], user: str = "alice") -> None:
    for message in messages:
        server.deliver(user, message)


def maildir_files(maildir: Path) -> list[Path]:
    """Every message file in ``new/`` and ``cur/`` (never ``tmp/``)."""
    return sorted(path for sub in ("new", "cur") for path in (maildir / sub).iterdir())


def maildir_contents(maildir: Path) -> list[bytes]:
    """The bytes of every message in a Maildir, sorted: clients name files their own way."""
    return sorted(path.read_bytes() for path in maildir_files(maildir))


def make_maildir(path: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def stat_and_uidls(server: ServerHarness, user: str = "alice") -> tuple[int, int, list[str]]:
    """STAT and the UIDL listing as Python's poplib sees them, for cross-checking a client."""
    pop = poplib.POP3(server.host, server.port, timeout=CLIENT_TIMEOUT)
    try:
        pop.user(user)
        pop.pass_(server.users[user])
        count, octets = pop.stat()
        uids = [line.split()[1].decode("ascii") for line in pop.uidl()[1]]
    finally:
        pop.quit()
    return count, octets, uids


def client_env(home: Path) -> dict[str, str]:
    """A small, fixed environment: HOME in the test's tmp dir, C locale, no proxies."""
    return {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", os.defpath),
        "USER": LOCAL_USER,
        "LOGNAME": LOCAL_USER,
        "LANG": "C",
        "LC_ALL": "C",
        "TZ": "UTC",
    }


def run_client(
    args: Sequence[str],
    *,
    home: Path,
    user: int | None = None,
    group: int | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a client to completion with a bounded timeout and its output captured."""
    return subprocess.run(
        list(args),
        env=client_env(home),
        cwd=home,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=CLIENT_TIMEOUT,
        check=False,
        user=user,
        group=group,
        extra_groups=[] if user is not None else None,
    )


def explain(result: subprocess.CompletedProcess[bytes]) -> str:
    """Everything a client said, for assertion messages."""
    return (
        f"{' '.join(map(str, result.args))}\nexit status {result.returncode}\n"
        f"--- stdout\n{result.stdout.decode('utf-8', 'replace')}"
        f"--- stderr\n{result.stderr.decode('utf-8', 'replace')}"
    )
