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
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import BinaryIO

from postoffice.auth.authenticator import Authenticator
from postoffice.auth.base import UserRecord
from postoffice.auth.throttle import FailureThrottle
from postoffice.config import Config
from postoffice.errors import AuthError, MaildropInUseError, PostofficeError, StorageError
from postoffice.proto.events import (
    NEED_DATA,
    ApopLogin,
    CloseConnection,
    MessageRequest,
    PasswordLogin,
    UpdateRequest,
)
from postoffice.proto.framing import MessageEncoder, TopFilter
from postoffice.proto.replies import ResponseCode, err
from postoffice.proto.server import LoginFailure, ServerConnection, ServerSettings
from postoffice.proto.states import State
from postoffice.secret import Secret
from postoffice.server.limits import ConnectionLimits
from postoffice.storage.base import Maildrop, StoredMessage
from postoffice.storage.maildir import MaildirMaildrop
from postoffice.storage.paths import maildir_for

log = logging.getLogger(__name__)

MAX_UNPARSED = 65536
READ_CHUNK = 256 * 1024
LAST_LOGIN_FILE = "postoffice-last-login"
_FINGERPRINT_KEY = secrets.token_bytes(32)  # so failed-password fingerprints mean nothing outside


@dataclass(slots=True)
class ServerContext:
    """What every session shares: configuration, users, throttling and counts."""

    config: Config
    authenticator: Authenticator
    throttle: FailureThrottle
    limits: ConnectionLimits
    sessions: set[Pop3Session]
    hostname: str = socket.gethostname()

    def settings_for_session(self) -> ServerSettings:
        pop3 = self.config.pop3
        timestamp = None
        if pop3.apop:
            timestamp = f"<{os.getpid()}.{secrets.token_hex(8)}@{self.hostname}>"
        return ServerSettings(
            greeting=pop3.greeting,
            apop_timestamp=timestamp,
            expire=pop3.expire,
            login_delay=int(pop3.login_delay) if pop3.login_delay else None,
            implementation=pop3.implementation or None,
            max_line_octets=pop3.max_line_length,
            max_bad_commands=pop3.max_bad_commands,
            max_login_failures=pop3.max_login_failures,
        )


class _SessionLog(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: str, kwargs: object) -> tuple[str, object]:  # type: ignore[override]
        assert self.extra is not None
        return f"session={self.extra['session']} peer={self.extra['peer']} {msg}", kwargs


