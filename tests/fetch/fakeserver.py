"""An in-process POP3 server for fetcher tests, with fault injection.

The TRANSACTION state is postoffice's own pure ``ServerConnection``; AUTHORIZATION is
handled here, because the fetcher needs what the pure machine does not offer yet: STLS,
SASL PLAIN/LOGIN, APOP, a CAPA without PIPELINING. Faults (``Faults``) drop the connection
before, inside or after the n-th RETR of a session, before QUIT's ``+OK`` (with or without
committing), or stall on a command. The mailbox and counters persist across sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from postoffice.proto.events import (
    NEED_DATA,
    ApopLogin,
    CloseConnection,
    MessageRequest,
    PasswordLogin,
    UpdateRequest,
)
from postoffice.proto.framing import MessageEncoder, TopFilter
from postoffice.proto.server import ServerConnection
from postoffice.sasl.channel import ChannelBinding
from postoffice.sasl.events import (
    NO_CREDENTIALS,
    Challenge,
    Failure,
    LookupScram,
    PasswordVerdict,
    Success,
    TokenAccepted,
    TokenRejected,
    ValidateToken,
    VerifyPassword,
)
from postoffice.sasl.framing import (
    CANCEL,
    challenge_line,
    decode_initial_response,
    decode_response,
)
from postoffice.sasl.mechanism import ServerOptions
from postoffice.sasl.registry import server_mechanism
from postoffice.sasl.scram import make_credentials
from tests.proto.driver import Message

FakeMessage = Message  # a message of the fake server: uid, data, exact size


@dataclass
class Faults:
    drop_before_retr: int | None = None
    """Close when the n-th RETR of a session arrives, before answering it."""
    drop_inside_retr: int | None = None
    """Send +OK and half the n-th body, then close."""
    drop_after_retr: int | None = None
    """Send the whole n-th body, then close."""
    drop_before_quit_ok: bool = False
    """QUIT in TRANSACTION: close without UPDATE (nothing deleted)."""
    commit_then_drop: bool = False
    """QUIT in TRANSACTION: delete, then close without the +OK."""
    stall_on: str | None = None
    """Never answer this command (and nothing after it)."""
    inject_after_stls: bytes = b""
    """Octets sent right after STLS's +OK, before the handshake."""
    wrong_size: int = 0
    """Added to every LIST size (a server that counts wrongly)."""


