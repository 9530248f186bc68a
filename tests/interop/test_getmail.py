"""getmail6 against the real server: SimplePOP3Retriever into a Maildir, keep and delete.

getmail parses each message and writes it with LF line ends after three header fields
of its own: ``Return-Path: <unknown>``, ``Delivered-To: unknown`` (a POP3 retriever knows
no envelope) and a ``Received:`` field naming the server, its port and the message's
UIDL, folded at 78 characters with two-space continuation lines.

getmail refuses to write a Maildir as root (CI runs as root), so then it runs as
``nobody`` in a private temporary directory of its own instead of the test's tmp_path,
which pytest keeps inside a directory only root may enter.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ServerHarness, require_tool
from tests.interop.common import (
    LATE,
    MESSAGES,
    deliver_all,
    explain,
    local_lf,
    maildir_contents,
    maildir_files,
    make_maildir,
    run_client,
    stat_and_uidls,
    wire,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Workspace:
    """Where getmail's files live, and the user it runs as (None: the current one)."""

    path: Path
    uid: int | None = None
    gid: int | None = None


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    if os.geteuid() != 0:
        yield Workspace(path=tmp_path)
        return
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.fail("running as root, getmail needs the user 'nobody' to deliver as")
    path = Path(tempfile.mkdtemp(prefix="postoffice-getmail-"))
    try:
        yield Workspace(path=path, uid=nobody.pw_uid, gid=nobody.pw_gid)
    finally:
        shutil.rmtree(path)


class Getmail:
    """One getmailrc with its getmail directory (the oldmail state) and a local Maildir."""

    def __init__(self, server: ServerHarness, workspace: Workspace, *, delete: bool) -> None:
        self.workspace = workspace
        home = workspace.path
        self.maildir = make_maildir(home / "Maildir")
        self.state = home / "getmail"
        self.state.mkdir()
        self.rcfile = home / "getmailrc"
        self.rcfile.write_text(
            "[retriever]\n"
            "type = SimplePOP3Retriever\n"  # plain POP3, no TLS
            f"server = {server.host}\n"
            f"port = {server.port}\n"
            "username = alice\n"
            f"password = {server.users['alice']}\n"
            "timeout = 20\n"
            "\n"
            "[destination]\n"
            "type = Maildir\n"
            f"path = {self.maildir}/\n"
            "\n"
            "[options]\n"
            f"delete = {'true' if delete else 'false'}\n"
            "read_all = false\n"  # only messages not seen before
        )
        self.rcfile.chmod(0o600)

    def run(self) -> subprocess.CompletedProcess[bytes]:
        workspace = self.workspace
        if workspace.uid is not None and workspace.gid is not None:
            for directory, _, files in os.walk(workspace.path):
                for name in [directory, *(os.path.join(directory, f) for f in files)]:
                    os.chown(name, workspace.uid, workspace.gid)
        command = [
            require_tool("getmail"),
            "--getmaildir",
            str(self.state),
            "--rcfile",
            str(self.rcfile),
        ]
        return run_client(command, home=workspace.path, user=workspace.uid, group=workspace.gid)

    def oldmail(self, server: ServerHarness) -> list[str]:
        """The UIDLs getmail remembers as seen (lines of ``uid NUL first-seen``)."""
        text = (self.state / f"oldmail-{server.host}-{server.port}-alice").read_text()
        return sorted(line.split("\0")[0] for line in text.splitlines())


def getmail_hostname() -> str:
    """The name getmail puts after "by" (its ``localhostname()``)."""
    name = socket.gethostname()
    return name if "." in name else socket.getfqdn()


