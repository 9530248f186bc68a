"""The LMTP listener with real clients: smtplib.LMTP, swaks, raw pipelined bytes, POP3.

Every server here is a real ``Pop3Server`` on loopback (``harness``), LMTP on port 0.
"""

from __future__ import annotations

import errno
import os
import poplib
import smtplib
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from postoffice.delivery import lmtp as lmtp_module
from postoffice.delivery import maildir as maildir_delivery
from postoffice.storage.maildir import MaildirMaildrop
from postoffice.storage.wire import wire_size
from tests.conftest import ServerHarness, require_tool

MESSAGE = b"From: sender@example.org\r\nSubject: hello\r\n\r\nbody\r\n.dot line\r\n"
STORED = b"From: sender@example.org\nSubject: hello\n\nbody\n.dot line\n"


@pytest.fixture
def server(harness: ServerHarness) -> ServerHarness:
    harness.add_user("alice", "secret")
    harness.add_user("bob", "hunter2")
    harness.start()
    return harness


@pytest.fixture
def client(server: ServerHarness) -> Iterator[smtplib.LMTP]:
    connection = smtplib.LMTP(server.host, server.lmtp_port, timeout=10)
    connection.ehlo("mta.example.org")
    try:
        yield connection
    finally:
        connection.close()


def stored(server: ServerHarness, user: str) -> list[bytes]:
    """Every message in the user's maildrop, oldest first (new/ only: nobody read them)."""
    new = server.maildir(user) / "new"
    return [path.read_bytes() for path in sorted(new.iterdir())] if new.is_dir() else []


def headers(recipient: str, sender: str = "<sender@example.org>") -> bytes:
    return f"Return-Path: {sender}\nDelivered-To: {recipient}\n".encode()


def transaction(
    client: smtplib.LMTP,
    recipients: list[str],
    data: bytes = MESSAGE,
    sender: str = "sender@example.org",
) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """MAIL, RCPT each, DATA; the RCPT replies and one DATA reply per accepted recipient."""
    assert client.mail(sender)[0] == 250
    rcpt = [client.rcpt(address) for address in recipients]
    accepted = sum(1 for code, _ in rcpt if code == 250)
    if not accepted:
        client.rset()
        return rcpt, []
    replies = [client.data(data)]
    replies.extend(client.getreply() for _ in range(accepted - 1))
    return rcpt, replies


def test_lhlo_announces_what_rfc_2033_requires(client: smtplib.LMTP) -> None:
    """PIPELINING and ENHANCEDSTATUSCODES (RFC 2033 §5), SIZE from lmtp.max_message_size."""
    features = client.esmtp_features
    assert "pipelining" in features
    assert "enhancedstatuscodes" in features
    assert features["size"] == "50000000"
    assert "8bitmime" in features


def test_one_reply_per_recipient_after_data(server: ServerHarness, client: smtplib.LMTP) -> None:
    """Unknown users get 550 at RCPT; each accepted recipient gets its own 250 after DATA."""
    rcpt, replies = transaction(client, ["alice@example.org", "ghost@example.org", "bob"])
    assert [code for code, _ in rcpt] == [250, 550, 250]
    assert rcpt[1][1] == b"5.1.1 <ghost@example.org> no such user"
    assert replies == [
        (250, b"2.0.0 <alice@example.org> delivered"),
        (250, b"2.0.0 <bob> delivered"),
    ]
    assert stored(server, "alice") == [headers("alice@example.org") + STORED]
    assert stored(server, "bob") == [headers("bob") + STORED]
    assert client.noop()[0] == 250  # the dialogue is still in step


def test_delivered_file_carries_its_pop3_size(server: ServerHarness, client: smtplib.LMTP) -> None:
    """The name records S= and W= so a POP3 login never reads the file for its size."""
    transaction(client, ["alice"])
    [path] = (server.maildir("alice") / "new").iterdir()
    data = path.read_bytes()
    assert path.name.endswith(f",S={len(data)},W={wire_size(data)}")
    [message] = MaildirMaildrop(server.maildir("alice")).snapshot()
    assert message.size == wire_size(data)
    assert os.listdir(server.maildir("alice") / "tmp") == []


