"""One POP3 connection: the asyncio protocol that drives a ``ServerConnection``.

Theory of operation
-------------------
``data_received`` hands octets straight to the protocol machine and wakes the session
task; the task alone calls ``next_event`` and answers events, so replies leave in command
order. Reading pauses while the machine holds more than ``MAX_UNPARSED`` octets or while
the transport's write buffer is over its high-water mark (a client that pipelines but does
not read its replies cannot make us buffer without bound). Waits for input use the login
timeout before authentication and the idle timeout after; a blocked write uses the send
timeout. Any way out of the task other than the UPDATE that QUIT asks for leaves the
maildrop untouched (RFC 1939 §6), and the lock is always released.

TLS is started by the session itself with the public ``loop.start_tls``, for POP3S right
after connecting and for STLS after its ``+OK``. The protocol machine has already dropped
every octet that followed the STLS line, and drops whatever arrives until the handshake is
done, so nothing sent in the clear can be read as a command inside TLS.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from typing import BinaryIO, cast

from postoffice.auth.base import UserRecord
from postoffice.errors import StorageError
from postoffice.proto.events import (
    NEED_DATA,
    ApopLogin,
    CloseConnection,
    MessageRequest,
    PasswordLogin,
    SaslCancelled,
    SaslResponse,
    SaslStart,
    StartTls,
    UpdateRequest,
)
from postoffice.proto.framing import MessageEncoder, TopFilter
from postoffice.proto.replies import ResponseCode, err
from postoffice.proto.server import LoginFailure, ServerConnection
from postoffice.proto.states import State
from postoffice.sasl import ChannelBinding, tls_server_end_point
from postoffice.sasl.events import Challenge
from postoffice.server.context import ServerContext
from postoffice.server.login import Authorizer, OpenedMaildrop
from postoffice.server.sasl_exchange import SaslExchange
from postoffice.storage.base import Maildrop, StoredMessage

log = logging.getLogger(__name__)

MAX_UNPARSED = 65536
READ_CHUNK = 256 * 1024
INLINE_READ_OCTETS = 128 * 1024


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes each line with the session id and the peer."""

    def process(self, msg: str, kwargs: object) -> tuple[str, object]:  # type: ignore[override]
        assert self.extra is not None
        return f"session={self.extra['session']} peer={self.extra['peer']} {msg}", kwargs


class _SessionOver(Exception):
    """End the session quietly (the reason is already recorded)."""


class _SendTimeout(Exception):
    """The client stopped reading its replies for longer than ``limits.send_timeout``."""


