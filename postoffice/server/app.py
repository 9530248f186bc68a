"""The server's lifecycle: start listeners, serve, reload certificates, shut down gracefully.

Start-up binds every listener without accepting, loads the TLS certificates (making a
self-signed one when none is configured), drops root privileges if configured, and only
then starts accepting, so no client byte is read with privileges.

Shutdown (SIGTERM/SIGINT): stop accepting, end sessions still waiting for a login, let
logged-in sessions finish up to ``limits.shutdown_timeout``, then cancel the rest; a
cancelled session never enters UPDATE, so it deletes nothing. SIGHUP reloads the
certificates; sessions keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
from dataclasses import dataclass, field

from postoffice.auth.authenticator import Authenticator
from postoffice.auth.base import UserDatabase
from postoffice.auth.passwd_file import PasswdFile
from postoffice.auth.schemes import dummy_hash
from postoffice.auth.throttle import FailureThrottle
from postoffice.auth.verified_cache import VerifiedPasswords
from postoffice.config import Config
from postoffice.delivery import lmtp
from postoffice.errors import AuthError, ConfigError
from postoffice.listening import bind_tcp
from postoffice.server.context import ServerContext
from postoffice.server.index_news import IndexNews
from postoffice.server.limits import ConnectionLimits
from postoffice.server.session import Pop3Session
from postoffice.server.socket_transport import SocketListener
from postoffice.tls import ListenerContexts

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Pop3Server:
    """All listeners of one server process."""

    config: Config
    bound: list[tuple[socket.socket, bool]] | None = None
    """Listening sockets bound by a parent process (with "implicit TLS" flags), or None."""
    tls_loaded: ListenerContexts | None = None
    users: PasswdFile | None = None
    """The user database, already read by a parent process (shared with its workers), or
    None: made here."""
    context: ServerContext = field(init=False)
    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    addresses: list[tuple[str, int]] = field(default_factory=list)
    tls_addresses: list[tuple[str, int]] = field(default_factory=list)
    lmtp_sockets: list[socket.socket] | None = None
    """LMTP listening sockets bound by a parent process, or None: ``start`` binds them."""
    lmtp_addresses: list[tuple[str, int] | str] = field(default_factory=list)
    """LMTP (host, port) pairs, or Unix socket paths."""
    index_news: IndexNews | None = None
    """This worker's end of the news between worker processes, or None (one process)."""
    verified: VerifiedPasswords | None = None
    """The verified-password cache, made by a parent process for all its workers, or None:
    made here (when ``auth.cache_ttl`` is not 0)."""
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        config = self.config
        if self.users is None:
            self.users = open_user_database(config)
        database = self.users
        tls = self.tls_loaded
        if tls is None and (config.pop3s.listen or config.pop3.stls):
            settings = {"pop3": config.pop3.tls, "pop3s": config.pop3s.tls}
            tls = ListenerContexts(settings, hostname=socket.gethostname())
        self.context = ServerContext(
            config=config,
            authenticator=Authenticator(
                database,
                max_concurrent_hashes=config.auth.hash_threads,
                verified=(
                    self.verified if self.verified is not None else make_verified_cache(config)
                ),
            ),
            throttle=FailureThrottle(
                base_delay=config.auth.failure_delay,
                max_delay=config.auth.failure_delay_max,
                trusted=config.auth.trusted_networks,
            ),
            limits=ConnectionLimits(
                max_connections=config.limits.max_connections,
                max_connections_per_ip=config.limits.max_connections_per_ip,
                max_sessions_per_user=config.limits.max_sessions_per_user,
                max_connections_per_user_ip=config.limits.max_connections_per_user_ip,
            ),
            tls=tls,
        )

    async def start(self) -> None:
        """Bind and start every listener; ``addresses`` then holds the bound pairs."""
        # Made before the first login, so the first unknown user costs what later ones do;
        # the passwd-file is read now too, not by the first login.
        await asyncio.to_thread(dummy_hash)
        if self.users is not None:
            await asyncio.to_thread(read_user_database, self.users)
        if self.bound is None:  # one process: bind here (several: the parent did)
            self.bound = bind_pop3_listeners(self.config)
            if self.context.tls is not None:
                await asyncio.to_thread(self.context.tls.load)
            if self.lmtp_sockets is None:
                self.lmtp_sockets = lmtp.bind_lmtp_sockets(self.config)
                for sock in self.lmtp_sockets:
                    log.info("LMTP listening on %s", lmtp.describe(sock))
            drop_privileges(self.config)
        loop = asyncio.get_running_loop()
        for sock, implicit_tls in self.bound:
            listener = SocketListener(
                loop,
                sock,
                functools.partial(Pop3Session, self.context, implicit_tls=implicit_tls),
                flush_timeout=self.config.limits.send_timeout,
            )
            self.servers.append(listener)
            bound = sock.getsockname()
            pair = (str(bound[0]), int(bound[1]))
            (self.tls_addresses if implicit_tls else self.addresses).append(pair)
        await self._serve_lmtp()
        if self.index_news is not None:
            self.index_news.start(loop, hold_accepting=self._hold_accepting)
        for server in self.servers:
            await server.start_serving()

    def _hold_accepting(self, held: bool) -> None:
        """Stop or go on accepting POP3 connections (``IndexNews``; LMTP goes on)."""
        for server in self.servers:
            if isinstance(server, SocketListener):
                server.hold(held)

    async def _serve_lmtp(self) -> None:
        """LMTP (``delivery/lmtp.py``) on its sockets; it serves and stops with the rest."""
        sockets = self.lmtp_sockets or []
        self.servers.extend(await lmtp.serve_lmtp(self.config, sockets))
        self.lmtp_addresses.extend(lmtp.bound_address(sock) for sock in sockets)

    async def serve_until_stopped(self) -> None:
        await self._stopped.wait()
        await self.shutdown()

    def request_stop(self) -> None:
        self._stopped.set()

    def reload_certificates(self) -> None:
        if self.context.tls is not None and self.context.tls.reload():
            log.info("certificates reloaded")

    async def shutdown(self) -> None:
        for server in self.servers:
            server.close()
        sessions = list(self.context.sessions)
        for session in sessions:
            session.stop()
        if sessions:
            timeout = self.config.limits.shutdown_timeout
            log.info("waiting up to %.0fs for %d sessions", timeout, len(sessions))
            waiting = [asyncio.ensure_future(session.wait_closed()) for session in sessions]
            _done, pending = await asyncio.wait(waiting, timeout=timeout)
            for session in sessions:
                session.abort()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for server in self.servers:
            await server.wait_closed()
        if self.index_news is not None:
            self.index_news.close()
        self.context.authenticator.close()
        log.info("stopped")


