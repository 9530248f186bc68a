"""The lean transport and listener, on real sockets: flow control, the end of input, close
and abort, TLS on top, and the accept loop."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest
import trustme

from postoffice.server import socket_transport
from postoffice.server.socket_transport import ConnectionPoller, SocketListener, SocketTransport


class Recorder(asyncio.BufferedProtocol):
    """Records every callback; ``keep_open`` is what eof_received answers."""

    def __init__(self, keep_open: bool = False) -> None:
        self.keep_open = keep_open
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.events: list[str] = []
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray(1024)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.events.append("made")

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received += self._buffer[:nbytes]

    def eof_received(self) -> bool:
        self.events.append("eof")
        return self.keep_open

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


class PlainRecorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.received = bytearray()

    def data_received(self, data: bytes) -> None:
        self.received += data


def _recorders() -> tuple[list[Recorder], Callable[[], Recorder]]:
    """A protocol factory for a listener, and the list of what it made."""
    made: list[Recorder] = []

    def factory() -> Recorder:
        made.append(Recorder())
        return made[-1]

    return made, factory


async def _pair(
    protocol: asyncio.BaseProtocol,
    flush_timeout: float | None = None,
    poller: ConnectionPoller | None = None,
) -> tuple[SocketTransport, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    transport = SocketTransport(
        loop,
        ours,
        protocol,
        "peer",
        poller if poller is not None else ConnectionPoller(loop),
        flush_timeout=flush_timeout,
    )
    transport.start()
    return transport, theirs


async def _read_until(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = bytearray()
    while len(data) < size:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def _eventually(condition: Any) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in 2 s")


async def test_reads_into_the_protocols_buffer_and_plain_protocols_get_data() -> None:
    recorder = Recorder()
    transport, peer = await _pair(recorder)
    peer.send(b"USER alice\r\n")
    await _eventually(lambda: recorder.received == b"USER alice\r\n")
    assert transport.get_extra_info("peername") == "peer"
    assert transport.is_reading()
    plain = PlainRecorder()
    _plain_transport, plain_peer = await _pair(plain)
    plain_peer.send(b"NOOP\r\n")
    await _eventually(lambda: plain.received == b"NOOP\r\n")
    transport.close()
    _plain_transport.close()
    peer.close()
    plain_peer.close()


async def test_paused_reading_delivers_nothing_until_resumed() -> None:
    recorder = Recorder()
    transport, peer = await _pair(recorder)
    transport.pause_reading()
    assert not transport.is_reading()
    peer.send(b"STAT\r\n")
    await asyncio.sleep(0.05)
    assert recorder.received == b""
    transport.resume_reading()
    await _eventually(lambda: recorder.received == b"STAT\r\n")
    transport.close()
    peer.close()


async def test_a_large_write_pauses_the_protocol_and_arrives_whole() -> None:
    recorder = Recorder()
    transport, peer = await _pair(recorder)
    payload = bytes(range(256)) * 8192  # 2 MiB: more than the socket takes at once
    transport.write(payload)
    assert transport.get_write_buffer_size() > 0
    assert recorder.events[-1] == "pause"
    received = await _read_until(peer, len(payload))
    assert received == payload
    await _eventually(lambda: transport.get_write_buffer_size() == 0)
    assert recorder.events[-1] == "resume"
    transport.close()
    await asyncio.wait_for(recorder.lost, 5)
    peer.close()


async def test_close_sends_what_is_buffered_before_the_connection_ends() -> None:
    recorder = Recorder()
    transport, peer = await _pair(recorder)
    payload = b"x" * (3 * 1024 * 1024)
    transport.write(payload)
    transport.close()
    assert transport.is_closing()
    transport.close()  # twice is harmless
    received = await _read_until(peer, len(payload) + 1)
    assert received == payload  # all of it, then the end
    assert await asyncio.wait_for(recorder.lost, 5) is None
    assert recorder.events.count("lost") == 1
    assert transport.get_extra_info("socket") is None
    peer.close()


async def test_close_gives_up_on_a_peer_that_never_reads_after_the_flush_timeout() -> None:
    patient, patient_peer = await _pair(Recorder())
    recorder = Recorder()
    transport, peer = await _pair(recorder, flush_timeout=0.2)
    for closing in (patient, transport):
        closing.write(b"u" * (3 * 1024 * 1024))
        closing.close()
    assert await asyncio.wait_for(recorder.lost, 5) is None
    assert transport.get_extra_info("socket") is None  # closed, its output dropped
    assert patient.get_extra_info("socket") is not None  # no timeout: still waiting
    assert patient.get_write_buffer_size() > 0
    patient.abort()
    peer.close()
    patient_peer.close()


async def test_abort_drops_what_is_buffered() -> None:
    recorder = Recorder()
    transport, peer = await _pair(recorder)
    transport.write(b"y" * (3 * 1024 * 1024))
    transport.abort()
    assert transport.get_write_buffer_size() == 0
    assert await asyncio.wait_for(recorder.lost, 5) is None
    received = await _read_until(peer, 4 * 1024 * 1024)
    assert len(received) < 3 * 1024 * 1024
    peer.close()


async def test_a_half_closed_peer_still_gets_replies_when_the_protocol_keeps_it_open() -> None:
    recorder = Recorder(keep_open=True)
    transport, peer = await _pair(recorder)
    peer.send(b"QUIT\r\n")
    peer.shutdown(socket.SHUT_WR)
    await _eventually(lambda: "eof" in recorder.events)
    assert not transport.is_closing()
    transport.resume_reading()  # no effect after the end of input
    transport.write(b"+OK bye\r\n")
    transport.close()
    assert await _read_until(peer, 100) == b"+OK bye\r\n"
    await asyncio.wait_for(recorder.lost, 5)
    peer.close()


async def test_the_end_of_input_closes_when_the_protocol_says_so() -> None:
    recorder = Recorder(keep_open=False)
    transport, peer = await _pair(recorder)
    peer.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(recorder.lost, 5) is None
    assert transport.is_closing()
    peer.close()


async def test_a_reset_connection_is_lost_with_its_error() -> None:
    recorder = Recorder()
    transport, peer = await _pair(recorder)
    transport.write(b"z" * (4 * 1024 * 1024))  # leaves output buffered
    peer.close()  # unread data: the kernel resets the connection
    lost = await asyncio.wait_for(recorder.lost, 5)
    assert isinstance(lost, OSError)
    assert transport.is_closing()
    transport.write(b"more")  # dropped quietly, as asyncio does


async def test_write_eof_after_the_buffer_is_out() -> None:
    recorder = Recorder()
    transport, peer = await _pair(recorder)
    assert transport.can_write_eof()
    transport.write(b"w" * (2 * 1024 * 1024))
    transport.write_eof()
    with pytest.raises(RuntimeError):
        transport.write(b"after")
    received = await _read_until(peer, 3 * 1024 * 1024)
    assert received == b"w" * (2 * 1024 * 1024)
    transport.close()
    peer.close()


async def test_buffer_limits_are_checked_and_applied() -> None:
    recorder = Recorder()
    transport, peer = await _pair(recorder)
    with pytest.raises(ValueError):
        transport.set_write_buffer_limits(high=10, low=20)
    transport.set_write_buffer_limits(high=400)
    assert transport.get_write_buffer_limits() == (100, 400)
    transport.close()
    peer.close()


async def test_tls_can_be_started_on_it_both_ways() -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("pop.example").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    transport, peer = await _pair(recorder)
    reader, writer = await asyncio.open_connection(sock=peer)
    server_side = asyncio.ensure_future(
        loop.start_tls(transport, recorder, server_context, server_side=True)
    )
    await writer.start_tls(client_context, server_hostname="pop.example")
    tls_transport = await asyncio.wait_for(server_side, 10)
    assert tls_transport is not None
    assert tls_transport.get_extra_info("ssl_object") is not None
    assert tls_transport.get_extra_info("peername") == "peer"
    writer.write(b"CAPA\r\n")
    await writer.drain()
    await _eventually(lambda: recorder.received == b"CAPA\r\n")
    tls_transport.write(b"+OK " + b"c" * 200_000 + b"\r\n")
    line = await asyncio.wait_for(reader.readexactly(200_006), 5)
    assert line.startswith(b"+OK c") and line.endswith(b"c\r\n")
    tls_transport.close()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    await asyncio.wait_for(recorder.lost, 5)
    writer.close()


async def test_the_listener_accepts_every_waiting_connection_in_batches() -> None:
    loop = asyncio.get_running_loop()
    listening = socket.create_server(("127.0.0.1", 0), backlog=128)
    made, factory = _recorders()
    listener = SocketListener(loop, listening, factory, batch=4)
    port = listening.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(30)]
    await listener.start_serving()
    assert listener.is_serving() and listener.get_loop() is loop
    await _eventually(lambda: len(made) == 30)
    assert all(recorder.events == ["made"] for recorder in made)
    listener.close()
    assert not listener.is_serving()
    await listener.wait_closed()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    for recorder in made:
        assert recorder.transport is not None
        recorder.transport.close()
    for client in clients:
        client.close()


async def test_serve_forever_accepts_until_cancelled() -> None:
    listening = socket.create_server(("127.0.0.1", 0))
    made, factory = _recorders()
    listener = SocketListener(asyncio.get_running_loop(), listening, factory)
    serving = asyncio.ensure_future(listener.serve_forever())
    client = socket.create_connection(listening.getsockname())
    await _eventually(lambda: len(made) == 1)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    listener.close()
    assert made[0].transport is not None
    made[0].transport.close()
    client.close()


async def test_a_held_listener_leaves_connections_waiting_until_released() -> None:
    loop = asyncio.get_running_loop()
    listening = socket.create_server(("127.0.0.1", 0))
    made, factory = _recorders()
    listener = SocketListener(loop, listening, factory)
    listener.hold(True)  # before serving: start_serving must not accept either
    await listener.start_serving()
    first = socket.create_connection(listening.getsockname())
    await asyncio.sleep(0.2)
    assert made == []  # waiting in the listen queue
    listener.hold(False)
    await _eventually(lambda: len(made) == 1)
    listener.hold(True)
    listener.hold(True)  # twice: still one pause, undone by one release
    second = socket.create_connection(listening.getsockname())
    await asyncio.sleep(0.2)
    assert len(made) == 1
    listener.hold(False)
    await _eventually(lambda: len(made) == 2)
    listener.hold(True)
    listener.close()  # closes while held: nothing left registered with the loop
    listener.hold(False)
    assert not listener.is_serving()
    for recorder in made:
        assert recorder.transport is not None
        recorder.transport.close()
    first.close()
    second.close()


class _OutOfDescriptorsOnce(socket.socket):
    """A listening socket whose first accept fails as when the process has no descriptor
    left (EMFILE), which a test cannot otherwise cause without starving itself."""

    failed = False

    def _accept(self) -> tuple[int, Any]:
        if not self.failed:
            self.failed = True
            raise OSError(errno.EMFILE, "Too many open files")
        return super()._accept()  # type: ignore[misc,no-any-return]


async def test_the_listener_pauses_after_running_out_of_descriptors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(socket_transport, "ACCEPT_RETRY_SECONDS", 0.1)
    loop = asyncio.get_running_loop()
    listening = _OutOfDescriptorsOnce(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(8)
    made, factory = _recorders()
    listener = SocketListener(loop, listening, factory)
    client = socket.create_connection(("127.0.0.1", listening.getsockname()[1]))
    await listener.start_serving()
    await _eventually(lambda: listening.failed)
    assert not listener.is_serving()  # paused instead of spinning on the failure
    await _eventually(lambda: len(made) == 1)
    assert listener.is_serving()
    listener.close()
    assert made[0].transport is not None
    made[0].transport.close()
    client.close()


async def test_the_poller_serves_many_sockets_and_keeps_its_epoll_set_until_closed() -> None:
    loop = asyncio.get_running_loop()
    poller = ConnectionPoller(loop)
    pairs = []
    for number in range(40):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        recorder = Recorder()
        SocketTransport(loop, ours, recorder, f"peer{number}", poller).start()
        pairs.append((recorder, theirs))
    assert len(poller) == 40
    for number, (_, theirs) in enumerate(pairs):
        theirs.sendall(b"line %d\r\n" % number)
    await _eventually(
        lambda: all(r.received == b"line %d\r\n" % n for n, (r, _) in enumerate(pairs))
    )
    # A socket that is paused is out of the set; resumed, it is read again.
    first = pairs[0][0].transport
    assert first is not None
    first.pause_reading()
    assert len(poller) == 39
    pairs[0][1].sendall(b"more\r\n")
    await asyncio.sleep(0.05)
    assert pairs[0][0].received == b"line 0\r\n"
    first.resume_reading()
    await _eventually(lambda: pairs[0][0].received == b"line 0\r\nmore\r\n")
    descriptor = poller._epoll.fileno() if poller._epoll is not None else -1
    assert descriptor >= 0
    for recorder, theirs in pairs:
        assert recorder.transport is not None
        recorder.transport.close()
        await asyncio.wait_for(recorder.lost, 5)
        theirs.close()
    # Kept for the next connection (not made and registered again for each one) ...
    assert len(poller) == 0 and poller._epoll is not None
    os.fstat(descriptor)
    poller.close()  # ... until closed, with no socket left in it
    assert poller._epoll is None
    with pytest.raises(OSError):
        os.fstat(descriptor)


async def test_a_closed_poller_ends_its_epoll_set_after_the_last_socket() -> None:
    loop = asyncio.get_running_loop()
    poller = ConnectionPoller(loop)
    transports, peers = [], []
    for _ in range(2):
        recorder = Recorder()
        transport, peer = await _pair(recorder, poller=poller)
        transports.append((transport, recorder))
        peers.append(peer)
    assert poller._epoll is not None
    descriptor = poller._epoll.fileno()
    poller.close()  # as the listener does: its connections carry on
    peers[1].send(b"NOOP\r\n")
    await _eventually(lambda: transports[1][1].received == b"NOOP\r\n")
    for transport, recorder in transports:
        os.fstat(descriptor)  # still open while a socket is in it
        transport.close()
        await asyncio.wait_for(recorder.lost, 5)
    assert poller._epoll is None
    with pytest.raises(OSError):
        os.fstat(descriptor)
    for peer in peers:
        peer.close()


class _BrokenTransport(SocketTransport):
    """A transport whose read handler fails as a bug would, past its own error handling."""

    def _read_ready(self) -> None:
        raise RuntimeError("a bug")


async def test_a_failing_connection_does_not_stop_the_others_of_its_wake_up() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    poller = ConnectionPoller(loop)
    broken_ours, broken_theirs = socket.socketpair()
    broken_ours.setblocking(False)
    broken = Recorder()
    _BrokenTransport(loop, broken_ours, broken, "broken", poller).start()
    healthy_ours, healthy_theirs = socket.socketpair()
    healthy_ours.setblocking(False)
    healthy = Recorder()
    SocketTransport(loop, healthy_ours, healthy, "healthy", poller).start()
    broken_theirs.sendall(b"x")
    healthy_theirs.sendall(b"y")
    await _eventually(lambda: healthy.received == b"y")
    assert isinstance(await asyncio.wait_for(broken.lost, 5), RuntimeError)
    assert [str(context["exception"]) for context in reported] == ["a bug"]
    assert len(poller) == 1
    assert healthy.transport is not None
    healthy.transport.close()
    await asyncio.wait_for(healthy.lost, 5)
    broken_theirs.close()
    healthy_theirs.close()


async def test_accepted_connections_send_without_delay() -> None:
    """TCP_NODELAY on every accepted connection, whether inherited from the listening
    socket (as on Linux) or set on each when it is not."""
    listening = socket.create_server(("127.0.0.1", 0))
    made, factory = _recorders()
    listener = SocketListener(asyncio.get_running_loop(), listening, factory)
    await listener.start_serving()
    clients = [socket.create_connection(listening.getsockname()) for _ in range(3)]
    await _eventually(lambda: len(made) == 3)
    assert listener._nodelay is True  # inherited, checked once
    # As where accepted sockets do not inherit it: found out, then set on each one.
    listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
    listener._nodelay = None
    clients += [socket.create_connection(listening.getsockname()) for _ in range(2)]
    await _eventually(lambda: len(made) == 5)
    assert listener._nodelay is False
    for recorder in made:
        assert recorder.transport is not None
        sock = recorder.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.gettimeout() == 0.0  # non-blocking
        recorder.transport.close()
    listener.close()
    for client in clients:
        client.close()