class Pop3Session(asyncio.Protocol):
    """Serves one client connection."""

    def __init__(self, context: ServerContext, *, implicit_tls: bool = False) -> None:
        self.context = context
        self.implicit_tls = implicit_tls
        # Made in connection_made, once the peer (and so the plaintext policy) is known.
        self.connection: ServerConnection[StoredMessage]
        self.transport: asyncio.Transport | None = None
        self.peer_ip = "?"
        self.session_id = secrets.token_hex(4)
        self.log = SessionLog(log, {"session": self.session_id, "peer": "?"})
        self.authorizer: Authorizer | None = None
        self.maildrop: Maildrop | None = None
        self.user: str | None = None
        self.tls_active = False
        self._tls_kind = "pop3s" if implicit_tls else "pop3"
        self._sasl_exchange: SaslExchange | None = None
        self._inside_tls_handshake = False
        self._early_tls_data: list[bytes] = []
        self._data_ready = asyncio.Event()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._eof = False
        self._reading_paused = False
        self._admitted = False
        self._user_admitted = False
        self._task: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self._octets_out = 0
        self._end_reason = "closed by client"
        self.stopping = False

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if isinstance(peer, tuple) else "local"
        peer_text = f"[{self.peer_ip}]:{peer[1]}" if isinstance(peer, tuple) else "local"
        self.log = SessionLog(log, {"session": self.session_id, "peer": peer_text})
        if not self._admit():
            self.log.warning("refused: too many connections")
            transport.write(err("too many connections, try again later", ResponseCode.SYS_TEMP))
            transport.close()
            return
        self._admitted = True
        if self.implicit_tls:
            # Read nothing in the clear: the ClientHello may already be waiting, and it
            # belongs to the TLS layer that start_tls is about to put in place.
            transport.pause_reading()
        self.connection = ServerConnection(
            self.context.session_settings(self.peer_ip, implicit_tls=self.implicit_tls)
        )
        self.authorizer = Authorizer(self.context, self.peer_ip, self.log)
        self.context.sessions.add(self)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _admit(self) -> bool:
        """Take a connection slot, evicting the oldest connection not logged in if full."""
        limits = self.context.limits
        cap = limits.connection_cap_reached(self.peer_ip)
        if cap is not None:
            waiting = [
                session
                for session in self.context.sessions
                if session.user is None
                and session._admitted
                and (cap == "total" or session.peer_ip == self.peer_ip)
            ]
            if waiting:
                min(waiting, key=lambda session: session._started).evict()
        return limits.admit_connection(self.peer_ip)

    def evict(self) -> None:
        """Close this connection (not logged in) to make room for a newer one."""
        self._end_reason = "evicted: connection limit reached"
        self._send(err("connection limit reached, closing", ResponseCode.SYS_TEMP))
        if self._admitted:
            self.context.limits.release_connection(self.peer_ip)
            self._admitted = False
        if self.transport is not None:
            self.transport.abort()
        if self._task is not None:
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        if self._inside_tls_handshake:
            # Decrypted octets can arrive before start_tls returns to us; they are the
            # first commands inside TLS, for after ``tls_started``.
            self._early_tls_data.append(data)
            return
        self.connection.receive_data(data)
        self._data_ready.set()
        if self.connection.buffered > MAX_UNPARSED:
            self._pause_reading()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._data_ready.set()
        # Keep our half open: commands sent before a half-close (``printf ... | nc``) still
        # get their replies; the session closes once they are answered. (TLS cannot.)
        return not self.tls_active

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._data_ready.set()
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()
        self._pause_reading()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- the session task ------------------------------------------------------------

    async def _run(self) -> None:
        try:
            if self.implicit_tls:
                await self._handshake("pop3s")
                self._feed_early_tls_data()
            await self._serve()
        except _SessionOver:
            pass
        except _SendTimeout:
            self._end_reason = "send timed out"
            # close() would wait for the unread replies forever; drop them and the socket.
            if self.transport is not None:
                self.transport.abort()
        except TimeoutError:
            self._end_reason = "timed out"
        except asyncio.CancelledError:
            if not self._end_reason.startswith("evicted"):
                self._end_reason = "server shutdown"
        except ConnectionError:
            self._end_reason = "connection lost"
        except Exception:
            self.log.exception("session failed")
            self._end_reason = "internal error"
            self._send(err("internal server error", ResponseCode.SYS_TEMP))
        finally:
            self._finish()

    async def _serve(self) -> None:
        connection = self.connection
        while True:
            event = connection.next_event()
            if event is NEED_DATA:
                self._send(connection.data_to_send())
                if not self._can_write.is_set():
                    await self._drain()
                    continue  # more input may have arrived meanwhile
                if self._eof:
                    return
                if self.stopping and connection.state is State.AUTHORIZATION:
                    self._end_reason = "server shutdown"
                    return
                self._data_ready.clear()
                self._resume_reading()
                limits = self.context.config.limits
                if connection.state is State.TRANSACTION:
                    timeout = limits.idle_timeout
                else:
                    # One deadline for the whole login, so chatter cannot stretch it.
                    timeout = limits.login_timeout - (time.monotonic() - self._started)
                    if timeout <= 0:
                        raise TimeoutError
                async with asyncio.timeout(timeout):
                    await self._data_ready.wait()
            elif isinstance(event, CloseConnection):
                self._end_reason = event.reason
                self._send(connection.data_to_send())
                return
            elif isinstance(event, PasswordLogin):
                await self._password_login(event)
            elif isinstance(event, ApopLogin):
                await self._apop_login(event)
            elif isinstance(event, SaslStart | SaslResponse | SaslCancelled):
                await self._sasl(event)
            elif isinstance(event, StartTls):
                await self._stls(event)
            elif isinstance(event, MessageRequest):
                await self._send_message(event)
            elif isinstance(event, UpdateRequest):
                await self._update(event)

    # -- TLS ---------------------------------------------------------------------------

    async def _stls(self, event: StartTls) -> None:
        if event.discarded:
            self.log.warning("discarded %d octets sent after STLS", event.discarded)
        self._send(self.connection.data_to_send())
        await self._handshake("pop3")
        self.connection.tls_started(
            plaintext_allowed=self.context.plaintext_allowed(self.peer_ip, tls_active=True),
            sasl_mechanisms=self.context.sasl_mechanisms(tls_active=True),
        )
        self._feed_early_tls_data()

    def _feed_early_tls_data(self) -> None:
        for data in self._early_tls_data:
            self.data_received(data)
        self._early_tls_data.clear()

    async def _handshake(self, kind: str) -> None:
        tls = self.context.tls
        assert tls is not None and self.transport is not None
        loop = asyncio.get_running_loop()
        self._inside_tls_handshake = True
        try:
            transport = await loop.start_tls(
                self.transport,
                self,
                tls.current(kind),
                server_side=True,
                ssl_handshake_timeout=self.context.config.limits.handshake_timeout,
            )
        except (ssl.SSLError, OSError, TimeoutError) as error:
            reason = getattr(error, "reason", None) or type(error).__name__
            self._end_reason = f"TLS handshake failed ({reason})"  # logged once, at the end
            if self.transport is not None:
                self.transport.abort()
            raise _SessionOver from error
        finally:
            self._inside_tls_handshake = False
        if transport is None:
            raise _SessionOver
        self.transport = transport
        self.tls_active = True
        self._reading_paused = False
        ssl_object = transport.get_extra_info("ssl_object")
        if isinstance(ssl_object, ssl.SSLObject):
            self.log.debug("TLS %s %s", ssl_object.version(), ssl_object.cipher())

    # -- logins ------------------------------------------------------------------------

    def _plaintext_allowed(self) -> bool:
        return self.context.plaintext_allowed(self.peer_ip, tls_active=self.tls_active)

    async def _password_login(self, event: PasswordLogin) -> None:
        assert self.authorizer is not None
        outcome = await self.authorizer.check_password(
            event.username, event.password, plaintext_allowed=self._plaintext_allowed()
        )
        await self._finish_login(outcome)

    async def _apop_login(self, event: ApopLogin) -> None:
        assert self.authorizer is not None
        outcome = await self.authorizer.check_apop(event.username, event.timestamp, event.digest)
        await self._finish_login(outcome)

    async def _sasl(self, event: SaslStart | SaslResponse | SaslCancelled) -> None:
        if isinstance(event, SaslCancelled):
            if self._sasl_exchange is not None:
                self._sasl_exchange.cancel()
                self._sasl_exchange = None
            return
        if isinstance(event, SaslStart):
            assert self.authorizer is not None
            self._sasl_exchange = SaslExchange(
                self.authorizer,
                event.mechanism,
                enabled=self.context.config.auth.mechanisms,
                plaintext_allowed=self._plaintext_allowed(),
                channel_bindings=self._channel_bindings(),
            )
            step = await self._sasl_exchange.start(event.initial_response)
        else:
            assert self._sasl_exchange is not None
            step = await self._sasl_exchange.receive(event.data)
        if isinstance(step, Challenge):
            self.connection.sasl_challenge(step.data)
            return
        self._sasl_exchange = None
        await self._finish_login(step)

    def _channel_bindings(self) -> tuple[ChannelBinding, ...]:
        """tls-server-end-point (RFC 5929) for SCRAM-SHA-256-PLUS, once TLS is up."""
        tls = self.context.tls
        if not self.tls_active or tls is None:
            return ()
        certificate, signature_hash = tls.certificate_der(self._tls_kind)
        try:
            return (tls_server_end_point(certificate, signature_hash),)
        except ValueError:
            return ()

    async def _finish_login(self, outcome: UserRecord | bytes) -> None:
        """Open the maildrop for a verified user, or send the failure."""
        connection = self.connection
        if isinstance(outcome, bytes):
            connection.login_rejected(outcome)
            return
        limits = self.context.limits
        if not limits.admit_user(outcome.name, self.peer_ip):
            connection.login_rejected(LoginFailure.IN_USE)
            return
        assert self.authorizer is not None
        opened = await self.authorizer.open_maildrop(outcome)
        if not isinstance(opened, OpenedMaildrop):
            limits.release_user(outcome.name, self.peer_ip)
            connection.login_rejected(opened)
            return
        self._user_admitted = True
        self.user = outcome.name
        self.maildrop = opened.maildrop
        self.log.debug("login %r, %d messages", outcome.name, len(opened.messages))
        connection.login_accepted(opened.messages, username=outcome.name)

    # -- messages and UPDATE -----------------------------------------------------------

    async def _send_message(self, request: MessageRequest[StoredMessage]) -> None:
        maildrop = self.maildrop
        assert maildrop is not None
        message = request.message
        try:
            if message.size <= INLINE_READ_OCTETS:
                # A small file is one short read, cheaper than a trip to a thread.
                file, first = _open_and_read(maildrop, message)
            else:
                # One trip opens the file and reads the first chunk.
                file, first = await asyncio.to_thread(_open_and_read, maildrop, message)
        except (OSError, StorageError) as error:
            self.log.warning("cannot read %s: %s", message.key, error)
            self.connection.message_unavailable()
            return
        with file:
            self.connection.message_follows()
            await self._stream(file, first, request, message)
        self.connection.message_sent()

    async def _stream(
        self,
        file: BinaryIO,
        chunk: bytes,
        request: MessageRequest[StoredMessage],
        message: StoredMessage,
    ) -> None:
        encoder = MessageEncoder()
        top = TopFilter(request.body_lines) if request.body_lines is not None else None
        pending = self.connection.data_to_send()  # the +OK line goes out with the first chunk
        while chunk:
            complete = len(chunk) < READ_CHUNK  # a short read: the end of the file
            if top is not None:
                chunk = top.feed(chunk)
            if complete or (top is not None and top.done):
                # The whole reply in one write: one system call per message.
                self._send(pending + encoder.encode(chunk) + encoder.finish())
                pending = b""
                break
            self._send(pending + encoder.encode(chunk))
            pending = b""
            if not self._can_write.is_set():
                await self._drain()
            chunk = await asyncio.to_thread(file.read, READ_CHUNK)
        else:
            self._send(pending + encoder.finish())
        if not self._can_write.is_set():
            await self._drain()  # pipelined RETRs must not pile replies up unread
        if top is None and encoder.octets != message.size:
            self.log.warning(
                "size of %s was %d, sent %d octets; corrected",
                message.key,
                message.size,
                encoder.octets,
            )
            maildrop = self.maildrop
            assert maildrop is not None
            await asyncio.to_thread(maildrop.correct_size, message, encoder.octets)

    async def _update(self, request: UpdateRequest[StoredMessage]) -> None:
        maildrop = self.maildrop
        assert maildrop is not None
        try:
            if request.deleted or request.retrieved:
                result = await asyncio.to_thread(
                    maildrop.commit, deleted=request.deleted, retrieved=request.retrieved
                )
            else:  # nothing to remove or flag: no filesystem work, no trip to a thread
                result = maildrop.commit(deleted=(), retrieved=())
        except (OSError, StorageError) as error:
            self.log.error("UPDATE failed: %s", error)
            self.connection.update_done(removed_all=False, remaining=-1)
            return
        if result.not_removed:
            self.log.error("UPDATE could not remove %d messages", result.not_removed)
        self.connection.update_done(removed_all=result.not_removed == 0, remaining=result.remaining)

    # -- output and flow control -----------------------------------------------------

    def _send(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self._octets_out += len(data)

    async def _drain(self) -> None:
        try:
            async with asyncio.timeout(self.context.config.limits.send_timeout):
                await self._can_write.wait()
        except TimeoutError:
            raise _SendTimeout from None
        if self._eof:
            raise ConnectionResetError("connection lost while sending")

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    # -- shutdown ----------------------------------------------------------------------

    def stop(self) -> None:
        """Server shutdown: end the session now if it is waiting for a login."""
        self.stopping = True
        self._data_ready.set()

    def abort(self) -> None:
        """Shutdown deadline passed: close without UPDATE."""
        if self._task is not None:
            self._task.cancel()

    async def wait_closed(self) -> None:
        if self._task is not None:
            await asyncio.wait({self._task})

    def _finish(self) -> None:
        if self.maildrop is not None:
            self.maildrop.unlock()
            self.maildrop = None
        if self._user_admitted and self.user is not None:
            self.context.limits.release_user(self.user, self.peer_ip)
            self._user_admitted = False
        if self.transport is not None:
            self._send(self.connection.data_to_send())
            self.transport.close()
        if self._admitted:
            self.context.limits.release_connection(self.peer_ip)
            self._admitted = False
        counters = self.connection.counters
        self.log.info(
            "end user=%r reason=%s tls=%s commands=%d retrieved=%d top=%d deleted=%d "
            "octets_out=%d seconds=%.3f",
            self.user,
            self._end_reason,
            "yes" if self.tls_active else "no",
            counters.commands,
            counters.retrieved,
            counters.top,
            counters.deleted if self.connection.state is State.CLOSED else 0,
            self._octets_out,
            time.monotonic() - self._started,
        )
        self.context.sessions.discard(self)  # last: watchers see the end line first


def _open_and_read(maildrop: Maildrop, message: StoredMessage) -> tuple[BinaryIO, bytes]:
    file = maildrop.open(message)
    try:
        return file, file.read(READ_CHUNK)
    except BaseException:
        file.close()
        raise