def open_user_database(config: Config) -> PasswdFile:
    return PasswdFile(
        config.auth.passwd_file,
        lowercase_names=config.auth.lowercase_names,
        warn_weak_schemes=True,
    )


def read_user_database(database: UserDatabase) -> None:
    """Read the database now (an unreadable file is reported by the logins, as before)."""
    with contextlib.suppress(AuthError):
        database.lookup("postoffice-startup")


def make_verified_cache(config: Config) -> VerifiedPasswords | None:
    """The cache of verified passwords ``auth.cache_ttl`` asks for, or None (turned off)."""
    auth = config.auth
    return VerifiedPasswords(auth.cache_ttl, auth.cache_entries) if auth.cache_ttl > 0 else None


def bind_pop3_listeners(config: Config) -> list[tuple[socket.socket, bool]]:
    """Every POP3 and POP3S socket, with its "implicit TLS" flag; each is logged once."""
    bound = []
    for addresses, implicit_tls in ((config.pop3.listen, False), (config.pop3s.listen, True)):
        for address in addresses:
            for sock in bind_tcp(address):
                bound.append((sock, implicit_tls))
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
                log.info("%s listening on %s:%d", "POP3S" if implicit_tls else "POP3", shown, port)
    return bound


def drop_privileges(config: Config) -> None:
    """Become ``process.user``/``process.group`` if configured (after binding, before serving)."""
    user, group = config.process.user, config.process.group
    if not user and not group:
        return
    import grp
    import pwd

    try:
        entry = pwd.getpwnam(user) if user else None
        gid = grp.getgrnam(group).gr_gid if group else (entry.pw_gid if entry else os.getgid())
    except KeyError as error:
        raise ConfigError(f"process: no such user or group: {error.args[0]}") from error
    if os.getuid() != 0:
        if entry is not None and entry.pw_uid != os.getuid():
            raise ConfigError("process.user: only root can change to another user")
        return
    os.setgroups([gid])
    os.setgid(gid)
    if entry is not None:
        os.setuid(entry.pw_uid)
    log.info("running as uid %d gid %d", os.getuid(), os.getgid())


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> Pop3Server:
    """Run a server until SIGTERM or SIGINT; SIGHUP reloads certificates."""
    server = Pop3Server(config)
    await server.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.request_stop)
    loop.add_signal_handler(signal.SIGHUP, server.reload_certificates)
    if ready is not None:
        ready.set()
    try:
        await server.serve_until_stopped()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    return server