def test_two_addresses_of_one_user_get_one_copy(
    server: ServerHarness, client: smtplib.LMTP
) -> None:
    """alice and alice+tag@... are one maildrop: one file, two 250 replies."""
    _, replies = transaction(client, ["alice", "alice+lists@example.org"])
    assert [code for code, _ in replies] == [250, 250]
    assert stored(server, "alice") == [headers("alice") + STORED]


def test_null_sender_gets_an_empty_return_path(server: ServerHarness, client: smtplib.LMTP) -> None:
    """A bounce (MAIL FROM:<>) is delivered with ``Return-Path: <>``."""
    _, replies = transaction(client, ["alice"], sender="<>")
    assert replies[0][0] == 250
    assert stored(server, "alice") == [headers("alice", "<>") + STORED]


def test_many_messages_on_one_connection(server: ServerHarness, client: smtplib.LMTP) -> None:
    """An MTA reuses its connection: fifty transactions, fifty files, in order."""
    for number in range(50):
        refused = client.sendmail("s@example.org", ["bob"], b"Subject: %d\r\n\r\nx\r\n" % number)
        assert refused == {}
    subjects = [data.split(b"\n")[2] for data in stored(server, "bob")]
    assert sorted(subjects) == sorted(b"Subject: %d" % n for n in range(50))


