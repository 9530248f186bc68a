"""The receiving side of a connection: octets straight into the machine, reading paused
while too many wait unparsed, and what arrived before a reset still read."""

from __future__ import annotations

import asyncio

import pytest

from postoffice.fetch import transport
from postoffice.fetch.errors import FetchConnectionError
from postoffice.fetch.transport import Pop3Client
from postoffice.proto.client import ClientConnection
from postoffice.proto.client_events import (
    CLOSED,
    BodyData,
    Greeting,
    MultilineEnd,
    MultilineStart,
    Request,
)
from postoffice.proto.states import State


class FakeTransport(asyncio.Transport):
    """Records what the receiver asks of its transport."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.pauses = 0
        self.written = bytearray()
        self.closing = False

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


def _client() -> tuple[Pop3Client, FakeTransport]:
    fake = FakeTransport()
    receiver = transport._Receiver(ClientConnection(max_chunk=1 << 16))
    receiver.connection_made(fake)
    return Pop3Client(fake, receiver, timeout=5), fake


async def test_reading_pauses_while_too_much_waits_and_resumes_when_more_is_needed() -> None:
    """A server faster than the disk fills no more than about MAX_UNPARSED octets of memory;
    what was held back is then read in full."""
    client, fake = _client()
    receiver = client._receiver
    receiver.data_received(b"+OK ready\r\n")
    assert isinstance(await client.next_event(), Greeting)
    client.connection.state = State.TRANSACTION  # as after a login
    await client.send(Request(keyword="RETR", arguments=("1",)))
    line = b"y" * 1022 + b"\r\n"
    lines = transport.MAX_UNPARSED // len(line) * 3
    body = line * lines
    receiver.data_received(b"+OK\r\n" + body[: len(body) // 2])
    assert fake.paused
    assert fake.pauses == 1
    received = bytearray()
    assert isinstance(await client.next_event(), MultilineStart)
    while True:
        event = client.connection.next_event()  # what is buffered, without reading more
        if not isinstance(event, BodyData):
            break
        received += event.data
    assert fake.paused  # nothing asked for more yet
    reader = asyncio.create_task(client.next_event())
    await asyncio.sleep(0)
    assert not fake.paused  # the machine needs more: reading resumes
    receiver.data_received(body[len(body) // 2 :] + b".\r\n")
    event = await reader
    while not isinstance(event, MultilineEnd):
        assert isinstance(event, BodyData)
        received += event.data
        event = await client.next_event()
    assert received == body


async def test_what_arrived_before_a_reset_is_still_read() -> None:
    """A reply already received is worth reading (a whole message may be waiting); the
    reset shows only when more is needed."""
    client, _ = _client()
    receiver = client._receiver
    receiver.data_received(b"+OK ready\r\n")
    receiver.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    assert isinstance(await client.next_event(), Greeting)
    with pytest.raises(FetchConnectionError, match="reset"):
        await client.next_event()


async def test_a_clean_close_is_an_end_of_file_for_the_machine() -> None:
    client, _ = _client()
    client._receiver.data_received(b"+OK ready\r\n")
    client._receiver.connection_lost(None)
    assert isinstance(await client.next_event(), Greeting)
    assert await client.next_event() is CLOSED
    await client.close()  # already closed: returns at once
