"""Properties of the server machine over arbitrary input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from .driver import Driver, Message

commands = st.sampled_from(
    [
        b"USER alice\r\n",
        b"PASS secret\r\n",
        b"PASS wrong\r\n",
        b"STAT\r\n",
        b"LIST\r\n",
        b"LIST 1\r\n",
        b"UIDL 2\r\n",
        b"RETR 1\r\n",
        b"TOP 2 1\r\n",
        b"DELE 1\r\n",
        b"DELE 2\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"CAPA\r\n",
        b"QUIT\r\n",
        b"\n",
        b"\r\n",
        b"x" * 300 + b"\r\n",
    ]
)
streams = st.lists(commands | st.binary(max_size=40), max_size=30).map(b"".join)


def messages() -> list[Message]:
    return [Message("u1", b"A: b\n\n.x\n"), Message("u2", b"C: d\r\n\r\nbody\r\n")]


@settings(max_examples=300)
@given(streams)
def test_feeding_byte_by_byte_equals_feeding_whole(data: bytes) -> None:
    whole = Driver(messages=messages())
    expected = whole.feed(b"") + whole.feed(data)
    single = Driver(messages=messages())
    got = single.feed(b"") + b"".join(single.feed(data[i : i + 1]) for i in range(len(data)))
    assert got == expected
    assert single.committed == whole.committed


@settings(max_examples=300)
@given(streams)
def test_every_reply_is_well_formed(data: bytes) -> None:
    driver = Driver(messages=messages())
    out = driver.feed(b"") + driver.feed(data)
    # Walk the replies: each status line is +OK or -ERR, printable, at most 512 octets.
    for line in out.split(b"\r\n"):
        if line.startswith((b"+OK", b"-ERR")):
            assert len(line) + 2 <= 512
            assert all(32 <= octet < 127 for octet in line)


@settings(max_examples=300)
@given(
    st.lists(
        commands
        | st.sampled_from([b"noop\n", b"Noop\r\n", b"NOOP", b"\r\n"])
        | st.binary(max_size=8)
    )
)
def test_quick_replies_change_nothing_but_the_cost(pieces: list[bytes]) -> None:
    """Fed piece by piece (a lone NOOP line is a piece of its own, as it arrives from an
    idle client), a machine that answers what it can with ``quick_reply`` sends the same
    octets, counts the same commands and commits the same as one that never does."""
    plain = Driver(messages=messages())
    quick = Driver(messages=messages(), quick=True)
    for piece in [b"", b"USER alice\r\nPASS secret\r\n", *pieces]:
        assert quick.feed(piece) == plain.feed(piece)
        assert quick.connection.counters == plain.connection.counters
        assert quick.connection.state is plain.connection.state
    assert quick.committed == plain.committed


@given(streams)
def test_nothing_is_deleted_without_quit(data: bytes) -> None:
    driver = Driver(messages=messages())
    driver.feed(b"")
    driver.feed(data.replace(b"QUIT", b"NOOP"))
    assert driver.committed is None
