"""The real server on a loopback port, driven by Python's poplib and raw sockets."""

from __future__ import annotations

import poplib
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerHarness

MESSAGE = (
    b"From: sender@example.org\nTo: alice@example.org\nSubject: hello\n\n"
    b"Line one.\n.Line starting with a dot.\n..two dots\n\nLast line.\n"
)
CRLF_MESSAGE = b"From: x@example.org\r\nSubject: crlf\r\n\r\nbody\r\n"


def client(server: ServerHarness, user: str = "alice") -> poplib.POP3:
    pop = poplib.POP3(server.host, server.port, timeout=10)
    pop.user(user)
    pop.pass_(server.users[user])
    return pop


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def maildir_files(maildir: Path) -> list[str]:
    return sorted(p.name for sub in ("new", "cur") for p in (maildir / sub).iterdir())


def test_poplib_reads_exactly_what_was_delivered(pop3_server: ServerHarness) -> None:
    pop3_server.deliver("alice", MESSAGE)
    pop3_server.deliver("alice", CRLF_MESSAGE)
    pop = client(pop3_server)
    count, octets = pop.stat()
    assert count == 2
    response, listing, _ = pop.list()
    sizes = [int(line.split()[1]) for line in listing]
    assert sum(sizes) == octets
    for number, original in ((1, MESSAGE), (2, CRLF_MESSAGE)):
        response, lines, received = pop.retr(number)
        assert response == b"+OK %d octets" % sizes[number - 1]
        # poplib strips CRLF and undoes dot-stuffing; it counts line + CRLF per line.
        assert lines == original.replace(b"\r\n", b"\n").rstrip(b"\n").split(b"\n")
        assert received == sizes[number - 1]
    pop.quit()


def test_uidl_is_stable_across_sessions_and_moves(pop3_server: ServerHarness) -> None:
    pop3_server.deliver("alice", MESSAGE)
    pop = client(pop3_server)
    first = pop.uidl()[1]
    pop.retr(1)  # moves the message to cur/ with the S flag at QUIT
    pop.quit()
    assert [name.split(":")[1] for name in maildir_files(pop3_server.maildir("alice"))] == ["2,S"]
    pop = client(pop3_server)
    assert pop.uidl()[1] == first
    pop.quit()


def test_dele_then_quit_removes_only_marked_messages(pop3_server: ServerHarness) -> None:
    for index in range(3):
        pop3_server.deliver("alice", MESSAGE + b"%d\n" % index)
    pop = client(pop3_server)
    pop.dele(2)
    assert pop.quit() == b"+OK postoffice signing off (2 messages left)"
    pop = client(pop3_server)
    assert pop.stat()[0] == 2
    assert [line.split()[0] for line in pop.list()[1]] == [b"1", b"2"]
    pop.dele(1)
    pop.dele(2)
    assert pop.quit() == b"+OK postoffice signing off (maildrop empty)"
    assert maildir_files(pop3_server.maildir("alice")) == []


def test_dropped_connection_deletes_nothing(pop3_server: ServerHarness) -> None:
    pop3_server.deliver("alice", MESSAGE)
    pop3_server.deliver("alice", MESSAGE)
    pop = client(pop3_server)
    pop.dele(1)
    pop.dele(2)
    pop.sock.shutdown(socket.SHUT_RDWR)  # no QUIT
    pop.close()
    wait_until(lambda: not pop3_server.server or not pop3_server.server.context.sessions)
    pop = client(pop3_server)
    assert pop.stat()[0] == 2
    pop.quit()


def test_second_login_gets_in_use(pop3_server: ServerHarness) -> None:
    pop3_server.deliver("alice", MESSAGE)
    first = client(pop3_server)
    second = poplib.POP3(pop3_server.host, pop3_server.port, timeout=10)
    second.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_("secret")
    first.quit()
    # After the first session ends, the lock is free again.
    second.user("alice")
    assert second.pass_("secret").startswith(b"+OK")
    second.quit()


def test_wrong_password_and_unknown_user_look_the_same(pop3_server: ServerHarness) -> None:
    replies = []
    for user in ("alice", "nobody"):
        pop = poplib.POP3(pop3_server.host, pop3_server.port, timeout=10)
        assert pop.user(user) == b"+OK send PASS"
        with pytest.raises(poplib.error_proto) as failure:
            pop.pass_("wrong")
        replies.append(failure.value.args[0])
        pop.quit()
    assert replies[0] == replies[1] == b"-ERR [AUTH] authentication failed"


def test_mail_delivered_during_a_session_is_invisible_and_survives(
    pop3_server: ServerHarness,
) -> None:
    pop3_server.deliver("alice", MESSAGE)
    pop = client(pop3_server)
    pop3_server.deliver("alice", CRLF_MESSAGE)
    assert pop.stat()[0] == 1
    pop.dele(1)
    pop.quit()
    pop = client(pop3_server)
    assert pop.stat()[0] == 1
    assert pop.retr(1)[1][1] == b"Subject: crlf"
    pop.quit()


def test_top_returns_headers_and_n_lines(pop3_server: ServerHarness) -> None:
    pop3_server.deliver("alice", MESSAGE)
    pop = client(pop3_server)
    lines = pop.top(1, 2)[1]
    assert lines == [
        b"From: sender@example.org",
        b"To: alice@example.org",
        b"Subject: hello",
        b"",
        b"Line one.",
        b".Line starting with a dot.",
    ]
    pop.quit()


