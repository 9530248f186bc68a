"""mpop against the real server: delete mode, keep mode with its UIDLs file, status only.

mpop pipelines when the server advertises PIPELINING (RETR and DELE in batches) and
stores each message in the Maildir with LF line ends, after a Received: header of its
own unless ``received_header off``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import ServerHarness, require_tool
from tests.interop.common import (
    LATE,
    LOCAL_USER,
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


class Mpop:
    """One mpop account in a tmp dir: its config, its UIDLs file and its local Maildir."""

    def __init__(self, server: ServerHarness, home: Path, *, received_header: bool = False) -> None:
        self.home = home
        self.maildir = make_maildir(home / "Maildir")
        self.uidls = home / "uidls"
        self.config = home / "mpoprc"
        self.config.write_text(
            "defaults\n"
            "tls off\n"
            "auth user\n"
            "timeout 20\n"
            f"received_header {'on' if received_header else 'off'}\n"
            "account default\n"
            f"host {server.host}\n"
            f"port {server.port}\n"
            "user alice\n"
            f"password {server.users['alice']}\n"
            f"delivery maildir {self.maildir}\n"
            f"uidls_file {self.uidls}\n"
        )
        self.config.chmod(0o600)  # mpop refuses a readable file that holds a password

    def run(self, *options: str) -> subprocess.CompletedProcess[bytes]:
        """Run mpop with ``--half-quiet`` (status lines, no progress meter)."""
        command = [require_tool("mpop"), "--file", str(self.config), "--half-quiet"]
        return run_client([*command, *options], home=self.home)


def human_size(octets: int) -> str:
    """mpop's way of printing a size: whole bytes, or KiB/MiB/GiB with two decimals."""
    for exponent, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if octets >= 1024**exponent:
            return f"{octets / 1024**exponent:.2f} {unit}"
    return f"{octets} bytes"


def status_line(new: list[bytes], total: list[bytes]) -> str:
    """mpop's summary line for an account, from the messages it counts as new and in total."""

    def count(messages: list[bytes]) -> str:
        noun = "message" if len(messages) == 1 else "messages"
        return f"{len(messages)} {noun} in {human_size(sum(len(wire(m)) for m in messages))}"

    if not total:
        return "no messages"
    return f"new: {count(new) if new else 'no messages'}, total: {count(total)}"


def assert_output(result: subprocess.CompletedProcess[bytes], summary: str) -> None:
    assert result.returncode == 0, explain(result)
    assert result.stdout.decode() == f"alice at 127.0.0.1:\n{summary}\n", explain(result)


def test_delete_mode_moves_every_message_and_empties_the_maildrop(
    pop3_server: ServerHarness, tmp_path: Path
) -> None:
    """Without keep, mpop delivers all messages (CRLF turned into LF), then DELEs them."""
    deliver_all(pop3_server, MESSAGES)
    mpop = Mpop(pop3_server, tmp_path)
    messages = list(MESSAGES)
    assert_output(mpop.run(), status_line(messages, messages))
    assert maildir_contents(mpop.maildir) == sorted(local_lf(m) for m in MESSAGES)
    assert maildir_files(pop3_server.maildir("alice")) == []
    assert stat_and_uidls(pop3_server) == (0, 0, [])
    assert_output(mpop.run(), "no messages")


def test_keep_mode_twice_fetches_nothing_the_second_time(
    pop3_server: ServerHarness, tmp_path: Path
) -> None:
    """`mpop --keep` fetches N, then nothing, then exactly the one message delivered since."""
    deliver_all(pop3_server, MESSAGES)
    mpop = Mpop(pop3_server, tmp_path)
    messages = list(MESSAGES)
    _, _, uids = stat_and_uidls(pop3_server)

    assert_output(mpop.run("--keep"), status_line(messages, messages))
    assert maildir_contents(mpop.maildir) == sorted(local_lf(m) for m in MESSAGES)
    assert_output(mpop.run("--keep"), status_line([], messages))
    assert len(maildir_files(mpop.maildir)) == len(MESSAGES)
    # The server still has every message, and mpop remembers exactly their UIDLs.
    assert maildir_contents(pop3_server.maildir("alice")) == sorted(MESSAGES)
    remembered = mpop.uidls.read_text().splitlines()
    assert f" {len(uids)} 127.0.0.1 alice" in remembered
    assert remembered[remembered.index(f" {len(uids)} 127.0.0.1 alice") + 1 :] == sorted(uids)

    pop3_server.deliver("alice", LATE)
    before = set(maildir_files(mpop.maildir))
    assert_output(mpop.run("--keep"), status_line([LATE], [*messages, LATE]))
    added = [path.read_bytes() for path in set(maildir_files(mpop.maildir)) - before]
    assert added == [local_lf(LATE)]


def test_delete_after_keep_deletes_the_seen_messages_without_fetching_them(
    pop3_server: ServerHarness, tmp_path: Path
) -> None:
    """A run without keep after a keep run DELEs the already fetched messages, no duplicates."""
    deliver_all(pop3_server, MESSAGES)
    mpop = Mpop(pop3_server, tmp_path)
    messages = list(MESSAGES)
    assert_output(mpop.run("--keep"), status_line(messages, messages))
    assert_output(mpop.run(), status_line([], messages))
    assert maildir_contents(mpop.maildir) == sorted(local_lf(m) for m in MESSAGES)
    assert maildir_files(pop3_server.maildir("alice")) == []


def test_status_only_shows_count_and_size_and_fetches_nothing(
    pop3_server: ServerHarness, tmp_path: Path
) -> None:
    """`mpop --status-only` reports the server's count and total octets, and changes nothing."""
    deliver_all(pop3_server, MESSAGES)
    mpop = Mpop(pop3_server, tmp_path)
    messages = list(MESSAGES)
    count, octets, _ = stat_and_uidls(pop3_server)
    assert (count, octets) == (len(MESSAGES), sum(len(wire(m)) for m in MESSAGES))
    assert_output(mpop.run("--status-only"), status_line(messages, messages))
    assert maildir_files(mpop.maildir) == []
    assert maildir_contents(pop3_server.maildir("alice")) == sorted(MESSAGES)


def test_received_header_is_the_only_addition(pop3_server: ServerHarness, tmp_path: Path) -> None:
    """With its default Received: header, mpop's file is that header followed by the message."""
    deliver_all(pop3_server, MESSAGES)
    mpop = Mpop(pop3_server, tmp_path, received_header=True)
    version = run_client([require_tool("mpop"), "--version"], home=tmp_path).stdout.split()[2]
    result = mpop.run()
    assert result.returncode == 0, explain(result)
    header = re.compile(
        rb"Received: from 127\.0\.0\.1 \([^\s()]+ \[127\.0\.0\.1\]\)\n"
        rb"\tby [^\s()]+ \(mpop-" + re.escape(version) + rb"\) with POP3\n"
        rb"\tfor <" + LOCAL_USER.encode() + rb">; "
        rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
        rb" \d{4} \d\d:\d\d:\d\d [+-]\d{4}\n"
    )
    stripped = []
    for data in maildir_contents(mpop.maildir):
        match = header.match(data)
        assert match is not None, data[:300]
        stripped.append(data[match.end() :])
    assert sorted(stripped) == sorted(local_lf(m) for m in MESSAGES)
