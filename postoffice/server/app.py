"""The server's lifecycle: start listeners, serve, and shut down gracefully.

Shutdown (SIGTERM/SIGINT): stop accepting, end sessions still waiting for a login, let
logged-in sessions finish up to ``limits.shutdown_timeout``, then cancel the rest; a
cancelled session never enters UPDATE, so it deletes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from dataclasses import dataclass, field

from postoffice.auth.authenticator import Authenticator
from postoffice.auth.passwd_file import PasswdFile
from postoffice.auth.throttle import FailureThrottle
from postoffice.config import Config, ListenAddress
from postoffice.server.limits import ConnectionLimits
from postoffice.server.session import Pop3Session, ServerContext

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Pop3Server:
    """All listeners of one server process."""

    config: Config
    context: ServerContext = field(init=False)
    servers: list[asyncio.Server] = field(default_factory=list)
    addresses: list[tuple[str, int]] = field(default_factory=list)
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        config = self.config
        database = PasswdFile(config.auth.passwd_file, lowercase_names=config.auth.lowercase_names)
        self.context = ServerContext(
            config=config,
            authenticator=Authenticator(database, max_concurrent_hashes=config.auth.hash_threads),
            throttle=FailureThrottle(
                base_delay=config.auth.failure_delay,
                max_delay=config.auth.failure_delay_max,
                trusted=config.auth.trusted_networks,
            ),
            limits=ConnectionLimits(
                max_connections=config.limits.max_connections,
                max_connections_per_ip=config.limits.max_connections_per_ip,
                max_sessions_per_user=config.limits.max_sessions_per_user,
            ),
            sessions=set(),
        )

    async def start(self) -> None:
        """Bind every listener; ``addresses`` then holds the bound (host, port) pairs."""
        loop = asyncio.get_running_loop()
        for address in self.config.pop3.listen:
            server = await loop.create_server(
                lambda: Pop3Session(self.context),
                host=address.host,
                port=address.port,
                reuse_address=True,
                backlog=1024,
            )
            self.servers.append(server)
            for sock in server.sockets:
                bound = sock.getsockname()
                self.addresses.append((str(bound[0]), int(bound[1])))
                log.info("POP3 listening on %s", _format(bound, sock.family))

    async def serve_until_stopped(self) -> None:
        await self._stopped.wait()
        await self.shutdown()

    def request_stop(self) -> None:
        self._stopped.set()

    async def shutdown(self) -> None:
        for server in self.servers:
            server.close()
        sessions = list(self.context.sessions)
        for session in sessions:
            session.stop()
        if sessions:
            log.info(
                "waiting up to %.0fs for %d sessions",
                self.config.limits.shutdown_timeout,
                len(sessions),
            )
            waiting = [asyncio.ensure_future(session.wait_closed()) for session in sessions]
            _done, pending = await asyncio.wait(
                waiting, timeout=self.config.limits.shutdown_timeout
            )
            for session in sessions:
                session.abort()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for server in self.servers:
            await server.wait_closed()
        self.context.authenticator.close()
        log.info("stopped")


def _format(bound: tuple[object, ...], family: int) -> str:
    host, port = bound[0], bound[1]
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> Pop3Server:
    """Run a server until SIGTERM or SIGINT."""
    server = Pop3Server(config)
    await server.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.request_stop)
    if ready is not None:
        ready.set()
    try:
        await server.serve_until_stopped()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return server


__all__ = ["ListenAddress", "Pop3Server", "serve"]
