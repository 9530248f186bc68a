"""fetchmail against the real server, delivering through an MDA that writes each message.

fetchmail talks to the server in lockstep (``LIST n`` then ``TOP n 99999999``, or ``RETR n``
with ``fetchall``), hands each message to the MDA with CRLF turned into LF (``stripcr``
is its default with an MDA), and prepends a Received: header unless ``--invisible``.
``--norewrite`` keeps it from rewriting addresses in the header. Its exit status 1 means
"no new mail".
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ServerHarness, require_tool
from tests.interop.common import (
    LATE,
    MESSAGES,
    deliver_all,
    explain,
    local_lf,
    maildir_contents,
    maildir_files,
    run_client,
    stat_and_uidls,
    wire,
)

#: fetchmail's exit status when there was no mail to fetch (PS_NOMAIL).
NO_MAIL = 1

#: The MDA: each message on stdin goes to the next numbered file, in delivery order.
MDA_SCRIPT = """\
import os
import sys

directory = sys.argv[1]
name = os.path.join(directory, "%04d" % len(os.listdir(directory)))
with open(name, "xb") as output:
    output.write(sys.stdin.buffer.read())
"""


class Fetchmail:
    """One fetchmail poll entry in a tmp dir, with its id file and the MDA's output folder."""

    def __init__(
        self, server: ServerHarness, home: Path, *, keep: bool, fetchall: bool = False
    ) -> None:
        self.home = home
        self.delivered = home / "delivered"
        self.delivered.mkdir()
        self.idfile = home / "fetchids"
        mda = home / "mda.py"
        mda.write_text(MDA_SCRIPT)
        self.config = home / "fetchmailrc"
        self.config.write_text(
            "set no syslog\n"
            "set no bouncemail\n"
            f"poll {server.host} protocol pop3 port {server.port} auth password timeout 20\n"
            f'  user alice password "{server.users["alice"]}"\n'
            "  sslproto ''\n"  # plain POP3: no STLS on loopback
            f"  {'keep' if keep else 'nokeep'} {'fetchall' if fetchall else 'nofetchall'}\n"
            f'  mda "{sys.executable} {mda} {self.delivered}"\n'
        )
        self.config.chmod(0o600)  # fetchmail refuses a run control file others can read

    def run(self, *, invisible: bool = True) -> subprocess.CompletedProcess[bytes]:
        """One poll, verbose (the POP3 dialogue lands in the output for failure messages)."""
        command = [
            require_tool("fetchmail"),
            "--fetchmailrc",
            str(self.config),
            "--idfile",
            str(self.idfile),
            "--uidl",
            "--norewrite",
            "--verbose",
        ]
        if invisible:
            command.append("--invisible")  # no Received: header
        return run_client(command, home=self.home)

    def messages(self) -> list[bytes]:
        """What the MDA received, in delivery order."""
        return [path.read_bytes() for path in sorted(self.delivered.iterdir())]


def summary(count: int, seen: int, octets: int) -> str:
    seen_text = f" ({seen} seen)" if seen else ""
    return f"{count} messages{seen_text} for alice at 127.0.0.1 ({octets} octets).\n"


def output(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode("utf-8", "replace") + result.stderr.decode("utf-8", "replace")


TOTAL = sum(len(wire(m)) for m in MESSAGES)


def test_nokeep_delivers_every_message_then_deletes_it(
    pop3_server: ServerHarness, tmp_path: Path
) -> None:
    """Without keep, the MDA gets each message as LF text, and the server maildrop ends empty."""
    deliver_all(pop3_server, MESSAGES)
    fetchmail = Fetchmail(pop3_server, tmp_path, keep=False)
    result = fetchmail.run()
    assert result.returncode == 0, explain(result)
    assert summary(len(MESSAGES), 0, TOTAL) in output(result), explain(result)
    assert fetchmail.messages() == [local_lf(m) for m in MESSAGES], explain(result)
    assert len(re.findall(r"POP3> DELE \d+\n", output(result))) == len(MESSAGES)
    assert maildir_files(pop3_server.maildir("alice")) == []
    assert stat_and_uidls(pop3_server) == (0, 0, [])


def test_keep_with_uidl_twice_fetches_nothing_the_second_time(
    pop3_server: ServerHarness, tmp_path: Path
) -> None:
    """`--keep --uidl` fetches N, then nothing (exit 1), then exactly one late message."""
    deliver_all(pop3_server, MESSAGES)
    fetchmail = Fetchmail(pop3_server, tmp_path, keep=True)

    first = fetchmail.run()
    assert first.returncode == 0, explain(first)
    assert fetchmail.messages() == [local_lf(m) for m in MESSAGES], explain(first)

    second = fetchmail.run()
    assert second.returncode == NO_MAIL, explain(second)
    count = len(MESSAGES)
    assert summary(count, count, TOTAL) in output(second), explain(second)
    assert len(fetchmail.messages()) == count
    assert "DELE" not in output(first) + output(second)
    assert maildir_contents(pop3_server.maildir("alice")) == sorted(MESSAGES)
    _, _, uids = stat_and_uidls(pop3_server)
    assert fetchmail.idfile.read_text().splitlines() == [f"alice@127.0.0.1 {uid}" for uid in uids]

    pop3_server.deliver("alice", LATE)
    third = fetchmail.run()
    assert third.returncode == 0, explain(third)
    assert summary(count + 1, count, TOTAL + len(wire(LATE))) in output(third), explain(third)
    assert fetchmail.messages() == [*(local_lf(m) for m in MESSAGES), local_lf(LATE)]


def test_keep_fetchall_retrieves_everything_every_time(
    pop3_server: ServerHarness, tmp_path: Path
) -> None:
    """`--keep --fetchall` uses RETR and fetches all messages on every poll, deleting none."""
    deliver_all(pop3_server, MESSAGES)
    fetchmail = Fetchmail(pop3_server, tmp_path, keep=True, fetchall=True)
    for poll in (1, 2):
        result = fetchmail.run()
        assert result.returncode == 0, explain(result)
        assert len(re.findall(r"POP3> RETR \d+\n", output(result))) == len(MESSAGES)
        assert fetchmail.messages() == [local_lf(m) for m in MESSAGES] * poll, explain(result)
    assert maildir_contents(pop3_server.maildir("alice")) == sorted(MESSAGES)


def test_received_header_is_the_only_addition(pop3_server: ServerHarness, tmp_path: Path) -> None:
    """Without --invisible, each message is fetchmail's Received: header then the message."""
    deliver_all(pop3_server, MESSAGES)
    fetchmail = Fetchmail(pop3_server, tmp_path, keep=False)
    result = fetchmail.run(invisible=False)
    assert result.returncode == 0, explain(result)
    version = re.search(r"fetchmail: (\d+\.\d+\.\d+) querying", output(result))
    assert version is not None, explain(result)
    local_user = pwd.getpwuid(os.getuid()).pw_name  # fetchmail's own idea, not $USER
    header = re.compile(
        rb"Received: from 127\.0\.0\.1 \[127\.0\.0\.1\]\n"
        rb"\tby \S+ with POP3 \(fetchmail-" + re.escape(version[1].encode()) + rb"\)\n"
        rb"\tfor <" + re.escape(local_user.encode()) + rb"@[^\s<>]+> \(single-drop\); "
        rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
        rb" \d{4} \d\d:\d\d:\d\d \+0000 \(UTC\)\n"
    )
    for data, message in zip(fetchmail.messages(), MESSAGES, strict=True):
        match = header.match(data)
        assert match is not None, data[:300]
        assert data[match.end() :] == local_lf(message)
