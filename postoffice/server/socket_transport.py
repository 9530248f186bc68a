"""POP3 connections without asyncio's socket transport: a listener and a lean transport.

Theory of operation
-------------------
asyncio's ``create_server`` accepts a connection with a task and a future of its own,
three scheduled callbacks, a registry of weak references and two socket-name lookups, and
its transport keeps a dictionary of attributes: on a login storm that machinery cost
about as much CPU as the POP3 work of a session, and about 1.3 KiB per idle connection.
``SocketListener`` accepts in its reader callback, a few connections per wake-up (so
that worker processes sharing the socket share a burst too), and ``SocketTransport``
tells the protocol and starts reading right there.

The connections' sockets are not registered with the loop one by one: a
``ConnectionPoller`` keeps them in an epoll set of its own and is itself one reader of
the loop. Adding a socket to it, or taking one out, is one ``epoll_ctl`` and a dictionary
entry (the loop's ``add_reader`` makes a handle, a context copy, a selector key and checks
a weak registry, about 12 us and 300 octets per connection), and a wake-up hands each ready
socket straight to its transport.

``SocketTransport`` is an ``asyncio.Transport`` with the semantics sessions rely on:

- reading feeds a ``BufferedProtocol`` (``get_buffer``/``buffer_updated``) or a plain
  one (``data_received``); ``pause_reading``/``resume_reading`` stop and start watching
  the socket for input; the end of input calls ``eof_received``, and a true answer keeps the
  write side open (a half-closed client still gets its replies);
- ``write`` sends at once and buffers only what the socket did not take, with
  ``pause_writing``/``resume_writing`` at the high and low water marks;
- ``close`` sends what is buffered first; ``abort`` drops it; ``connection_lost`` is
  called once, from the loop, after which the socket is closed;
- ``loop.start_tls`` can wrap it (``_start_tls_compatible``, ``set_protocol`` and
  ``_force_close`` are what asyncio's TLS layer uses), for STLS and POP3S.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import select
import socket
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

ACCEPT_BATCH = 16
"""Connections taken per wake-up: several worker processes on one socket share a burst."""
ACCEPT_RETRY_SECONDS = 1.0
"""After accept fails (no descriptors or memory left), accepting pauses this long."""
# Errors of one pending connection that Linux reports from accept() itself (accept(2)):
# that connection is gone, the next one may be fine.
_CONNECTION_ERRORS = frozenset(
    getattr(errno, name)
    for name in (
        "ENETDOWN",
        "EPROTO",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "EPERM",
    )
    if hasattr(errno, name)
)
_RECEIVE_OCTETS = 256 * 1024  # one read for a protocol without a buffer of its own
HIGH_WATER_OCTETS = 64 * 1024  # asyncio's defaults
LOW_WATER_OCTETS = HIGH_WATER_OCTETS // 4
POLL_EVENTS = 256
"""Ready sockets handled per wake-up; the rest are reported again on the next one."""
_READABLE = select.EPOLLIN
_WRITABLE = select.EPOLLOUT


class ConnectionPoller:
    """The sockets of many transports in one epoll set, watched by the loop as one reader.

    Level-triggered, like the loop's own selector: a socket stays ready until its
    transport has read (or written) what there is. The epoll set is made with the first
    socket and kept, so that connections one after another do not each make and register
    a new one; ``close`` ends it once its last socket has left."""

    __slots__ = ("_closing", "_epoll", "_loop", "_watched")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._epoll: select.epoll | None = None
        self._watched: dict[int, SocketTransport] = {}
        self._closing = False

    def __len__(self) -> int:
        return len(self._watched)

    def set_events(self, transport: SocketTransport, events: int) -> None:
        """Watch ``transport``'s socket for ``events`` (EPOLLIN, EPOLLOUT; 0: not at all)."""
        before = transport._events
        if events == before:
            return
        fd = transport._fd
        epoll = self._epoll
        if not before:
            if epoll is None:
                epoll = self._epoll = select.epoll()
                self._loop.add_reader(epoll.fileno(), self._poll)
            epoll.register(fd, events)
            self._watched[fd] = transport
        elif events:
            assert epoll is not None
            epoll.modify(fd, events)
        else:
            assert epoll is not None
            del self._watched[fd]
            with contextlib.suppress(OSError):  # closed behind the transport's back
                epoll.unregister(fd)
            if self._closing and not self._watched:
                self._close_epoll()
        transport._events = events

    def close(self) -> None:
        """Close the epoll set when no socket is left in it (now, if none is)."""
        self._closing = True
        if not self._watched:
            self._close_epoll()

    def _close_epoll(self) -> None:
        epoll, self._epoll = self._epoll, None
        if epoll is not None:
            self._loop.remove_reader(epoll.fileno())
            epoll.close()

    def _poll(self) -> None:
        epoll = self._epoll
        if epoll is None:
            return
        try:
            ready = epoll.poll(0, POLL_EVENTS)
        except InterruptedError:
            return
        watched = self._watched
        for fd, events in ready:
            # Hang-ups and errors go to both sides, as the loop's selector does.
            transport = watched.get(fd)
            if transport is None:
                continue  # taken out by an earlier socket's handling in this wake-up
            try:
                if events & ~_WRITABLE and transport._events & _READABLE:
                    transport._read_ready()
                if events & ~_READABLE and transport._events & _WRITABLE:
                    transport._write_ready()
            except Exception as error:
                self._loop.call_exception_handler(
                    {
                        "message": "connection handling failed",
                        "exception": error,
                        "transport": transport,
                    }
                )
                transport._force_close(error)


