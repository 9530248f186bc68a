"""Listening TCP sockets, for the POP3, POP3S and LMTP listeners alike."""

from __future__ import annotations

import socket

from postoffice.config import ListenAddress

__all__ = ["LISTEN_BACKLOG", "bind_tcp"]

LISTEN_BACKLOG = 1024


def bind_tcp(address: ListenAddress) -> list[socket.socket]:
    """Listening, non-blocking sockets for ``address`` (every address a name resolves to;
    IPv6 ones are IPv6 only). On any failure none stays open."""
    sockets: list[socket.socket] = []
    infos = socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    try:
        for family, kind, protocol, _name, sockaddr in infos:
            sock = socket.socket(family, kind, protocol)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
