"""The asyncio side of a POP3 client connection: sockets, TLS, timeouts.

``Pop3Client`` moves octets between an asyncio stream and the pure
``proto.client.ClientConnection``; it never parses POP3 itself. ``connect`` opens the
connection the account asks for:

* ``implicit``: TLS from the first octet (RFC 8314);
* ``starttls``: greeting, ``STLS``, handshake (RFC 2595). A refused STLS is an error:
  the fetcher never falls back to cleartext. Octets that arrive between ``+OK`` and the
  handshake are an injection attempt and end the session;
* ``none``: cleartext (the configuration allows it only on loopback or with ``insecure``).

Certificates are verified against the system store or ``ca_file``, host name included; with
``fingerprint`` the SHA-256 of the certificate is compared instead. Only public asyncio APIs
are used (``create_connection``, ``loop.start_tls``, ``asyncio.timeout``). Foreign errors
are mapped to ``fetch.errors`` here, in one place.

The octets the server sends go from the transport's ``data_received`` straight into the
machine's buffer (``_Receiver``): a ``StreamReader`` would copy each message twice more on
the way. So everything received before STLS ``+OK`` is answered is in that buffer when the
handshake starts, where ``take_unread`` sees it. Reading pauses while more than
``MAX_UNPARSED`` octets wait there (the transfer waits for the disk at times) and resumes
when the machine needs more.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ssl
from collections.abc import AsyncIterator

from postoffice.errors import RemoteProtocolError
from postoffice.fetch.config import Account, TlsMode
from postoffice.fetch.errors import (
    CertificateError,
    FetchConnectionError,
    FetchTimeoutError,
    ServerRefusedError,
)
from postoffice.proto.client import ClientConnection
from postoffice.proto.client_events import (
    NEED_DATA,
    PAUSED,
    BodyData,
    ClientEvent,
    Greeting,
    MultilineEnd,
    MultilineStart,
    Reply,
    Request,
    SaslResponse,
)

__all__ = ["Pop3Client", "client_context", "connect"]

_CHUNK = 1 << 18  # the largest BodyData: fewer, larger steps for large messages
MAX_UNPARSED = 1 << 20
"""Reading pauses while more octets than this are received but not parsed yet."""
MAX_LISTING_OCTETS = 64 << 20  # a UIDL listing of a million messages fits easily


def client_context(account: Account) -> ssl.SSLContext:
    """A verifying client context, or a non-verifying one when a fingerprint pin replaces
    the CA check (the pin is then checked by ``connect`` before anything is sent)."""
    if account.fingerprint is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        cafile = str(account.ca_file) if account.ca_file is not None else None
        context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _unverified_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _Receiver(asyncio.Protocol):
    """Feeds the octets of one connection to its ``ClientConnection`` as they arrive."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.transport: asyncio.Transport | None = None
        self.reading_paused = False
        self.lost: Exception | None = None
        """Why the connection broke (a reset...): raised once what arrived is parsed."""
        self._arrived: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.connection.receive_data(data)
        if (
            not self.reading_paused
            and self.transport is not None
            and self.connection.unparsed > MAX_UNPARSED
        ):
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.connection.receive_data(b"")
        self._wake()
        return False  # close the transport: POP3 has no half-closed state

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self.connection.receive_data(b"")  # a clean end: the machine judges it
        else:
            self.lost = exc if isinstance(exc, OSError) else ConnectionError(str(exc))
        self._wake()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def _wake(self) -> None:
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)

    async def arrival(self) -> None:
        """Until more octets (or the end of the connection) arrive."""
        if self.lost is not None:
            raise self.lost
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        self._arrived = asyncio.get_running_loop().create_future()
        try:
            await self._arrived
        finally:
            self._arrived = None

    async def writable(self) -> None:
        """Until the transport's write buffer is below its high-water mark."""
        if self.lost is not None:
            raise self.lost
        if self._writable is not None:
            await self._writable