class SocketTransport(asyncio.Transport):
    """A connected, non-blocking stream socket driven by the loop's reader and writer."""

    __slots__ = (
        "_buffer",
        "_buffered",
        "_closing",
        "_eof",
        "_eof_written",
        "_events",
        "_fd",
        "_flush_timeout",
        "_high",
        "_loop",
        "_lost",
        "_low",
        "_peername",
        "_poller",
        "_protocol",
        "_read_paused",
        "_sock",
        "_writing_paused",
    )

    _start_tls_compatible = True

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        peername: Any,
        poller: ConnectionPoller,
        *,
        flush_timeout: float | None = None,
    ) -> None:
        """``poller`` watches the socket. ``flush_timeout``: how long ``close`` waits for
        the peer to take what is still buffered before dropping it (None: as long as it
        takes, as asyncio does)."""
        # No call to the base __init__: it would make an "extra" dictionary per
        # connection, and get_extra_info answers from the fields below.
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._poller = poller
        self._events = 0  # what the poller watches the socket for
        self._protocol: asyncio.BaseProtocol | None = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._peername = peername
        self._flush_timeout = flush_timeout
        self._buffer: bytearray | None = None  # what the socket has not taken yet
        self._high = HIGH_WATER_OCTETS
        self._low = LOW_WATER_OCTETS
        self._writing_paused = False
        self._read_paused = False
        self._eof = False  # no more input: the reader is gone for good
        self._eof_written = False  # write_eof was called
        self._closing = False
        self._lost = False  # connection_lost is scheduled or done

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else ("closing" if self._closing else "open")
        return f"<SocketTransport fd={self._fd} {state} peer={self._peername!r}>"

    def start(self) -> None:
        """Tell the protocol, then read unless it paused reading or closed meanwhile."""
        assert self._protocol is not None
        self._protocol.connection_made(self)
        if not (self._closing or self._read_paused):
            self._poller.set_events(self, self._events | _READABLE)

    # -- asyncio.BaseTransport ---------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername
        if name == "socket":
            return self._sock
        if name == "sockname" and self._sock is not None:
            try:
                return self._sock.getsockname()
            except OSError:
                return default
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if self._buffer is None:
            self._schedule_lost(None)
        elif self._flush_timeout is not None:
            # A peer that never reads would otherwise keep the socket, and the session is
            # no longer counted against any limit.
            self._loop.call_later(self._flush_timeout, self._force_close, None)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None, "the connection is closed"
        return self._protocol

    # -- reading -----------------------------------------------------------------------

    def is_reading(self) -> bool:
        return not (self._read_paused or self._closing or self._eof)

    def pause_reading(self) -> None:
        if self._closing or self._read_paused:
            return
        self._read_paused = True
        if not self._eof:
            self._poller.set_events(self, self._events & ~_READABLE)

    def resume_reading(self) -> None:
        if self._closing or not self._read_paused:
            return
        self._read_paused = False
        if not self._eof:
            self._poller.set_events(self, self._events | _READABLE)

    def _stop_reading(self) -> None:
        if not (self._read_paused or self._eof):
            self._poller.set_events(self, self._events & ~_READABLE)

    def _read_ready(self) -> None:
        protocol, sock = self._protocol, self._sock
        if self._lost or protocol is None or sock is None:
            return
        data = b""
        try:
            if self._buffered:
                buffer = protocol.get_buffer(-1)  # type: ignore[attr-defined]
                if not len(buffer):
                    raise RuntimeError("get_buffer() returned an empty buffer")
                count = sock.recv_into(buffer)
            else:
                data = sock.recv(_RECEIVE_OCTETS)
                count = len(data)
            if not count:
                self._end_of_input()
            elif self._buffered:
                protocol.buffer_updated(count)  # type: ignore[attr-defined]
            else:
                protocol.data_received(data)  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError):
            return
        except Exception as error:  # the peer's reset, or a fault of the protocol's
            self._fatal_error(error, "fatal error on received data")

    def _end_of_input(self) -> None:
        self._stop_reading()
        self._eof = True
        if not self._protocol.eof_received():  # type: ignore[union-attr]
            self.close()

    # -- writing -----------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_written:
            raise RuntimeError("cannot write after write_eof()")
        if not data or self._lost:
            return  # nowhere to go: the connection is gone (asyncio drops it too)
        buffer = self._buffer
        if buffer is not None:
            buffer += data
        else:
            assert self._sock is not None
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self._fatal_error(error, "fatal error writing to the connection")
                return
            if sent == len(data):
                return
            self._buffer = bytearray(memoryview(data)[sent:])
            self._poller.set_events(self, self._events | _WRITABLE)
        self._maybe_pause_protocol()

    def _write_ready(self) -> None:
        buffer, sock = self._buffer, self._sock
        if buffer is None or sock is None or self._lost:
            return
        try:
            sent = sock.send(buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._fatal_error(error, "fatal error writing to the connection")
            return
        del buffer[:sent]
        self._maybe_resume_protocol()  # the protocol may write more: into this buffer
        if buffer or self._buffer is not buffer:
            return
        self._buffer = None
        self._poller.set_events(self, self._events & ~_WRITABLE)
        if self._closing:
            self._schedule_lost(None)
        elif self._eof_written:
            self._shut_down_writing()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_written:
            return
        self._eof_written = True
        if self._buffer is None:
            self._shut_down_writing()

    def _shut_down_writing(self) -> None:
        try:
            if self._sock is not None:
                self._sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            self._fatal_error(error, "cannot shut down writing")

    def get_write_buffer_size(self) -> int:
        return 0 if self._buffer is None else len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = HIGH_WATER_OCTETS if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if self._writing_paused or self.get_write_buffer_size() <= self._high:
            return
        self._writing_paused = True
        self._call_protocol("pause_writing")

    def _maybe_resume_protocol(self) -> None:
        if self._writing_paused and self.get_write_buffer_size() <= self._low:
            self._writing_paused = False
            self._call_protocol("resume_writing")

    def _call_protocol(self, method: str) -> None:
        try:
            getattr(self._protocol, method)()
        except Exception as error:
            self._loop.call_exception_handler(
                {
                    "message": f"protocol.{method}() failed",
                    "exception": error,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )

    # -- the end -----------------------------------------------------------------------

    def abort(self) -> None:
        self._force_close(None)

    def _fatal_error(self, error: Exception, message: str) -> None:
        # A peer that resets or vanishes is ordinary for a server: only bugs are reported.
        if not isinstance(error, OSError):
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": error,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(error)

    def _force_close(self, error: Exception | None) -> None:
        """Drop what is buffered and end the connection (asyncio's TLS layer calls this)."""
        if self._lost:
            return
        if self._buffer is not None:
            self._buffer = None
            self._poller.set_events(self, self._events & ~_WRITABLE)
        if not self._closing:
            self._closing = True
            self._stop_reading()
        self._schedule_lost(error)

    def _schedule_lost(self, error: Exception | None) -> None:
        if not self._lost:
            self._lost = True
            self._loop.call_soon(self._connection_lost, error)

    def _connection_lost(self, error: Exception | None) -> None:
        try:
            if self._protocol is not None:
                self._protocol.connection_lost(error)
        finally:
            self._poller.set_events(self, 0)  # before the descriptor can be reused
            if self._sock is not None:
                self._sock.close()
            self._sock = None
            self._protocol = None  # no cycle left between the session and its transport


class SocketListener(asyncio.AbstractServer):
    """Accepts connections on a listening socket, each with a ``SocketTransport``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        batch: int = ACCEPT_BATCH,
        flush_timeout: float | None = None,
    ) -> None:
        """``flush_timeout``: see ``SocketTransport``."""
        self._loop = loop
        self._flush_timeout = flush_timeout
        self._sock: socket.socket | None = sock
        self._protocol_factory = protocol_factory
        self._poller = ConnectionPoller(loop)
        self._batch = batch
        self._serving = False  # accepting, unless held or paused after a failure
        self._held = False  # ``hold``: another part of the process asked for a pause
        self._watched = False  # the socket is registered with the loop (``_watch``)
        self._retry: asyncio.TimerHandle | None = None
        # Plain ints: socket.accept() converts both to enums on every call.
        self._family, self._kind, self._proto = int(sock.family), int(sock.type), sock.proto
        # Replies are whole writes; Nagle would only delay the next one. Set on the
        # listening socket, accepted ones inherit it (Linux does; checked on the first).
        self._nodelay: bool | None = None  # every connection has it; None until checked
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                self._nodelay = False
        else:
            self._nodelay = True  # nothing to set
        sock.setblocking(False)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if self._serving or self._sock is None:
            return
        self._serving = True
        self._watch()

    def hold(self, held: bool) -> None:
        """Stop (True) or go on (False) accepting connections, leaving them to the other
        worker processes meanwhile (waiting in the listen queue if there is none)."""
        self._held = held
        self._watch()

    def _watch(self) -> None:
        """Register the socket with the loop, or not, as serving, holding and closing say."""
        wanted = self._sock is not None and self._serving and not self._held
        if wanted == self._watched:
            return
        assert self._sock is not None
        if wanted:
            self._loop.add_reader(self._sock.fileno(), self._accept)
        else:
            self._loop.remove_reader(self._sock.fileno())
        self._watched = wanted

    def close(self) -> None:
        """Stop accepting and close the listening socket; connections carry on (their
        epoll set is closed after the last of them)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._sock is None:
            return
        self._poller.close()
        self._serving = False
        self._watch()
        self._sock.close()
        self._sock = None

    async def wait_closed(self) -> None:
        """Nothing to wait for: the server waits for its sessions itself."""

    async def serve_forever(self) -> None:
        await self.start_serving()
        await asyncio.Event().wait()  # until cancelled, as asyncio's servers

    def _accept(self) -> None:
        listening = self._sock
        for _ in range(self._batch):
            if listening is None:
                return
            try:
                # What socket.accept() does, without its two enum conversions per call.
                fd, address = listening._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # nothing (more) waiting, or it was gone before we took it
            except OSError as error:
                if error.errno in _CONNECTION_ERRORS:
                    continue
                self._accept_failed(error)
                return
            connection = socket.socket(self._family, self._kind, self._proto, fd)
            connection.setblocking(False)
            if not self._nodelay:
                self._set_nodelay(connection)
            self._connect(connection, address)

    def _set_nodelay(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            if self._nodelay is None:  # the first connection: inherited from the listener?
                inherited = connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                self._nodelay = bool(inherited)
                if inherited:
                    return
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _connect(self, connection: socket.socket, address: Any) -> None:
        transport: SocketTransport | None = None
        try:
            transport = SocketTransport(
                self._loop,
                connection,
                self._protocol_factory(),
                address,
                self._poller,
                flush_timeout=self._flush_timeout,
            )
            transport.start()
        except Exception as error:
            self._loop.call_exception_handler(
                {"message": "cannot start a connection", "exception": error, "socket": connection}
            )
            if transport is not None:
                transport.abort()
            else:
                connection.close()

    def _accept_failed(self, error: OSError) -> None:
        """Out of descriptors or memory, or worse: pause rather than spin on the socket."""
        log.error("accept failed (%s); accepting again in %.0f s", error, ACCEPT_RETRY_SECONDS)
        if self._sock is not None and self._serving:
            self._serving = False
            self._watch()
            self._retry = self._loop.call_later(ACCEPT_RETRY_SECONDS, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if self._sock is not None and not self._serving:
            self._serving = True
            self._watch()