class Pop3Session(asyncio.Protocol):
    """Serves one client connection."""

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.connection: ServerConnection[StoredMessage] = ServerConnection(
            context.settings_for_session()
        )
        self.transport: asyncio.Transport | None = None
        self.peer_ip = "?"
        self.log: _SessionLog = _SessionLog(log, {"session": secrets.token_hex(4), "peer": "?"})
        self.maildrop: Maildrop | None = None
        self.user: str | None = None
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
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if isinstance(peer, tuple) else "local"
        peer_text = f"[{self.peer_ip}]:{peer[1]}" if isinstance(peer, tuple) else "local"
        self.log = _SessionLog(log, {"session": self.log.extra["session"], "peer": peer_text})  # type: ignore[index]
        if not self.context.limits.admit_connection(self.peer_ip):
            self.log.warning("refused: too many connections")
            transport.write(err("too many connections, try again later", ResponseCode.SYS_TEMP))
            transport.close()
            return
        self._admitted = True
        self.context.sessions.add(self)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self.connection.receive_data(data)
        self._data_ready.set()
        if self.connection.buffered > MAX_UNPARSED:
            self._pause_reading()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._data_ready.set()
        return None

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
            await self._serve()
        except TimeoutError:
            self._end_reason = "timed out"
        except asyncio.CancelledError:
            self._end_reason = "server shutdown"
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
                timeout = (
                    self.context.config.limits.idle_timeout
                    if connection.state is State.TRANSACTION
                    else self.context.config.limits.login_timeout
                )
                async with asyncio.timeout(timeout):
                    await self._data_ready.wait()
            elif isinstance(event, CloseConnection):
                self._end_reason = event.reason
                self._send(connection.data_to_send())
                return
            elif isinstance(event, PasswordLogin):
                await self._login(event.username, event.password, apop=None)
            elif isinstance(event, ApopLogin):
                await self._login(event.username, None, apop=event)
            elif isinstance(event, MessageRequest):
                await self._send_message(event)
            elif isinstance(event, UpdateRequest):
                await self._update(event)

    async def _login(self, username: str, password: Secret | None, apop: ApopLogin | None) -> None:
        context = self.context
        delay = context.throttle.delay_for(self.peer_ip)
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            if apop is not None:
                record = await context.authenticator.verify_apop(
                    username, apop.timestamp, apop.digest
                )
                fingerprint = apop.digest.encode()
            else:
                assert password is not None
                record = await context.authenticator.verify(username, password)
                fingerprint = hashlib.blake2b(
                    password.reveal().encode("utf-8", "surrogateescape"), key=_FINGERPRINT_KEY
                ).digest()
        except AuthError as error:
            self.log.error("user database unavailable: %s", error)
            self.connection.login_rejected(LoginFailure.TEMPORARY)
            return
        if record is None:
            context.throttle.record_failure(self.peer_ip, username, fingerprint)
            self.log.info("login failed for %r", username)
            self.connection.login_rejected(LoginFailure.BAD_CREDENTIALS)
            return
        context.throttle.record_success(self.peer_ip)
        if not context.limits.admit_user(record.name):
            self.connection.login_rejected(LoginFailure.IN_USE)
            return
        self._user_admitted = True
        self.user = record.name
        failure = await self._open_maildrop(record)
        if failure is not None:
            context.limits.release_user(record.name)
            self._user_admitted = False
            self.connection.login_rejected(failure)

    async def _open_maildrop(self, record: UserRecord) -> bytes | None:
        """Lock and list the user's maildrop; a ``LoginFailure`` line if that fails."""
        config = self.context.config
        try:
            path = maildir_for(config.mail.maildir, data_dir=config.data_dir, user=record)
        except PostofficeError as error:
            self.log.error("no maildrop for %r: %s", record.name, error)
            return LoginFailure.PERMANENT
        maildrop = MaildirMaildrop(path, flag_updates=not config.mail.no_flag_updates)
        try:
            messages = await asyncio.to_thread(self._lock_and_list, maildrop)
        except MaildropInUseError:
            self.log.info("maildrop of %r is in use", record.name)
            return LoginFailure.IN_USE
        except _LoginTooSoon:
            maildrop.unlock()
            return LoginFailure.LOGIN_DELAY
        except (OSError, StorageError) as error:
            maildrop.unlock()
            self.log.error("cannot open maildrop of %r: %s", record.name, error)
            return LoginFailure.TEMPORARY
        self.maildrop = maildrop
        self.log.info("login %r, %d messages", record.name, len(messages))
        self.connection.login_accepted(messages)
        return None

    def _lock_and_list(self, maildrop: MaildirMaildrop) -> list[StoredMessage]:
        maildrop.lock()
        delay = self.context.config.pop3.login_delay
        if delay:
            marker = maildrop.path / LAST_LOGIN_FILE
            now = time.time()
            try:
                last = marker.stat().st_mtime
            except FileNotFoundError:
                last = 0.0
            if now - last < delay:
                raise _LoginTooSoon
            marker.touch()
            os.utime(marker, (now, now))
        return maildrop.snapshot()

    async def _send_message(self, request: MessageRequest[StoredMessage]) -> None:
        maildrop = self.maildrop
        assert maildrop is not None
        message = request.message
        try:
            file = await asyncio.to_thread(maildrop.open, message)
        except (OSError, StorageError) as error:
            self.log.warning("cannot read %s: %s", message.key, error)
            self.connection.message_unavailable()
            return
        with file:
            self.connection.message_follows()
            await self._stream(file, request, message)
        self.connection.message_sent()

    async def _stream(
        self, file: BinaryIO, request: MessageRequest[StoredMessage], message: StoredMessage
    ) -> None:
        encoder = MessageEncoder()
        top = TopFilter(request.body_lines) if request.body_lines is not None else None
        self._send(self.connection.data_to_send())
        while True:
            chunk = await asyncio.to_thread(file.read, READ_CHUNK)
            if not chunk:
                break
            if top is not None:
                chunk = top.feed(chunk)
            self._send(encoder.encode(chunk))
            if not self._can_write.is_set():
                await self._drain()
            if top is not None and top.done:
                break
        self._send(encoder.finish())
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
            result = await asyncio.to_thread(
                maildrop.commit, deleted=request.deleted, retrieved=request.retrieved
            )
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
        async with asyncio.timeout(self.context.config.limits.send_timeout):
            await self._can_write.wait()
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
            self.context.limits.release_user(self.user)
            self._user_admitted = False
        if self.transport is not None:
            self._send(self.connection.data_to_send())
            self.transport.close()
        if self._admitted:
            self.context.limits.release_connection(self.peer_ip)
            self._admitted = False
        self.context.sessions.discard(self)
        counters = self.connection.counters
        self.log.info(
            "end user=%r reason=%s commands=%d retrieved=%d top=%d deleted=%d octets_out=%d "
            "seconds=%.3f",
            self.user,
            self._end_reason,
            counters.commands,
            counters.retrieved,
            counters.top,
            counters.deleted if self.connection.state is State.CLOSED else 0,
            self._octets_out,
            time.monotonic() - self._started,
        )


class _LoginTooSoon(Exception):
    """LOGIN-DELAY: the last login to this maildrop was too recent."""
