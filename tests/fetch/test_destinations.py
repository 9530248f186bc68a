"""mbox and MDA destinations: whole messages only, quoting, locking, failures."""

from __future__ import annotations

import asyncio
import fcntl
import mailbox
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from postoffice.fetch.errors import DeliveryFailedError
from postoffice.fetch.runner import fetch_account

from .fakeserver import FakeMessage, FakePop3Server, Faults
from .helpers import five_messages, make_account

TRICKY = FakeMessage(
    "tricky",
    b"Return-Path: <bob@example.org>\r\nSubject: from lines\r\n\r\n"
    b"From the start\r\n>From quoted once\r\n>>From twice\r\nFromage\r\nno final newline",
)


@pytest.fixture
async def server() -> AsyncIterator[FakePop3Server]:
    fake = FakePop3Server(messages=[*five_messages(), TRICKY])
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def unquote(data: bytes) -> bytes:
    """mboxrd reading: one '>' off every line matching >+From ."""
    quoted = re.compile(rb"^>(>*From )", re.MULTILINE)
    return quoted.sub(rb"\1", data)


async def test_mbox_gets_every_message_once_with_mboxrd_quoting(
    tmp_path: Path, server: FakePop3Server
) -> None:
    account = make_account(tmp_path, server, mbox="mail/inbox", mode="delete")
    result = await fetch_account(account)
    assert (result.fetched, result.deleted) == (6, 6)
    raw = (tmp_path / "mail" / "inbox").read_bytes()
    assert raw.count(b"\nFrom ") + raw.startswith(b"From ") == 6
    assert b"\n>From the start\n>>From quoted once\n>>>From twice\nFromage\n" in raw
    assert b"From bob@example.org " in raw
    assert not (tmp_path / "mail" / "inbox.lock").exists()
    box = mailbox.mbox(tmp_path / "mail" / "inbox")
    bodies = sorted(unquote(message.as_bytes()) for message in box)
    assert len(bodies) == 6
    assert any(b"From the start\n>From quoted once" in body for body in bodies)
    box.close()


async def test_mbox_append_keeps_what_was_there(tmp_path: Path, server: FakePop3Server) -> None:
    inbox = tmp_path / "inbox"
    inbox.write_bytes(b"From someone Thu Jan  1 00:00:00 1970\nSubject: old\n\nold\n\n")
    account = make_account(tmp_path, server, mbox="inbox")
    await fetch_account(account)
    box = mailbox.mbox(inbox)
    messages = list(box)
    assert len(messages) == 7 and messages[0]["Subject"] == "old"
    box.close()


async def test_mbox_waits_for_the_fcntl_lock(tmp_path: Path, server: FakePop3Server) -> None:
    inbox = tmp_path / "inbox"
    inbox.write_bytes(b"")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"f = open({str(inbox)!r}, 'ab'); fcntl.lockf(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True); time.sleep(1)\n",
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
    account = make_account(tmp_path, server, mbox="inbox")
    result = await fetch_account(account)  # blocks in a worker thread until released
    holder.wait(60)
    assert result.fetched == 6
    with open(inbox, "rb") as file:
        fcntl.lockf(file, fcntl.LOCK_SH | fcntl.LOCK_NB)  # nobody holds it any more


def test_mbox_failure_leaves_no_partial_message(tmp_path: Path) -> None:
    """A write that fails half-way (the file-size limit, as a full disk would) is undone."""
    inbox = tmp_path / "inbox"
    old = b"From a Thu Jan  1 00:00:00 1970\n\nold\n\n"
    inbox.write_bytes(old)
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from postoffice.fetch.spooled import MboxDestination\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "inbox = Path(sys.argv[1])\n"
        "sink = MboxDestination(inbox).begin('u')\n"
        "sink.write(b'Subject: x\\r\\n\\r\\n' + b'y' * 100000)\n"
        "sink.file.flush()\n"
        "limit = inbox.stat().st_size + 1000\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    sink.commit()\n"
        "except OSError as error:\n"
        "    print('failed', error.errno)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(inbox)], capture_output=True, check=True
    )
    assert done.stdout.startswith(b"failed"), done
    assert inbox.read_bytes() == old
    assert not (tmp_path / "inbox.lock").exists()