def strip_getmail_header(server: ServerHarness, data: bytes) -> tuple[str, bytes]:
    """Check the fields getmail adds exactly; return the UIDL it names and the rest."""
    added = re.match(
        rb"Return-Path: <unknown>\nDelivered-To: unknown\n"
        rb"Received: (?P<value>[^\n]*(?:\n  [^\n]*)*)\n",
        data,
    )
    assert added is not None, data[:400]
    received = added["value"].replace(b"\n  ", b" ").decode("ascii")
    expected = re.escape(
        f"from {server.host} ({server.host}:{server.port}) by {getmail_hostname()} "
        "with POP3 getmail6 msgid:"
    )
    date = r"\d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d -0000"
    match = re.fullmatch(expected + r"(?P<uid>[\x21-\x7e]+); " + date, received)
    assert match is not None, received
    assert all(len(line) <= 78 for line in added[0].split(b"\n")), added[0]
    return match["uid"], data[added.end() :]


def delivered(server: ServerHarness, getmail: Getmail) -> dict[str, bytes]:
    """The local messages by the UIDL in their Received: field, added headers checked."""
    found = [strip_getmail_header(server, data) for data in maildir_contents(getmail.maildir)]
    messages = dict(found)
    assert len(messages) == len(found), "the same UIDL was delivered twice"
    return messages


def retrieved(count: int, octets: int, skipped: int) -> str:
    return f"  {count} messages ({octets} bytes) retrieved, {skipped} skipped\n"


TOTAL = sum(len(wire(m)) for m in MESSAGES)


def test_keep_mode_twice_fetches_nothing_the_second_time(
    pop3_server: ServerHarness, workspace: Workspace
) -> None:
    """With delete = false and read_all = false: N, then nothing, then exactly one late message."""
    deliver_all(pop3_server, MESSAGES)
    _, _, uids = stat_and_uidls(pop3_server)
    getmail = Getmail(pop3_server, workspace, delete=False)

    first = getmail.run()
    assert first.returncode == 0, explain(first)
    assert retrieved(len(MESSAGES), TOTAL, 0) in first.stdout.decode(), explain(first)
    expected = {uid: local_lf(m) for uid, m in zip(uids, MESSAGES, strict=True)}
    assert delivered(pop3_server, getmail) == expected, explain(first)

    second = getmail.run()
    assert second.returncode == 0, explain(second)
    assert retrieved(0, 0, len(MESSAGES)) in second.stdout.decode(), explain(second)
    assert len(maildir_files(getmail.maildir)) == len(MESSAGES)
    assert maildir_contents(pop3_server.maildir("alice")) == sorted(MESSAGES)
    assert getmail.oldmail(pop3_server) == sorted(uids)

    pop3_server.deliver("alice", LATE)
    _, _, uids_now = stat_and_uidls(pop3_server)
    assert uids_now[:-1] == uids
    third = getmail.run()
    assert third.returncode == 0, explain(third)
    assert retrieved(1, len(wire(LATE)), len(MESSAGES)) in third.stdout.decode(), explain(third)
    assert delivered(pop3_server, getmail) == {**expected, uids_now[-1]: local_lf(LATE)}


def test_delete_mode_empties_the_maildrop(pop3_server: ServerHarness, workspace: Workspace) -> None:
    """With delete = true getmail delivers every message and the server maildrop ends empty."""
    deliver_all(pop3_server, MESSAGES)
    _, _, uids = stat_and_uidls(pop3_server)
    getmail = Getmail(pop3_server, workspace, delete=True)
    result = getmail.run()
    assert result.returncode == 0, explain(result)
    assert retrieved(len(MESSAGES), TOTAL, 0) in result.stdout.decode(), explain(result)
    expected = {uid: local_lf(m) for uid, m in zip(uids, MESSAGES, strict=True)}
    assert delivered(pop3_server, getmail) == expected, explain(result)
    assert maildir_files(pop3_server.maildir("alice")) == []
    assert stat_and_uidls(pop3_server) == (0, 0, [])
    again = getmail.run()
    assert again.returncode == 0, explain(again)
    assert retrieved(0, 0, 0) in again.stdout.decode(), explain(again)
    assert len(maildir_files(getmail.maildir)) == len(MESSAGES)