def test_capa_from_poplib(pop3_server: ServerHarness) -> None:
    pop = poplib.POP3(pop3_server.host, pop3_server.port, timeout=10)
    capabilities = pop.capa()
    assert {"TOP", "USER", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"} <= set(
        capabilities
    )
    assert capabilities["EXPIRE"] == ["NEVER"]
    pop.quit()


def read_until(sock: socket.socket, predicate: Callable[[bytes], bool]) -> bytes:
    data = b""
    sock.settimeout(10)
    while not predicate(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_thousand_pipelined_commands_get_thousand_replies_in_order(
    pop3_server: ServerHarness,
) -> None:
    pop3_server.deliver("alice", MESSAGE)
    with socket.create_connection((pop3_server.host, pop3_server.port)) as sock:
        commands = [b"USER alice", b"PASS secret"]
        commands += [b"LIST 1" if index % 2 else b"NOOP" for index in range(996)]
        commands += [b"UIDL 1", b"QUIT"]
        assert len(commands) == 1000
        sock.sendall(b"".join(command + b"\r\n" for command in commands))
        data = read_until(sock, lambda d: b"signing off" in d)
    lines = data.split(b"\r\n")
    assert lines[0].startswith(b"+OK postoffice ready")
    replies = lines[1:-1]
    assert len(replies) == 1000
    assert replies[0] == b"+OK send PASS"
    assert replies[1].startswith(b"+OK maildrop has 1 messages")
    size = len(MESSAGE) + MESSAGE.count(b"\n")
    for index, reply in enumerate(replies[2:998]):
        assert reply == (b"+OK 1 %d" % size if index % 2 else b"+OK")
    assert replies[998].startswith(b"+OK 1 ")
    assert replies[999].startswith(b"+OK postoffice signing off")


def test_server_stops_reading_while_the_client_does_not_read(pop3_server: ServerHarness) -> None:
    pop3_server.deliver("alice", b"Subject: big\n\n" + b"x" * 100 + b"\n" * 1)
    big = b"Subject: big\n\n" + (b"y" * 998 + b"\n") * 200
    pop3_server.deliver("alice", big)
    assert pop3_server.server is not None
    with socket.create_connection((pop3_server.host, pop3_server.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"USER alice\r\nPASS secret\r\n")
        read_until(sock, lambda d: b"maildrop has" in d)
        sock.setblocking(False)
        sent = 0
        # Keep asking for the big message without reading the replies.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                sent += sock.send(b"RETR 2\r\n" * 1000)
            except BlockingIOError:
                break
        sessions = list(pop3_server.server.context.sessions)
        assert len(sessions) == 1
        wait_until(lambda: sessions[0]._reading_paused)
        # The server's unparsed input stays bounded however much the client sends.
        assert sessions[0].connection.buffered < 1024 * 1024


def test_flood_without_line_end_is_disconnected(pop3_server: ServerHarness) -> None:
    assert pop3_server.server is not None
    with socket.create_connection((pop3_server.host, pop3_server.port)) as sock:
        read_until(sock, lambda d: d.endswith(b"\r\n"))
        data = b""
        try:
            for _ in range(64):
                sock.sendall(b"A" * 16384)
            data = read_until(sock, lambda d: d.endswith(b"\r\n"))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the close can overtake the reply while our octets are still unread
        assert data in (b"", b"-ERR line too long, closing connection\r\n")
    wait_until(lambda: pop3_server.server is None or not pop3_server.server.context.sessions)


def test_long_command_line_gets_err_and_session_continues(pop3_server: ServerHarness) -> None:
    with socket.create_connection((pop3_server.host, pop3_server.port)) as sock:
        read_until(sock, lambda d: d.endswith(b"\r\n"))
        sock.sendall(b"USER " + b"a" * 300 + b"\r\nCAPA\r\n")
        data = read_until(sock, lambda d: d.endswith(b"\r\n.\r\n"))
        assert data.startswith(b"-ERR line too long\r\n+OK capability list follows\r\n")


def test_commands_before_a_half_close_are_all_answered(pop3_server: ServerHarness) -> None:
    pop3_server.deliver("alice", MESSAGE)
    with socket.create_connection((pop3_server.host, pop3_server.port)) as sock:
        sock.sendall(b"USER alice\nPASS secret\nSTAT\nQUIT\n")
        sock.shutdown(socket.SHUT_WR)  # as `printf ... | nc` does
        data = read_until(sock, lambda d: b"signing off" in d)
    assert data.endswith(b"+OK postoffice signing off (1 message left)\r\n")
    assert b"\r\n+OK 1 " in data


def test_an_idle_session_is_callbacks_only(pop3_server: ServerHarness) -> None:
    """A logged-in session waiting for its next command holds no task, only its deadline
    timer: idle sessions stay small and a command is answered right in data_received."""
    assert pop3_server.server is not None
    pop = client(pop3_server)
    try:
        pop.stat()
        sessions = list(pop3_server.server.context.sessions)
        assert len(sessions) == 1
        session = sessions[0]
        assert session.user == "alice"
        assert session._task is None
        assert session._timer is not None
        assert session._authorizer is None  # only needed to log in
        for _ in range(20):
            pop.noop()
        assert session._task is None
    finally:
        pop.quit()
    wait_until(lambda: pop3_server.server is None or not pop3_server.server.context.sessions)
