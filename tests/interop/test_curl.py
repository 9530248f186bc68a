"""curl's POP3 support against the real server: LIST, RETR, DELE, UIDL, TOP and a bad login.

curl prints a multi-line reply's lines with their CRLF, without the dot-stuffing and
without the terminating ``.`` line; a single-line reply (``-I``) prints nothing. It logs
in with USER/PASS, or with SASL (``AUTH PLAIN``, then the credentials after the server's
``+`` continuation, RFC 5034) when CAPA advertises it; it has no option to prefer USER.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ServerHarness, require_tool
from tests.interop.common import (
    MESSAGES,
    deliver_all,
    explain,
    maildir_contents,
    run_client,
    stat_and_uidls,
    wire,
)

#: curl's exit code for "the remote server denied curl to login" (CURLE_LOGIN_DENIED).
LOGIN_DENIED = 67


def curl(
    server: ServerHarness, home: Path, *args: str, password: str | None = None
) -> tuple[int, bytes, str]:
    """Run curl as alice (``-q`` first: no ~/.curlrc), returning status, stdout, all output."""
    secret = server.users["alice"] if password is None else password
    result = run_client(
        [
            require_tool("curl"),
            "-q",
            "--silent",
            "--show-error",
            "--verbose",
            "--max-time",
            "20",
            "--user",
            f"alice:{secret}",
            *args,
        ],
        home=home,
    )
    return result.returncode, result.stdout, explain(result)


def url(server: ServerHarness, path: str = "") -> str:
    return f"pop3://{server.host}:{server.port}/{path}"


def test_list_prints_the_exact_wire_sizes(pop3_server: ServerHarness, tmp_path: Path) -> None:
    """`curl pop3://host/` sends LIST, and every size is the CRLF octet count RETR sends."""
    deliver_all(pop3_server, MESSAGES)
    status, out, log = curl(pop3_server, tmp_path, url(pop3_server))
    assert status == 0, log
    expected = b"".join(b"%d %d\r\n" % (n, len(wire(m))) for n, m in enumerate(MESSAGES, 1))
    assert out == expected, log


def test_retr_prints_each_message_as_sent_on_one_connection(
    pop3_server: ServerHarness, tmp_path: Path
) -> None:
    """`curl pop3://host/N` retrieves message N: the delivered bytes with every line in CRLF."""
    deliver_all(pop3_server, MESSAGES)
    outputs = [tmp_path / f"message-{n}" for n in range(1, len(MESSAGES) + 1)]
    args: list[str] = []
    for n, output in enumerate(outputs, 1):  # several URLs: curl reuses the connection
        args += [url(pop3_server, str(n)), "--output", str(output)]
    status, _, log = curl(pop3_server, tmp_path, *args)
    assert status == 0, log
    for output, message in zip(outputs, MESSAGES, strict=True):
        assert output.read_bytes() == wire(message), log
    # RETR and QUIT delete nothing.
    assert maildir_contents(pop3_server.maildir("alice")) == sorted(MESSAGES)


@pytest.mark.parametrize(
    ("arguments", "path"),
    [(["--request", "DELE 2", "--head"], ""), (["-X", "DELE", "-I"], "2")],
    ids=["DELE-2-on-the-maildrop-url", "DELE-on-the-message-url"],
)
def test_dele_removes_the_message_after_curls_quit(
    pop3_server: ServerHarness, tmp_path: Path, arguments: list[str], path: str
) -> None:
    """A custom DELE with ``-I`` (no body expected) is committed by curl's QUIT."""
    deliver_all(pop3_server, MESSAGES)
    status, out, log = curl(pop3_server, tmp_path, *arguments, url(pop3_server, path))
    assert status == 0, log
    assert out == b"", log
    assert "> DELE 2" in log
    assert "< +OK" in log.split("> DELE 2", 1)[1]
    # A second connection sees three messages, renumbered, and message 2 is gone from disk.
    status, out, log = curl(pop3_server, tmp_path, url(pop3_server))
    assert status == 0, log
    remaining = [MESSAGES[0], *MESSAGES[2:]]
    expected = b"".join(b"%d %d\r\n" % (n, len(wire(m))) for n, m in enumerate(remaining, 1))
    assert out == expected, log
    assert maildir_contents(pop3_server.maildir("alice")) == sorted(remaining)


def test_uidl_lists_the_same_stable_ids_as_poplib(
    pop3_server: ServerHarness, tmp_path: Path
) -> None:
    """`-X UIDL` prints one "N uid" line per message; the ids survive a RETR (new/ to cur/)."""
    deliver_all(pop3_server, MESSAGES)
    _, _, uids = stat_and_uidls(pop3_server)
    expected = b"".join(b"%d %s\r\n" % (n, uid.encode()) for n, uid in enumerate(uids, 1))
    status, out, log = curl(pop3_server, tmp_path, "-X", "UIDL", url(pop3_server))
    assert status == 0, log
    assert out == expected, log
    assert len(set(uids)) == len(MESSAGES)
    assert all(re.fullmatch(r"[\x21-\x7e]{1,70}", uid) for uid in uids)
    status, _, log = curl(pop3_server, tmp_path, url(pop3_server, "1"), "--output", "/dev/null")
    assert status == 0, log
    status, out, log = curl(pop3_server, tmp_path, "-X", "UIDL", url(pop3_server))
    assert status == 0, log
    assert out == expected, log


@pytest.mark.parametrize(
    ("number", "lines"), [(1, 0), (1, 4), (2, 0), (2, 2), (3, 1), (4, 3)], ids=str
)
def test_top_prints_the_header_and_n_body_lines(
    pop3_server: ServerHarness, tmp_path: Path, number: int, lines: int
) -> None:
    """`-X 'TOP n k'` prints the header, the blank line and k body lines, un-dot-stuffed."""
    deliver_all(pop3_server, MESSAGES)
    status, out, log = curl(pop3_server, tmp_path, "-X", f"TOP {number} {lines}", url(pop3_server))
    assert status == 0, log
    header, body = wire(MESSAGES[number - 1]).split(b"\r\n\r\n", 1)
    expected = header + b"\r\n\r\n" + b"".join(body.splitlines(keepends=True)[:lines])
    assert out == expected, log


def test_wrong_password_is_login_denied(pop3_server: ServerHarness, tmp_path: Path) -> None:
    """A wrong password makes curl exit with CURLE_LOGIN_DENIED and print nothing."""
    deliver_all(pop3_server, MESSAGES)
    status, out, log = curl(pop3_server, tmp_path, url(pop3_server), password="wrong")
    assert status == LOGIN_DENIED, log
    assert out == b"", log
    assert "< -ERR [AUTH] authentication failed" in log
    # The right password still works afterwards, and nothing was touched.
    status, out, log = curl(pop3_server, tmp_path, url(pop3_server))
    assert status == 0, log
    assert out.count(b"\r\n") == len(MESSAGES), log
