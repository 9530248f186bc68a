"""One POP3 connection: the asyncio protocol that drives a ``ServerConnection``.

Theory of operation
-------------------
Callbacks, not a task per connection: ``data_received`` hands octets to the protocol
machine and answers every complete command right there (``_process``), so a command costs
no extra trip through the event loop and an idle session holds no task, coroutine, event
or future, only this object, its transport and its machine. RETR and TOP of a message
that one read brings in whole are answered in line too. An event that needs more of the
outside world (a login, a large message, UPDATE, STLS) runs its handler eagerly, as far
as it gets without waiting; only a handler that really waits (a password hash in the thread pool, a
large file read, a TLS handshake) continues in a task, and the session reads no further
commands until it ends (``_busy``), so replies leave in command order.

Reading pauses while the machine holds more than ``MAX_UNPARSED`` octets or while the
transport's write buffer is over its high-water mark (a client that pipelines but does not
read its replies cannot make us buffer without bound). One timer per session enforces the
deadlines: the whole login must finish within the login timeout, a logged-in session may
wait for a command up to the idle timeout, and a blocked write up to the send timeout. It
is armed lazily: activity only moves the deadline, and the timer re-arms itself when it
fires early. Any way out other than the UPDATE that QUIT asks for leaves the maildrop
untouched (RFC 1939 §6), and the lock is always released.

TLS is started by the session itself with the public ``loop.start_tls``, for POP3S right
after connecting and for STLS after its ``+OK``. The protocol machine has already dropped
every octet that followed the STLS line, and drops whatever arrives until the handshake is
done, so nothing sent in the clear can be read as a command inside TLS.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import logging
import os
import random
import ssl
from collections.abc import Coroutine, Generator
from typing import Any, BinaryIO, cast

from postoffice.auth.base import UserRecord
from postoffice.errors import StorageError
from postoffice.proto.events import (
    NEED_DATA,
    ApopLogin,
    CloseConnection,
    Event,
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
from postoffice.proto.server import QUICK_REPLY_OCTETS, LoginFailure, ServerConnection
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
# The sessions' deadline timers run in one context rather than a copy each (they read no
# context variable): 64 octets per session.
_TIMER_CONTEXT = contextvars.Context()


class SessionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes each line with the session id and the peer."""

    def process(self, msg: str, kwargs: object) -> tuple[str, object]:  # type: ignore[override]
        assert self.extra is not None
        return f"session={self.extra['session']} peer={self.extra['peer']} {msg}", kwargs


class _SessionOver(Exception):
    """End the session quietly (the reason is already recorded)."""


class _Resumed:
    """Awaits the rest of a coroutine that already ran up to its first wait (``waiting``)."""

    __slots__ = ("coroutine", "waiting")

    def __init__(self, coroutine: Coroutine[Any, Any, None], waiting: object) -> None:
        self.coroutine = coroutine
        self.waiting = waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine, waiting = self.coroutine, self.waiting
        self.waiting = None
        while True:
            try:
                sent = yield waiting
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as error:  # the task's cancellation, passed on
                try:
                    waiting = coroutine.throw(error)
                except StopIteration:
                    return
            else:
                try:
                    waiting = coroutine.send(sent)
                except StopIteration:
                    return