def test_swaks(server: ServerHarness, tmp_path: Path) -> None:
    """swaks --protocol LMTP: 250 for each known recipient after DATA, 550 for the unknown."""
    swaks = require_tool("swaks")
    result = subprocess.run(
        [
            swaks,
            "--protocol",
            "LMTP",
            "--server",
            f"{server.host}:{server.lmtp_port}",
            "--from",
            "sender@example.org",
            "--to",
            "alice@example.org,ghost@example.org,bob@example.org",
            "--header",
            "Subject: from swaks",
            "--body",
            "hello from swaks",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "<** 550 5.1.1 <ghost@example.org> no such user" in lines
    assert "<-  250 2.0.0 <alice@example.org> delivered" in lines
    assert "<-  250 2.0.0 <bob@example.org> delivered" in lines
    assert b"hello from swaks" in stored(server, "alice")[0]
    assert b"Subject: from swaks\n" in stored(server, "bob")[0]


def test_swaks_fails_when_no_recipient_is_known(server: ServerHarness) -> None:
    swaks = require_tool("swaks")
    result = subprocess.run(
        [
            *(swaks, "--protocol", "LMTP", "--server", f"{server.host}:{server.lmtp_port}"),
            *("--from", "s@example.org", "--to", "ghost@example.org"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "550 5.1.1" in result.stdout


def raw_session(server: ServerHarness, script: bytes, replies: int) -> list[bytes]:
    """Send ``script`` in one write (pipelined) and read ``replies`` complete replies."""
    with socket.create_connection((server.host, server.lmtp_port), timeout=10) as sock:
        stream = sock.makefile("rb")
        assert stream.readline().startswith(b"220 ")
        sock.sendall(script)
        lines: list[bytes] = []
        while len(lines) < replies:
            line = stream.readline()
            assert line, f"connection closed after {lines}"
            if line[3:4] == b" ":
                lines.append(line.rstrip(b"\r\n"))
        return lines


def test_pipelined_transaction(server: ServerHarness) -> None:
    """The whole transaction in one write: replies come in order, one per command."""
    script = (
        b"LHLO mta\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<alice>\r\nRCPT TO:<ghost>\r\n"
        b"RCPT TO:<bob>\r\nDATA\r\nSubject: p\r\n\r\npipelined\r\n.\r\nQUIT\r\n"
    )
    lines = raw_session(server, script, 8)
    assert [line[:3] for line in lines] == [
        b"250",
        b"250",
        b"250",
        b"550",
        b"250",
        b"354",
        b"250",
        b"250",
    ]
    assert lines[6:] == [b"250 2.0.0 <alice> delivered", b"250 2.0.0 <bob> delivered"]


def test_oversized_message_gets_one_552_per_recipient(harness: ServerHarness) -> None:
    """Data beyond lmtp.max_message_size: 552 5.3.4 for each recipient, nothing stored."""
    harness.add_user("alice", "secret")
    harness.add_user("bob", "hunter2")
    harness.start(lmtp={"max_message_size": "1KB"})
    big = b"Subject: big\r\n\r\n" + (b"y" * 70 + b"\r\n") * 40
    script = (
        b"LHLO mta\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<alice>\r\nRCPT TO:<bob>\r\n"
        b"DATA\r\n" + big + b"\r\n.\r\nNOOP\r\n"
    )
    lines = raw_session(harness, script, 7)
    assert lines[4].startswith(b"354")
    assert lines[5:7] == [b"552 5.3.4 message too big for system"] * 2
    assert stored(harness, "alice") == stored(harness, "bob") == []


def test_announced_size_over_the_limit_is_refused_at_mail(harness: ServerHarness) -> None:
    harness.add_user("alice", "secret")
    harness.start(lmtp={"max_message_size": "1KB"})
    with smtplib.LMTP(harness.host, harness.lmtp_port, timeout=10) as client:
        client.ehlo("mta")
        assert client.esmtp_features["size"] == "1000"
        code, _ = client.mail("s@example.org", ["SIZE=5000"])
        assert code == 552


def test_quota_552_at_data_then_at_rcpt(harness: ServerHarness) -> None:
    """A message that would exceed the quota gets 552 5.2.2; a full mailbox too, at RCPT."""
    harness.add_user("alice", "secret")
    harness.start(mail={"quota": 178})
    with smtplib.LMTP(harness.host, harness.lmtp_port, timeout=10) as client:
        client.ehlo("mta")
        _, replies = transaction(client, ["alice"])  # 110 octets stored
        assert replies[0][0] == 250
        _, replies = transaction(client, ["alice"])  # would make 220 > 178
        assert replies == [(552, b"5.2.2 <alice> mailbox full")]
        small = b"Subject: s\r\n\r\nx\r\n"
        _, replies = transaction(client, ["alice"], small)  # 68 more: 178, just fits
        assert replies[0][0] == 250
        rcpt, _ = transaction(client, ["alice"], small)
        assert rcpt == [(552, b"5.2.2 <alice> mailbox full")]
    assert len(stored(harness, "alice")) == 2


def test_per_user_quota_from_the_passwd_file(harness: ServerHarness) -> None:
    """``userdb_quota_rule=*:storage=<size>`` overrides mail.quota for that user."""
    harness.passwd.parent.mkdir(parents=True, exist_ok=True)
    harness.passwd.write_text(
        "alice:{PLAIN}secret::::::userdb_quota_rule=*:storage=100B\nbob:{PLAIN}x\n"
    )
    harness.start(mail={"quota": "1MB"})
    with smtplib.LMTP(harness.host, harness.lmtp_port, timeout=10) as client:
        client.ehlo("mta")
        _, replies = transaction(client, ["alice", "bob"])
        assert [code for code, _ in replies] == [552, 250]


@pytest.mark.parametrize(
    ("failing", "code", "reply"),
    [
        ("write", errno.ENOSPC, b"452 4.3.1"),
        ("fsync", errno.EIO, b"451 4.3.0"),
        ("rename", errno.EIO, b"451 4.3.0"),
        ("write", errno.EDQUOT, b"452 4.2.2"),
    ],
)
def test_storage_errors_are_temporary_and_leave_nothing(
    server: ServerHarness,
    monkeypatch: pytest.MonkeyPatch,
    failing: str,
    code: int,
    reply: bytes,
) -> None:
    """Disk full or an I/O error: a 4xx for the recipient, nothing in new/ or tmp/; the
    MTA's retry then delivers exactly one copy."""

    def fail(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    if failing == "write":
        monkeypatch.setattr(maildir_delivery, "_write_all", fail)
    else:
        monkeypatch.setattr(os, failing, fail)
    script = (
        b"LHLO mta\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\nSubject: f\r\n\r\nx\r\n.\r\n"
    )
    lines = raw_session(server, script, 5)
    monkeypatch.undo()
    assert lines[4].startswith(reply), lines
    md = server.maildir("alice")
    assert os.listdir(md / "new") == []
    assert os.listdir(md / "tmp") == []
    lines = raw_session(server, script, 5)
    assert lines[4] == b"250 2.0.0 <alice> delivered"
    assert len(os.listdir(md / "new")) == 1


def test_user_database_trouble_is_temporary(harness: ServerHarness) -> None:
    """An unreadable passwd-file gives 451 at RCPT, so the MTA keeps the mail."""
    harness.passwd.mkdir(parents=True)  # a directory where the file should be
    harness.start()
    with smtplib.LMTP(harness.host, harness.lmtp_port, timeout=10) as client:
        client.ehlo("mta")
        client.mail("s@example.org")
        code, text = client.rcpt("alice")
        assert (code, text[:5]) == (451, b"4.3.0")


def test_too_many_recipients(server: ServerHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lmtp_module, "MAX_RECIPIENTS", 2)
    lines = raw_session(
        server,
        b"LHLO m\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nRCPT TO:<bob>\r\nRCPT TO:<alice>\r\n",
        5,
    )
    assert lines[4] == b"452 4.5.3 too many recipients"


def test_mail_delivered_during_a_pop3_session_appears_in_the_next(
    server: ServerHarness, client: smtplib.LMTP
) -> None:
    """A session's numbers stay fixed; DELE of everything plus QUIT keeps the newcomer."""
    transaction(client, ["alice"], b"Subject: first\r\n\r\n1\r\n")
    pop = poplib.POP3(server.host, server.port, timeout=10)
    pop.user("alice")
    pop.pass_("secret")
    assert pop.stat()[0] == 1
    _, replies = transaction(client, ["alice"], b"Subject: second\r\n\r\n2\r\n")
    assert replies[0][0] == 250
    assert pop.stat()[0] == 1
    assert b"Subject: first" in b"\n".join(pop.retr(1)[1])
    pop.dele(1)
    pop.quit()
    pop = poplib.POP3(server.host, server.port, timeout=10)
    pop.user("alice")
    pop.pass_("secret")
    count, _ = pop.stat()
    lines = pop.retr(1)[1]
    pop.quit()
    assert count == 1
    assert b"Subject: second" in lines


def test_unix_socket_listener(harness: ServerHarness, tmp_path: Path) -> None:
    """``unix:path`` listens on a socket (mode 0666) and replaces a stale one on restart."""
    harness.add_user("alice", "secret")
    harness.start(lmtp={"listen": ["unix:var/lmtp.sock"]})
    path = tmp_path / "var" / "lmtp.sock"
    assert harness.server is not None
    assert harness.server.lmtp_addresses == [str(path)]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
    with smtplib.LMTP(str(path), timeout=10) as client:
        client.ehlo("mta")
        assert client.sendmail("s@example.org", ["alice"], MESSAGE) == {}
    harness.stop()
    assert path.exists()  # left behind, as after a crash
    harness.start(lmtp={"listen": ["unix:var/lmtp.sock"]})
    with smtplib.LMTP(str(path), timeout=10) as client:
        client.ehlo("mta")
        assert client.sendmail("s@example.org", ["alice"], MESSAGE) == {}
    assert len(stored(harness, "alice")) == 2


def test_live_unix_socket_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "lmtp.sock"
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    holder.bind(str(path))
    holder.listen()
    try:
        with pytest.raises(OSError, match="another server"):
            lmtp_module._bind_unix(path)
    finally:
        holder.close()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="not a socket"):
        lmtp_module._bind_unix(tmp_path / "file")


def test_lmtp_can_be_switched_off(harness: ServerHarness) -> None:
    harness.start(lmtp={"listen": []})
    assert harness.server is not None
    assert harness.server.lmtp_addresses == []
    assert harness.lmtp_port == 0


def test_startup_log_names_the_lmtp_address(
    harness: ServerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="postoffice.server.app")
    harness.start()
    assert f"LMTP listening on 127.0.0.1:{harness.lmtp_port}" in caplog.messages


def test_control_characters_in_addresses_never_reach_a_header(server: ServerHarness) -> None:
    """A bare CR in a recipient or sender address is not copied into the stored headers."""
    script = (
        b"LHLO mta\r\nMAIL FROM:<s\x7fx@example.org>\r\nRCPT TO:<alice+a\rb@example.org>\r\n"
        b"DATA\r\nSubject: c\r\n\r\nx\r\n.\r\n"
    )
    lines = raw_session(server, script, 5)
    assert all(b"\r" not in line for line in lines)
    for data in stored(server, "alice"):
        head = data.split(b"\n\n")[0]
        assert b"\r" not in head and b"\x7f" not in head
