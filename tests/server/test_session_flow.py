"""A session driven in-process on the running server's loop, through a transport of the
test's own: what the session does when its transport pushes back on a reply."""

from __future__ import annotations

import asyncio
from typing import Any

from postoffice.server.session import Pop3Session

from ..conftest import ServerHarness


class PushingBackTransport(asyncio.Transport):
    """Takes every write, and calls ``pause_writing`` on the one that crosses
    ``push_back_at`` octets (as a transport does when its buffer crosses the high-water
    mark); records whether reading is paused."""

    def __init__(self, push_back_at: int) -> None:
        super().__init__()
        self.protocol: Pop3Session | None = None
        self.written = bytearray()
        self.push_back_at = push_back_at
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        before = len(self.written)
        self.written += data
        if before < self.push_back_at <= len(self.written):
            assert self.protocol is not None
            self.protocol.pause_writing()

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _feed(session: Pop3Session, data: bytes) -> None:
    buffer = session.get_buffer(len(data))
    buffer[: len(data)] = data
    session.buffer_updated(len(data))


def test_a_noop_reply_the_transport_pushes_back_on_leaves_reading_paused(
    harness: ServerHarness,
) -> None:
    """Whichever way a NOOP is answered (alone in a read, or among other commands), a reply
    that fills the transport's buffer pauses reading until the transport drains."""
    harness.add_user("alice", "secret")
    harness.deliver("alice", b"Subject: one\n\n1\n")
    harness.start()
    assert harness.server is not None and harness.loop is not None
    context = harness.server.context

    async def run(noop: bytes) -> tuple[bytes, bool]:
        session = Pop3Session(context)
        transport = PushingBackTransport(push_back_at=1 << 30)
        transport.protocol = session
        session.connection_made(transport)
        _feed(session, b"USER alice\r\n")
        _feed(session, b"PASS secret\r\n")
        for _ in range(500):  # the login may finish in a worker thread
            if b"maildrop" in transport.written:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"no login within 5 s: {bytes(transport.written)!r}")
        transport.push_back_at = len(transport.written) + 1  # the next reply crosses it
        _feed(session, noop)
        reading = transport.reading
        session.resume_writing()
        _feed(session, b"QUIT\r\n")
        return bytes(transport.written), reading

    for noop in (b"NOOP\r\n", b"NOOP\r\nNOOP\r\n"):
        written, reading = asyncio.run_coroutine_threadsafe(run(noop), harness.loop).result(10)
        assert written.count(b"+OK\r\n") == noop.count(b"NOOP"), written
        assert not reading, f"reading resumed while the transport pushed back ({noop!r})"
