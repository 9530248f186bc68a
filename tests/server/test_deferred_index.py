"""A large first listing's index is written after the login is answered, under the lock
(storage/maildir.py, "Deferred index write"): the real server on loopback, raw sockets."""

from __future__ import annotations

import poplib
import select
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from postoffice.storage import maildir as maildir_module
from postoffice.storage import maildir_index
from postoffice.storage.maildir import INDEX_NAME
from postoffice.storage.maildir_index import FileId
from tests.conftest import ServerHarness
from tests.server.test_loopback import MESSAGE, wait_until


@pytest.fixture
def held_index_write(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Listings of 3 messages or more defer their index, and writing an index waits for
    the event returned."""
    monkeypatch.setattr(maildir_module, "DEFER_INDEX_MESSAGES", 3)
    release = threading.Event()
    write = maildir_index.write_index

    def held(*args: Any, **kwargs: Any) -> FileId | None:
        release.wait(10)
        return write(*args, **kwargs)

    monkeypatch.setattr(maildir_module, "write_index", held)
    yield release
    release.set()


def logged_in(server: ServerHarness) -> tuple[socket.socket, socket.SocketIO]:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    replies = sock.makefile("rb")
    assert replies.readline().startswith(b"+OK")
    sock.sendall(b"USER alice\r\nPASS %s\r\n" % server.users["alice"].encode())
    assert replies.readline().startswith(b"+OK")
    assert replies.readline().startswith(b"+OK")
    return sock, replies  # type: ignore[return-value]


def test_login_and_stat_do_not_wait_for_the_index_but_quit_does(
    pop3_server: ServerHarness, held_index_write: threading.Event
) -> None:
    for number in range(5):
        pop3_server.deliver("alice", MESSAGE + b"%d\n" % number)
    index = pop3_server.maildir("alice") / INDEX_NAME
    sock, replies = logged_in(pop3_server)  # answered while the index write is held
    with sock:
        sock.sendall(b"STAT\r\n")
        assert replies.readline().startswith(b"+OK 5 ")
        assert not index.exists()
        sock.sendall(b"QUIT\r\n")
        assert select.select([sock], [], [], 0.3)[0] == []  # UPDATE waits for the write
        with socket.create_connection((pop3_server.host, pop3_server.port), timeout=2) as other:
            assert other.recv(100).startswith(b"+OK")  # without holding up anyone else
        held_index_write.set()
        assert replies.readline().startswith(b"+OK")
        assert index.exists()


def test_a_dropped_session_keeps_the_lock_until_its_index_is_written(
    pop3_server: ServerHarness, held_index_write: threading.Event
) -> None:
    for number in range(5):
        pop3_server.deliver("alice", MESSAGE + b"%d\n" % number)
    assert pop3_server.server is not None
    sessions = pop3_server.server.context.sessions
    sock, replies = logged_in(pop3_server)
    replies.close()
    sock.close()  # no QUIT
    wait_until(lambda: not sessions)  # the server has ended that session
    second = poplib.POP3(pop3_server.host, pop3_server.port, timeout=10)
    second.user("alice")
    with pytest.raises(poplib.error_proto, match="IN-USE"):
        second.pass_(pop3_server.users["alice"])
    second.close()
    held_index_write.set()
    wait_until((pop3_server.maildir("alice") / INDEX_NAME).exists)

    def logs_in() -> bool:
        pop = poplib.POP3(pop3_server.host, pop3_server.port, timeout=10)
        try:
            pop.user("alice")
            pop.pass_(pop3_server.users["alice"])
        except poplib.error_proto:
            pop.close()
            return False
        pop.quit()
        return True

    wait_until(logs_in)
