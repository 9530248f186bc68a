"""Binding the listening sockets."""

from __future__ import annotations

import os
import socket

import pytest

from postoffice.config import ListenAddress
from postoffice.listening import LISTEN_BACKLOG, bind_tcp


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_bind_tcp_listens_without_blocking() -> None:
    (sock,) = bind_tcp(ListenAddress(host="127.0.0.1", port=0))
    try:
        assert not sock.getblocking()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        with socket.create_connection(sock.getsockname()[:2], timeout=5):
            pass
    finally:
        sock.close()
    assert LISTEN_BACKLOG >= 128


def test_bind_tcp_leaves_nothing_open_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = _open_descriptors()
        with pytest.raises(OSError):
            bind_tcp(ListenAddress(host="127.0.0.1", port=port))
        assert _open_descriptors() == before