class Pop3Client:
    """One connection: a ``ClientConnection`` driven over an asyncio transport."""

    def __init__(
        self, transport: asyncio.Transport, receiver: _Receiver, *, timeout: float
    ) -> None:
        self.connection = receiver.connection
        self._transport = transport
        self._receiver = receiver
        self.timeout = timeout
        self.greeted_with: Greeting | None = None

    @contextlib.asynccontextmanager
    async def _io(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except TimeoutError as error:
            raise FetchTimeoutError(
                f"no answer within {self.timeout:.0f}s while {what} (raise timeout?)"
            ) from error
        except (ConnectionError, OSError) as error:
            raise FetchConnectionError(f"connection lost while {what}: {error}") from error

    async def send(self, *requests: Request | SaslResponse) -> None:
        data = b"".join(self.connection.send(request) for request in requests)
        try:
            async with self._io("sending"):
                if self._transport.is_closing():
                    raise ConnectionResetError("the connection is closed")
                self._transport.write(data)
                await self._receiver.writable()
        except FetchConnectionError:
            # Replies already received are still worth reading (a whole message may be
            # waiting); the lost connection shows up as end of file when reading.
            pass

    async def next_event(self) -> ClientEvent:
        """The next event, reading from the server as needed."""
        while True:
            event = self.connection.next_event()
            if event is not NEED_DATA:
                return event
            await self.more_data()

    def parsed_event(self) -> ClientEvent:
        """The next event among the octets received so far, or ``NEED_DATA``: then
        ``more_data`` waits for more."""
        return self.connection.next_event()

    async def more_data(self) -> None:
        """Until more octets (or the end of the connection) arrive, within the timeout."""
        async with self._io("waiting for the server"):
            await self._receiver.arrival()

    async def greeting(self) -> Greeting:
        event = await self.next_event()
        if not isinstance(event, Greeting):  # pragma: no cover - the machine guarantees it
            raise RemoteProtocolError("no greeting")
        if not event.ok:
            raise ServerRefusedError(f"the server greeted with -ERR: {event.text}")
        self.greeted_with = event
        return event

    async def reply(self) -> Reply:
        """The next event, which must be a single-line reply."""
        event = await self.next_event()
        if not isinstance(event, Reply):
            raise RemoteProtocolError(f"expected a single-line reply, got {type(event).__name__}")
        return event

    async def command(self, request: Request) -> Reply:
        await self.send(request)
        return await self.reply()

    async def collect(self, limit: int = MAX_LISTING_OCTETS) -> bytes | Reply:
        """The next reply: a whole multi-line body, or the ``-ERR`` reply instead."""
        event = await self.next_event()
        if isinstance(event, Reply):
            return event
        if not isinstance(event, MultilineStart):
            raise RemoteProtocolError(f"expected a multi-line reply, got {type(event).__name__}")
        body = bytearray()
        while True:
            event = await self.next_event()
            if isinstance(event, BodyData):
                body += event.data
                if len(body) > limit:
                    raise RemoteProtocolError(f"multi-line reply longer than {limit} octets")
            elif isinstance(event, MultilineEnd):
                return bytes(body)
            else:  # pragma: no cover - the machine guarantees the order
                raise RemoteProtocolError(f"unexpected {type(event).__name__} in a body")

    async def start_tls(self, context: ssl.SSLContext, host: str) -> None:
        """After STLS ``+OK``: refuse injected octets, then run the handshake."""
        if self.connection.next_event() is not PAUSED:  # pragma: no cover
            raise RemoteProtocolError("STLS was not accepted")
        if self.connection.take_unread():
            raise RemoteProtocolError("the server sent data after STLS +OK (injection?)")
        loop = asyncio.get_running_loop()
        async with self._io("starting TLS"):
            transport = await loop.start_tls(
                self._transport, self._receiver, context, server_hostname=host
            )
        if transport is None:  # pragma: no cover - only for a transport closed meanwhile
            raise FetchConnectionError("connection lost while starting TLS")
        self._transport = self._receiver.transport = transport
        self.connection.tls_started()

    def peer_certificate(self) -> bytes | None:
        ssl_object = self._transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        der: bytes | None = ssl_object.getpeercert(binary_form=True)
        return der

    async def close(self) -> None:
        """Close without QUIT: the server then commits nothing (RFC 1939 §6)."""
        self._transport.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.shield(self._receiver.closed)


async def _open(account: Account, context: ssl.SSLContext | None) -> Pop3Client:
    implicit = account.tls is TlsMode.IMPLICIT
    receiver = _Receiver(ClientConnection(max_chunk=_CHUNK))
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(account.timeout):
            transport, _ = await loop.create_connection(
                lambda: receiver,
                account.host,
                account.port,
                ssl=context if implicit else None,
                server_hostname=account.host if implicit else None,
            )
    except TimeoutError as error:
        raise FetchTimeoutError(
            f"cannot connect to {account.host}:{account.port} within {account.timeout:.0f}s"
        ) from error
    except ssl.SSLCertVerificationError:
        raise
    except (OSError, ssl.SSLError) as error:
        raise FetchConnectionError(
            f"cannot connect to {account.host}:{account.port}: {error}"
        ) from error
    client = Pop3Client(transport, receiver, timeout=account.timeout)
    try:
        await client.greeting()
        if account.tls is TlsMode.STARTTLS:
            reply = await client.command(Request(keyword="STLS"))
            if not reply.ok:
                raise FetchConnectionError(
                    f"{account.host} refused STLS ({reply.text}); postoffice never falls back "
                    f'to cleartext: try tls = "implicit" (usually port 995)'
                )
            assert context is not None
            await client.start_tls(context, account.host)
    except BaseException:
        await client.close()
        raise
    return client


async def _probe_fingerprint(account: Account) -> str | None:
    """The server's certificate fingerprint, read without verifying (for error advice)."""
    try:
        client = await _open(account, _unverified_context())
    except Exception:
        return None
    der = client.peer_certificate()
    await client.close()
    return hashlib.sha256(der).hexdigest() if der else None


async def connect(account: Account) -> Pop3Client:
    """A connection ready for CAPA and login, secured as the account asks."""
    context = None if account.tls is TlsMode.NONE else client_context(account)
    try:
        client = await _open(account, context)
    except (ssl.SSLCertVerificationError, FetchConnectionError) as error:
        cause = error if isinstance(error, ssl.SSLCertVerificationError) else error.__cause__
        if not isinstance(cause, ssl.SSLCertVerificationError):
            raise
        seen = await _probe_fingerprint(account)
        advice = 'set ca_file = "..." to the CA that signed it, or pin it with fingerprint = '
        advice += f'"sha256:{seen}"' if seen else '"sha256:..."'
        raise CertificateError(
            f"the certificate of {account.host}:{account.port} failed verification "
            f"({cause.verify_message}); if you trust this server, {advice}"
        ) from error
    if account.fingerprint is not None:
        der = client.peer_certificate()
        seen = hashlib.sha256(der).hexdigest() if der else ""
        if not hmac.compare_digest(seen, account.fingerprint):
            await client.close()
            raise CertificateError(
                f"the certificate of {account.host}:{account.port} does not match the pinned "
                f"fingerprint (it is sha256:{seen}); if the server changed its certificate "
                f"on purpose, update fingerprint"
            )
    return client