class Pop3Session(asyncio.BufferedProtocol):
    """Serves one client connection."""

    __slots__ = (
        "_admitted",
        "_authorizer",
        "_busy",
        "_closed_waiter",
        "_early_tls_data",
        "_end_reason",
        "_eof",
        "_finished",
        "_index_write",
        "_inside_tls_handshake",
        "_loop",
        "_number",
        "_octets_out",
        "_peer",
        "_reading_paused",
        "_sasl_exchange",
        "_started",
        "_task",
        "_timer",
        "_timer_when",
        "_tls_kind",
        "_user_admitted",
        "_waiting_since",
        "_write_blocked_since",
        "_write_waiter",
        "connection",
        "context",
        "implicit_tls",
        "maildrop",
        "peer_ip",
        "stopping",
        "tls_active",
        "transport",
        "user",
    )

    def __init__(self, context: ServerContext, *, implicit_tls: bool = False) -> None:
        self.context = context
        self.implicit_tls = implicit_tls
        self._loop = asyncio.get_running_loop()
        # Made in connection_made, once the peer (and so the plaintext policy) is known.
        self.connection: ServerConnection[StoredMessage]
        self.transport: asyncio.Transport | None = None
        self.peer_ip = "?"
        self._peer: object = None  # the transport's peername (the object it keeps)
        self._number = random.getrandbits(32)  # for log lines, not a secret
        self._authorizer: Authorizer | None = None
        self.maildrop: Maildrop | None = None
        self.user: str | None = None
        self.tls_active = False
        self._tls_kind = "pop3s" if implicit_tls else "pop3"
        self._sasl_exchange: SaslExchange | None = None
        self._inside_tls_handshake = False
        self._early_tls_data: list[bytes] | None = None  # only while a handshake runs
        self._eof = False
        self._reading_paused = False
        self._write_blocked_since: float | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._admitted = False
        self._user_admitted = False
        self._busy = False  # an event's handler is still running; read no further commands
        self._task: asyncio.Task[None] | None = None
        # The index write a large first listing left for after the login's reply
        # (storage/maildir.py, "Deferred index write"); UPDATE and the unlock wait for it.
        self._index_write: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._started = self._waiting_since = self._loop.time()
        self._octets_out = 0
        self._end_reason = "closed by client"
        self._finished = False
        self._closed_waiter: asyncio.Future[None] | None = None
        self.stopping = False

    # The session's id and its peer as log lines show them: made when a line is logged,
    # not kept, so idle sessions stay small.

    @property
    def session_id(self) -> str:
        return f"{self._number:08x}"

    @property
    def peer_text(self) -> str:
        """``[address]:port``, or ``local`` (a Unix socket), or ``?`` before the connection."""
        peer = self._peer
        return f"[{peer[0]}]:{peer[1]}" if isinstance(peer, tuple) else self.peer_ip

    @property
    def log(self) -> SessionLog:
        return SessionLog(log, {"session": self.session_id, "peer": self.peer_text})

    @property
    def authorizer(self) -> Authorizer:
        if self._authorizer is None:
            self._authorizer = Authorizer(self.context, self.peer_ip, self.log)
        return self._authorizer

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = peer
        self.peer_ip = str(peer[0]) if isinstance(peer, tuple) else "local"
        if not self._admit():
            self._finished = True
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
        self.context.sessions.add(self)
        if self.implicit_tls:
            self._start(self._implicit_tls())
        else:
            self._process()

    def _admit(self) -> bool:
        """Take a connection slot, evicting the oldest connection not logged in if full."""
        limits = self.context.limits
        if limits.admit_connection(self.peer_ip):
            return True
        cap = limits.connection_cap_reached(self.peer_ip)
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
        self._finish()

    def get_buffer(self, sizehint: int) -> memoryview:
        # One buffer for every session of this server: each read is consumed before the
        # next one starts, so no session holds (or makes) a read buffer of its own.
        return self.context.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = self.context.read_buffer[:nbytes]
        if nbytes <= QUICK_REPLY_OCTETS and self._ready_for_more():
            reply = self.connection.quick_reply(data)
            if reply is not None:  # a lone NOOP: answered as _process would, more cheaply
                self._send(reply)
                self._await_commands()
                return
        self.data_received(data)

    def _ready_for_more(self) -> bool:
        """Whether a command arriving now would be answered straight away: no handler
        running, output flowing, no TLS handshake under way, the session not ending."""
        return not (
            self._busy
            or self._finished
            or self._eof
            or self._inside_tls_handshake
            or self._write_blocked_since is not None
        )

    def data_received(self, data: bytes | memoryview) -> None:
        if self._inside_tls_handshake:
            # Decrypted octets can arrive before start_tls returns to us; they are the
            # first commands inside TLS, for after ``tls_started``.
            if self._early_tls_data is None:
                self._early_tls_data = []
            self._early_tls_data.append(bytes(data))
            return
        if self._finished:
            return
        self.connection.receive_data(data)
        if self.connection.buffered > MAX_UNPARSED:
            self._pause_reading()
        self._process()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._process()
        # Keep our half open: commands sent before a half-close (``printf ... | nc``) still
        # get their replies; the session closes once they are answered. (TLS cannot.)
        return not self.tls_active

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._write_blocked_since = None
        self._wake_writer()
        self._process()

    def pause_writing(self) -> None:
        self._write_blocked_since = self._loop.time()
        self._pause_reading()
        self._arm_timer()

    def resume_writing(self) -> None:
        self._write_blocked_since = None
        if self._write_waiter is not None:
            self._wake_writer()
        else:
            self._process()

    # -- answering commands ------------------------------------------------------------

    def _process(self) -> None:
        """Answer buffered commands until the machine needs input, the transport cannot take
        more output, or a handler has to wait."""
        if self._busy or self._finished:
            return
        connection = self.connection
        try:
            while self._write_blocked_since is None and not self._finished:
                event = connection.next_event()
                if event is NEED_DATA:
                    self._send(connection.data_to_send())
                    if self._write_blocked_since is not None:
                        continue  # resume_writing calls us again
                    if self._eof:
                        self._finish()
                    elif self.stopping and connection.state is State.AUTHORIZATION:
                        self._end_reason = "server shutdown"
                        self._finish()
                    else:
                        self._await_commands()
                    return
                if isinstance(event, CloseConnection):
                    self._end_reason = event.reason
                    self._send(connection.data_to_send())
                    self._finish()
                    return
                if isinstance(event, MessageRequest):
                    rest = self._send_small_message(event)
                    if rest is not None and not self._run_eagerly(rest):
                        return
                elif not self._run_eagerly(self._handle(event)):
                    return
            if not self._finished:
                self._pause_reading()
                self._arm_timer()
        except Exception as error:
            self._fail(error)

    def _await_commands(self) -> None:
        """Everything received is answered: read on, idle from now. Not while the transport
        pushes back on the answers: ``pause_writing`` paused reading and armed the send
        deadline, and ``resume_writing`` goes on."""
        if self._write_blocked_since is not None:
            return
        self._waiting_since = self._loop.time()
        self._resume_reading()
        if self._timer is None:  # else it re-arms itself when it fires
            self._arm_timer()

    async def _handle(self, event: Event[StoredMessage]) -> None:
        if isinstance(event, PasswordLogin):
            await self._password_login(event)
        elif isinstance(event, UpdateRequest):
            await self._update(event)
        elif isinstance(event, ApopLogin):
            await self._apop_login(event)
        elif isinstance(event, SaslStart | SaslResponse | SaslCancelled):
            await self._sasl(event)
        elif isinstance(event, StartTls):
            await self._stls(event)

    def _start(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a handler outside ``_process`` (POP3S start), then go on answering."""
        try:
            if self._run_eagerly(coroutine):
                self._process()
        except Exception as error:
            self._fail(error)

    def _run_eagerly(self, coroutine: Coroutine[Any, Any, None]) -> bool:
        """Run a handler until it first waits. True if it finished without waiting;
        otherwise it goes on in a task that calls ``_process`` when done."""
        try:
            waiting = coroutine.send(None)
        except StopIteration:
            return True
        self._busy = True
        self._task = self._loop.create_task(self._resume(coroutine, waiting))
        return False

    async def _resume(self, coroutine: Coroutine[Any, Any, None], waiting: object) -> None:
        try:
            await _Resumed(coroutine, waiting)
        except (Exception, asyncio.CancelledError) as error:
            self._task = None
            self._fail(error)
            return
        self._task = None
        self._busy = False
        self._process()

    def _fail(self, error: BaseException) -> None:
        """End the session after ``error`` escaped a handler."""
        if isinstance(error, _SessionOver):
            pass
        elif isinstance(error, asyncio.CancelledError):
            if self._end_reason == "closed by client":
                self._end_reason = "server shutdown"
        elif isinstance(error, TimeoutError):
            self._end_reason = "timed out"
        elif isinstance(error, ConnectionError):
            self._end_reason = "connection lost"
        else:
            self.log.error("session failed", exc_info=error)
            self._end_reason = "internal error"
            self._send(err("internal server error", ResponseCode.SYS_TEMP))
        self._finish()

    # -- deadlines ---------------------------------------------------------------------

    def _deadline(self) -> float | None:
        limits = self.context.config.limits
        if self._write_blocked_since is not None:
            return self._write_blocked_since + limits.send_timeout
        if self._busy:
            return None  # the handler's own limits apply (handshake timeout, ...)
        if self.connection.state is State.TRANSACTION:
            return self._waiting_since + limits.idle_timeout
        # One deadline for the whole login, so chatter cannot stretch it.
        return self._started + limits.login_timeout

    def _arm_timer(self) -> None:
        deadline = self._deadline()
        if deadline is None or self._finished:
            return
        if self._timer is not None:
            if self._timer_when <= deadline:
                return  # it fires first and re-arms itself for the later deadline
            self._timer.cancel()
        self._timer_when = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer, context=_TIMER_CONTEXT)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline()
        if deadline is None or self._finished:
            return
        if self._loop.time() < deadline:
            self._arm_timer()
            return
        if self._write_blocked_since is not None:
            self._end_reason = "send timed out"
            # close() would wait for the unread replies forever; drop them and the socket.
            if self.transport is not None:
                self.transport.abort()
        else:
            self._end_reason = "timed out"
        self._finish()

    # -- TLS ---------------------------------------------------------------------------

    async def _implicit_tls(self) -> None:
        await self._handshake("pop3s")
        self._feed_early_tls_data()

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
        # Fed to the machine only; _process answers them once the handler returns.
        early, self._early_tls_data = self._early_tls_data, None
        for data in early or ():
            self.connection.receive_data(data)

    async def _handshake(self, kind: str) -> None:
        tls = self.context.tls
        assert tls is not None and self.transport is not None
        self._inside_tls_handshake = True
        try:
            transport = await self._loop.start_tls(
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
        outcome = await self.authorizer.check_password(
            event.username, event.password, plaintext_allowed=self._plaintext_allowed()
        )
        await self._finish_login(outcome)

    async def _apop_login(self, event: ApopLogin) -> None:
        outcome = await self.authorizer.check_apop(event.username, event.timestamp, event.digest)
        await self._finish_login(outcome)

    async def _sasl(self, event: SaslStart | SaslResponse | SaslCancelled) -> None:
        if isinstance(event, SaslCancelled):
            if self._sasl_exchange is not None:
                self._sasl_exchange.cancel()
                self._sasl_exchange = None
            return
        if isinstance(event, SaslStart):
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
        opened = await self.authorizer.open_maildrop(outcome)
        if isinstance(opened, OpenedMaildrop) and opened.maildrop.index_write_deferred:
            self._index_write = self._loop.run_in_executor(
                None, opened.maildrop.write_deferred_index
            )
        if self._finished:  # the connection ended while the maildrop was being opened
            limits.release_user(outcome.name, self.peer_ip)
            if isinstance(opened, OpenedMaildrop):
                self._unlock(opened.maildrop)
            return
        if not isinstance(opened, OpenedMaildrop):
            limits.release_user(outcome.name, self.peer_ip)
            connection.login_rejected(opened)
            return
        self._user_admitted = True
        self.user = outcome.name
        self.maildrop = opened.maildrop
        self._authorizer = None  # not needed after the login; an idle session stays small
        if log.isEnabledFor(logging.DEBUG):  # skips making the adapter on every login
            self.log.debug("login %r, %d messages", outcome.name, len(opened.messages))
        connection.login_accepted(opened.messages, username=outcome.name)

    # -- messages and UPDATE -----------------------------------------------------------

    def _send_small_message(
        self, request: MessageRequest[StoredMessage]
    ) -> Coroutine[Any, Any, None] | None:
        """RETR or TOP answered in line, without a coroutine, when the message is small
        enough to be read at once (the usual case: a short read is cheaper than a trip to
        a thread). Returns what is left to run, if anything (see ``_reply``), or the whole
        job for a large message."""
        message = request.message
        if message.size > INLINE_READ_OCTETS:
            return self._send_message(request)
        assert self.maildrop is not None
        try:
            opened = _open_and_read(self.maildrop, message)
        except (OSError, StorageError) as error:
            self._message_unavailable(message, error)
            return None
        return self._reply(request, *opened)

    async def _send_message(self, request: MessageRequest[StoredMessage]) -> None:
        assert self.maildrop is not None
        try:
            # One trip opens the file and reads the first chunk.
            opened = await asyncio.to_thread(_open_and_read, self.maildrop, request.message)
        except (OSError, StorageError) as error:
            self._message_unavailable(request.message, error)
            return
        rest = self._reply(request, *opened)
        if rest is not None:
            await rest

    def _message_unavailable(self, message: StoredMessage, error: Exception) -> None:
        self.log.warning("cannot read %s: %s", message.key, error)
        self.connection.message_unavailable()

    def _reply(
        self,
        request: MessageRequest[StoredMessage],
        file: BinaryIO,
        chunk: bytes,
        complete: bool,
    ) -> Coroutine[Any, Any, None] | None:
        """Send the +OK line and ``chunk``, the first of ``file`` (``complete``: all of it).
        Returns what is left to run: the rest of the file, or a size correction."""
        try:
            self.connection.message_follows()
            encoder = MessageEncoder()
            top = TopFilter(request.body_lines) if request.body_lines is not None else None
            pending = self.connection.data_to_send()  # the +OK line goes out with the body
            if not self._send_chunk(encoder, top, chunk, complete, pending):
                return self._stream_rest(request, file, encoder, top)  # it closes the file
        except BaseException:
            file.close()
            raise
        file.close()
        return self._message_done(request, encoder, top)

    def _send_chunk(
        self,
        encoder: MessageEncoder,
        top: TopFilter | None,
        chunk: bytes,
        complete: bool,
        pending: bytes = b"",
    ) -> bool:
        """Send ``pending`` and ``chunk`` of the body; True when that ends the reply (the
        file ended, or TOP has its lines): then the end goes in the same write."""
        if top is not None:
            chunk = top.feed(chunk)
            complete = complete or top.done
        if complete:
            self._send(b"".join((pending, encoder.encode(chunk), encoder.finish())))
        else:
            self._send(pending + encoder.encode(chunk))
        return complete

    async def _stream_rest(
        self,
        request: MessageRequest[StoredMessage],
        file: BinaryIO,
        encoder: MessageEncoder,
        top: TopFilter | None,
    ) -> None:
        with file:
            complete = False
            while not complete:
                await self._drain()
                chunk = await asyncio.to_thread(_read_fully, file, READ_CHUNK)
                complete = self._send_chunk(encoder, top, chunk, len(chunk) < READ_CHUNK)
        rest = self._message_done(request, encoder, top)
        if rest is not None:
            await rest

    def _message_done(
        self,
        request: MessageRequest[StoredMessage],
        encoder: MessageEncoder,
        top: TopFilter | None,
    ) -> Coroutine[Any, Any, None] | None:
        """The reply is out (pipelined RETRs then wait for the transport in _process); a
        RETR that sent other than the listed size has the size corrected first."""
        message = request.message
        if top is None and encoder.octets != message.size:
            return self._correct_size(message, encoder.octets)
        self.connection.message_sent()
        return None

    async def _correct_size(self, message: StoredMessage, sent: int) -> None:
        self.log.warning(
            "size of %s was %d, sent %d octets; corrected", message.key, message.size, sent
        )
        maildrop = self.maildrop
        assert maildrop is not None
        await asyncio.to_thread(maildrop.correct_size, message, sent)
        self.connection.message_sent()

    async def _update(self, request: UpdateRequest[StoredMessage]) -> None:
        maildrop = self.maildrop
        assert maildrop is not None
        await self._index_written()
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

    def _unlock(self, maildrop: Maildrop) -> None:
        """Unlock now, or, while the login's index write is under way, in a thread once it
        is done (``unlock`` waits for it): the lock covers the write, so the next session
        finds the file, and the event loop does not wait."""
        write = self._index_write
        if write is not None and not write.done():
            self._loop.run_in_executor(None, maildrop.unlock)
        else:
            maildrop.unlock()

    async def _index_written(self) -> None:
        """Wait for the index write the login left, if it is still under way."""
        write = self._index_write
        if write is None:
            return
        try:
            await asyncio.shield(write)
        except Exception as error:  # write_index logs its own failures; this is not one
            self.log.error("writing the maildrop index failed: %s", error)
        self._index_write = None

    # -- output and flow control -----------------------------------------------------

    def _send(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self._octets_out += len(data)

    async def _drain(self) -> None:
        """Wait until the transport takes output again (the send timeout ends the wait)."""
        if self._write_blocked_since is None:
            return
        waiter = self._write_waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._write_waiter = None
        if self._eof:
            raise ConnectionResetError("connection lost while sending")

    def _wake_writer(self) -> None:
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
        self._process()

    def abort(self) -> None:
        """Shutdown deadline passed: close without UPDATE."""
        if self._task is not None:
            self._task.cancel()
        elif not self._finished:
            self._end_reason = "server shutdown"
            self._finish()

    async def wait_closed(self) -> None:
        if self._finished:
            return
        if self._closed_waiter is None:
            self._closed_waiter = self._loop.create_future()
        await asyncio.shield(self._closed_waiter)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()  # evicted, timed out or aborted while a handler waits
        if self.maildrop is not None:
            self._unlock(self.maildrop)
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
        log.info(
            "session=%s peer=%s end user=%r reason=%s tls=%s commands=%d retrieved=%d top=%d "
            "deleted=%d octets_out=%d seconds=%.3f",
            self.session_id,
            self.peer_text,
            self.user,
            self._end_reason,
            "yes" if self.tls_active else "no",
            counters.commands,
            counters.retrieved,
            counters.top,
            counters.deleted if self.connection.state is State.CLOSED else 0,
            self._octets_out,
            self._loop.time() - self._started,
        )
        self.context.sessions.discard(self)  # last: watchers see the end line first
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)


def _open_and_read(maildrop: Maildrop, message: StoredMessage) -> tuple[BinaryIO, bytes, bool]:
    """The open file, its first chunk and whether that is all of it. A file smaller than a
    chunk is read into a buffer of its own size (a 256 KiB buffer per message would cost
    an mmap and page faults); reading the size fstat gave is reading all of it."""
    file = maildrop.open(message)
    try:
        size = _file_size(file)
        if size is None or size >= READ_CHUNK:
            chunk = _read_fully(file, READ_CHUNK)
            return file, chunk, len(chunk) < READ_CHUNK
        chunk = _read_fully(file, size + 1, whole=size)  # one more: a longer file shows
        return file, chunk, len(chunk) <= size
    except BaseException:
        file.close()
        raise


def _read_fully(file: BinaryIO, wanted: int, whole: int = -1) -> bytes:
    """``wanted`` octets, or fewer only at the end of the file: an unbuffered file may
    return a short read, and a short read is taken for the end of the message. A first
    read of ``whole`` octets (the file's size) is returned as it is."""
    chunk = file.read(wanted)
    if len(chunk) >= wanted or len(chunk) == whole or not chunk:
        return chunk
    parts = [chunk]
    got = len(chunk)
    while got < wanted:
        more = file.read(wanted - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _file_size(file: BinaryIO) -> int | None:
    try:
        return os.fstat(file.fileno()).st_size
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