async def test_mda_gets_whole_messages_with_their_uidl(
    tmp_path: Path, server: FakePop3Server
) -> None:
    (tmp_path / "out").mkdir()
    account = make_account(tmp_path, server, mda='cat > "out/$POSTOFFICE_UIDL"', mode="delete")
    result = await fetch_account(account)
    assert (result.fetched, result.deleted) == (6, 6)
    assert (tmp_path / "out" / "uid-1").read_bytes() == five_messages()[0].data.replace(
        b"\r\n", b"\n"
    )
    assert (tmp_path / "out" / "tricky").read_bytes().endswith(b"no final newline\n")


async def test_mda_never_sees_a_truncated_message(tmp_path: Path, server: FakePop3Server) -> None:
    (tmp_path / "out").mkdir()
    account = make_account(tmp_path, server, mda='cat > "out/$POSTOFFICE_UIDL"')
    server.faults = Faults(drop_inside_retr=3)
    with pytest.raises(Exception, match="inside the reply"):
        await fetch_account(account)
    assert sorted(os.listdir(tmp_path / "out")) == ["uid-1", "uid-2"]
    server.faults = Faults()
    assert (await fetch_account(account)).fetched == 4
    assert len(os.listdir(tmp_path / "out")) == 6


async def test_mda_failure_keeps_the_server_copy(tmp_path: Path, server: FakePop3Server) -> None:
    account = make_account(tmp_path, server, mda="exit 75", mode="delete")
    with pytest.raises(DeliveryFailedError, match="status 75"):
        await fetch_account(account)
    assert len(server.messages) == 6
    assert server.deleted == []


# -- LMTP -----------------------------------------------------------------------------------


@dataclass
class FakeLmtp:
    """A minimal LMTP (RFC 2033) or SMTP server: records what it accepts."""

    data_reply: bytes = b"250 2.0.0 delivered"
    received: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    port: int = 0

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake LMTP\r\n")
        sender = recipient = b""
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"LHLO", b"EHLO"):
                writer.write(b"250-fake\r\n250 PIPELINING\r\n")
            elif verb == b"MAIL":
                sender = line[5:].strip()  # smtplib writes "mail FROM:<...>"
                writer.write(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                recipient = line[5:].strip()
                writer.write(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                body = bytearray()
                while (chunk := await reader.readline()) != b".\r\n":
                    body += chunk[1:] if chunk.startswith(b"..") else chunk
                if self.data_reply.startswith(b"250"):
                    self.received.append((sender, recipient, bytes(body)))
                writer.write(self.data_reply + b"\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"500 what\r\n")
            await writer.drain()
        writer.close()


async def test_lmtp_hands_over_every_message(tmp_path: Path, server: FakePop3Server) -> None:
    lmtp = FakeLmtp()
    listener = await lmtp.start()
    try:
        account = make_account(
            tmp_path, server, lmtp=f"127.0.0.1:{lmtp.port}", recipient="bob", mode="delete"
        )
        result = await fetch_account(account)
    finally:
        listener.close()
    assert (result.fetched, result.deleted) == (6, 6)
    assert len(lmtp.received) == 6
    by_sender = {sender: body for sender, _, body in lmtp.received}
    assert by_sender[b"FROM:<bob@example.org>"].endswith(b"no final newline\r\n")
    assert {recipient for _, recipient, _ in lmtp.received} == {b"TO:<bob>"}
    first = five_messages()[0].data
    assert first in {body for _, _, body in lmtp.received}


async def test_smtp_to_a_local_mta(tmp_path: Path, server: FakePop3Server) -> None:
    mta = FakeLmtp()
    listener = await mta.start()
    try:
        account = make_account(tmp_path, server, smtp=f"127.0.0.1:{mta.port}", recipient="bob")
        result = await fetch_account(account)
    finally:
        listener.close()
    assert result.fetched == 6 and len(mta.received) == 6


async def test_lmtp_temporary_failure_keeps_the_server_copy(
    tmp_path: Path, server: FakePop3Server
) -> None:
    lmtp = FakeLmtp(data_reply=b"452 4.2.2 mailbox full")
    listener = await lmtp.start()
    try:
        account = make_account(tmp_path, server, lmtp=f"127.0.0.1:{lmtp.port}", mode="delete")
        with pytest.raises(DeliveryFailedError, match="452"):
            await fetch_account(account)
    finally:
        listener.close()
    assert len(server.messages) == 6 and lmtp.received == []