@dataclass
class FakePop3Server:
    messages: list[FakeMessage] = field(default_factory=list)
    user: str = "alice"
    password: str = "secret"
    pipelining: bool = True
    uidl: bool = True
    sasl: tuple[str, ...] = ("PLAIN", "LOGIN")
    """Offered mechanisms; any of postoffice.sasl's (a token equal to the password is valid)."""
    apop: bool = False
    login_delay: int | None = None
    channel_bindings: tuple[ChannelBinding, ...] = ()
    """The TLS bindings of the fake's certificate, for SCRAM-SHA-256-PLUS."""
    stls_context: ssl.SSLContext | None = None
    implicit_context: ssl.SSLContext | None = None
    faults: Faults = field(default_factory=Faults)
    retrieved: Counter[str] = field(default_factory=Counter)
    deleted: list[str] = field(default_factory=list)
    sessions: int = 0
    logins: list[str] = field(default_factory=list)
    on_line: Callable[[bytes], None] | None = None
    """Called with each command line of the TRANSACTION state, before it is handled."""
    on_dele: Callable[[str], None] | None = None
    """Called with the UIDL when a DELE arrives, before it is answered."""
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self.implicit_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def uids(self) -> list[str]:
        return [message.uid for message in self.messages]

    # -- one session -------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.sessions += 1
        try:
            method = await self._authorization(reader, writer)
            if method is not None:
                self.logins.append(method)
                await self._transaction(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)

    def _capabilities(self) -> bytes:
        tags = ["TOP", "USER", "RESP-CODES", "AUTH-RESP-CODE", "EXPIRE NEVER"]
        if self.uidl:
            tags.append("UIDL")
        if self.pipelining:
            tags.append("PIPELINING")
        if self.sasl:
            tags.append("SASL " + " ".join(self.sasl))
        if self.stls_context is not None:
            tags.append("STLS")
        if self.login_delay is not None:
            tags.append(f"LOGIN-DELAY {self.login_delay}")
        return ("+OK capabilities\r\n" + "".join(t + "\r\n" for t in tags) + ".\r\n").encode()

    async def _authorization(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> str | None:
        timestamp = f"<{self.sessions}.42@fake>"
        writer.write(b"+OK fake ready" + (f" {timestamp}".encode() if self.apop else b"") + b"\r\n")
        given_user: str | None = None
        while True:
            line = (await reader.readline()).rstrip(b"\r\n").decode()
            if not line and reader.at_eof():
                return None
            keyword, _, argument = line.partition(" ")
            keyword = keyword.upper()
            ok = False
            if keyword == "CAPA":
                writer.write(self._capabilities())
            elif keyword == "STLS" and self.stls_context is not None:
                writer.write(b"+OK begin TLS\r\n" + self.faults.inject_after_stls)
                await writer.drain()
                await writer.start_tls(self.stls_context)
            elif keyword == "USER":
                given_user = argument
                writer.write(b"+OK\r\n")
            elif keyword == "PASS":
                ok = given_user == self.user and argument == self.password
                if ok:
                    return "user"
            elif keyword == "APOP" and self.apop:
                name, _, digest = argument.partition(" ")
                expected = hashlib.md5((timestamp + self.password).encode()).hexdigest()  # noqa: S324
                if name == self.user and digest == expected:
                    return "apop"
            elif keyword == "AUTH" and argument.partition(" ")[0].upper() in self.sasl:
                if await self._sasl(argument, reader, writer):
                    return argument.partition(" ")[0].lower()
            elif keyword == "QUIT":
                writer.write(b"+OK bye\r\n")
                await writer.drain()
                return None
            else:
                writer.write(b"-ERR not here\r\n")
                continue
            if keyword in ("PASS", "APOP", "AUTH") and not ok:
                writer.write(b"-ERR [AUTH] authentication failed\r\n")
            await writer.drain()

    async def _sasl(
        self, argument: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """AUTH with postoffice's own server-side SASL machines (RFC 5034 §4)."""
        name, _, initial_text = argument.partition(" ")
        options = ServerOptions(channel_bindings=self.channel_bindings)
        mechanism = server_mechanism(name, options, enabled=frozenset(self.sasl))
        initial = decode_initial_response(initial_text.encode()) if initial_text else None
        step = mechanism.start(initial)
        while True:
            if isinstance(step, Challenge):
                writer.write(challenge_line(step.data))
                response = decode_response((await reader.readline()).rstrip(b"\r\n"))
                step = mechanism.cancel() if response is CANCEL else mechanism.receive(response)
            elif isinstance(step, VerifyPassword):
                ok = step.authcid == self.user and step.password.reveal() == self.password
                step = mechanism.answer(PasswordVerdict(ok=ok))
            elif isinstance(step, LookupScram):
                found = step.authcid == self.user
                step = mechanism.answer(
                    make_credentials("sha256", self.password.encode(), b"fake-salt", 4096)
                    if found
                    else NO_CREDENTIALS
                )
            elif isinstance(step, ValidateToken):
                ok = step.token.reveal() == self.password
                step = mechanism.answer(
                    TokenAccepted(identity=self.user) if ok else TokenRejected()
                )
            elif isinstance(step, Success):
                return True
            else:
                assert isinstance(step, Failure)
                return False

    async def _transaction(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        faults = self.faults
        connection: ServerConnection[_Sized] = ServerConnection()
        # Authorization happened above; walk the pure machine into TRANSACTION.
        connection.receive_data(b"USER fake\r\nPASS fake\r\n")
        event = connection.next_event()
        assert isinstance(event, PasswordLogin), event
        snapshot = _Sized.wrap(self.messages, faults.wrong_size)
        connection.login_accepted(snapshot)
        connection.data_to_send()  # the pure machine's greeting and USER/PASS replies
        writer.write(b"+OK logged in\r\n")
        await writer.drain()
        retr = 0
        while True:
            line = await reader.readline()
            if not line:
                return
            if self.on_line is not None:
                self.on_line(line)
            keyword = line.split(b" ", 1)[0].strip().upper().decode(errors="replace")
            if keyword == faults.stall_on:
                await asyncio.Event().wait()
            if keyword == "DELE" and self.on_dele is not None:
                number = int(line.split()[1])
                self.on_dele(snapshot[number - 1].uid)
            if keyword == "UIDL" and not self.uidl:
                writer.write(b"-ERR no UIDL here\r\n")
                continue
            connection.receive_data(line)
            while (event := connection.next_event()) is not NEED_DATA:
                writer.write(connection.data_to_send())
                if isinstance(event, CloseConnection):
                    await writer.drain()
                    return
                if isinstance(event, MessageRequest):
                    if event.body_lines is None:
                        retr += 1
                        if retr == faults.drop_before_retr:
                            return
                    message = event.message.message
                    encoder = MessageEncoder()
                    data = message.data
                    if event.body_lines is not None:
                        data = TopFilter(event.body_lines).feed(data)
                    body = encoder.encode(data) + encoder.finish()
                    connection.message_follows()
                    writer.write(connection.data_to_send())
                    if event.body_lines is None and retr == faults.drop_inside_retr:
                        writer.write(body[: len(body) // 2])
                        await writer.drain()
                        return
                    writer.write(body)
                    connection.message_sent()
                    if event.body_lines is None:
                        self.retrieved[message.uid] += 1
                        if retr == faults.drop_after_retr:
                            await writer.drain()
                            return
                elif isinstance(event, UpdateRequest):
                    if faults.drop_before_quit_ok:
                        return
                    gone = {sized.message.uid for sized in event.deleted}
                    self.deleted.extend(sorted(gone))
                    self.messages = [m for m in self.messages if m.uid not in gone]
                    if faults.commit_then_drop:
                        return
                    connection.update_done(removed_all=True, remaining=len(self.messages))
                elif isinstance(event, ApopLogin | PasswordLogin):  # pragma: no cover
                    raise AssertionError("login events after login")
            writer.write(connection.data_to_send())
            await writer.drain()


@dataclass(frozen=True, slots=True)
class _Sized:
    """A message whose LIST size may be off by ``error`` (a server that counts wrongly)."""

    message: FakeMessage
    error: int

    @property
    def uid(self) -> str:
        return self.message.uid

    @property
    def size(self) -> int:
        return self.message.size + self.error

    @staticmethod
    def wrap(messages: list[FakeMessage], error: int) -> list[_Sized]:
        return [_Sized(message, error) for message in messages]
