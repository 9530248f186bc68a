"""Framing properties: dot-stuffing round trips, chunking never matters, TOP cuts right."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from postoffice.proto.framing import (
    LineBuffer,
    LineProblem,
    MessageEncoder,
    MultilineDecoder,
    TopFilter,
    encode_message,
    find_line_dot,
)

# Messages rich in the octets that matter: dots, CR, LF.
message_bytes = st.lists(
    st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b"..", b"\n.\n", b"x y"]), max_size=60
).map(b"".join) | st.binary(max_size=300)


def reference_wire_form(data: bytes) -> bytes:
    """The wire form, line by line: bare LF becomes CRLF; a final CRLF if missing."""
    out = bytearray()
    for index, octet in enumerate(data):
        if octet == 0x0A and (index == 0 or data[index - 1] != 0x0D):
            out += b"\r\n"
        else:
            out.append(octet)
    if not out.endswith(b"\n"):
        out += b"\r\n"
    return bytes(out)


def reference_stuff(wire: bytes) -> bytes:
    lines = wire.split(b"\r\n")
    assert lines[-1] == b""
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines[:-1]]
    return b"\r\n".join(stuffed) + b"\r\n.\r\n"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces = []
    start = 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


@given(
    st.lists(
        st.sampled_from([b".", b"a.", b"\n", b"x", b"..", b"\n.", b"b" * 20]), max_size=400
    ).map(b"".join),
    st.integers(0, 500),
    st.integers(0, 500),
)
def test_dot_line_search_agrees_with_a_plain_search(data: bytes, start: int, end: int) -> None:
    """Few dots (hops from dot to dot) or many (the regular expression takes over), from
    anywhere to anywhere, in bytes or a bytearray."""
    assert find_line_dot(data) == data.find(b"\n.")
    assert find_line_dot(data, start, end) == data.find(b"\n.", start, end)
    assert find_line_dot(bytearray(data), start, end) == data.find(b"\n.", start, end)


def test_a_dot_line_after_many_dots_is_found() -> None:
    prose = b"Dr. No. " * 100  # 200 dots, none at a line start
    assert find_line_dot(prose + b"\nend") == -1
    assert find_line_dot(prose + b"\n.end") == len(prose)
    assert find_line_dot(b".first line only") == -1
    for dots in range(60, 70):  # the first dot the regular expression has to judge
        assert find_line_dot(b"a." * dots + b"\n.x") == 2 * dots


@given(message_bytes)
def test_encoding_matches_the_reference(data: bytes) -> None:
    wire = reference_wire_form(data)
    encoder = MessageEncoder()
    assert encoder.encode(data) + encoder.finish() == reference_stuff(wire)
    assert encoder.octets == len(wire)


@given(message_bytes, st.lists(st.integers(min_value=0), max_size=8))
def test_encoding_in_chunks_equals_encoding_whole(data: bytes, cuts: list[int]) -> None:
    encoder = MessageEncoder()
    chunked = b"".join(encoder.encode(piece) for piece in split(data, cuts)) + encoder.finish()
    assert chunked == encode_message(data)


@given(message_bytes, st.lists(st.integers(min_value=0), max_size=8), st.binary(max_size=20))
def test_decoder_undoes_the_encoder(data: bytes, cuts: list[int], after: bytes) -> None:
    stream = encode_message(data) + after
    decoder = MultilineDecoder()
    body = b"".join(decoder.feed(piece) for piece in split(stream, cuts))
    assert decoder.done
    assert body == reference_wire_form(data)
    assert decoder.leftover == after
    assert decoder.octets == len(body)


def test_decoder_waits_for_a_lone_dot() -> None:
    decoder = MultilineDecoder()
    assert decoder.feed(b"a\r\n.") == b"a\r\n"
    assert not decoder.done
    assert decoder.feed(b"\r") == b""
    assert decoder.feed(b"\n") == b""
    assert decoder.done


def reference_decode(stream: bytes) -> tuple[bytes, bool, bytes]:
    """Line by line: (body, whether the terminator was read, what followed it).

    A line is what ends with LF; one starting with a dot loses that dot, except the
    terminator ``.CRLF``. An unfinished last line that may still become the terminator is
    not part of the body yet."""
    body = bytearray()
    position = 0
    while position < len(stream):
        end = stream.find(b"\n", position)
        line = stream[position:] if end < 0 else stream[position : end + 1]
        if line == b".\r\n":
            return bytes(body), True, stream[position + 3 :]
        if end < 0 and b".\r\n".startswith(line):
            break
        body += line[1:] if line.startswith(b".") else line
        position += len(line)
    return bytes(body), False, b""


streams = st.lists(
    st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b"..", b".\r\n", b"\r\n.\r\n", b"x y"]),
    max_size=40,
).map(b"".join) | st.binary(max_size=200)


def decode_fed(pieces: list[bytes]) -> tuple[bytes, bool, bytes, int]:
    decoder = MultilineDecoder()
    body = b"".join(decoder.feed(piece) for piece in pieces)
    return body, decoder.done, decoder.leftover, decoder.octets


def decode_taken(pieces: list[bytes], limits: list[int]) -> tuple[bytes, bool, bytes, int]:
    """As a client uses ``take``: pieces arrive in one buffer, taken ``limits[i]`` at a time."""
    decoder = MultilineDecoder()
    buffer = bytearray()
    body = b""
    turn = 0
    for piece in pieces:
        buffer += piece
        while not decoder.done and buffer:
            unread = len(buffer)
            limit = limits[turn % len(limits)] if limits else 1 << 16
            turn += 1
            data = decoder.take(buffer, limit)
            assert len(buffer) <= unread
            body += data
            if not data and len(buffer) == unread:
                break
    return body, decoder.done, bytes(buffer) if decoder.done else b"", decoder.octets


@given(streams, st.lists(st.integers(min_value=0), max_size=8))
def test_decoder_matches_the_line_by_line_reference(stream: bytes, cuts: list[int]) -> None:
    body, done, leftover, octets = decode_fed(split(stream, cuts))
    assert (body, done, leftover) == reference_decode(stream)
    assert octets == len(body)


@given(streams, st.lists(st.integers(min_value=0), max_size=8))
def test_decoder_fed_in_pieces_equals_fed_whole(stream: bytes, cuts: list[int]) -> None:
    assert decode_fed(split(stream, cuts)) == decode_fed([stream])


@given(
    streams,
    st.lists(st.integers(min_value=0), max_size=8),
    st.lists(st.integers(min_value=1, max_value=12), max_size=6),
)
def test_decoder_taking_from_a_buffer_equals_feeding(
    stream: bytes, cuts: list[int], limits: list[int]
) -> None:
    """Any arrival pieces and any take limits give the body, end and rest of feeding whole."""
    assert decode_taken(split(stream, cuts), limits) == decode_fed([stream])


def test_decoder_takes_no_further_than_the_terminator() -> None:
    decoder = MultilineDecoder()
    buffer = bytearray(b"..a\r\n.\r\n+OK next\r\n")
    assert decoder.take(buffer, 100) == b".a\r\n"
    assert decoder.done
    assert buffer == b"+OK next\r\n"


def test_decoder_leaves_a_dot_it_cannot_judge_yet() -> None:
    decoder = MultilineDecoder()
    buffer = bytearray(b"a\r\n.\r")
    assert decoder.take(buffer, 100) == b"a\r\n"
    assert buffer == b".\r"
    buffer += b"\n"
    assert decoder.take(buffer, 100) == b""
    assert decoder.done and not buffer


@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=10))
def test_line_buffer_feeding_in_pieces_equals_feeding_whole(data: bytes, cuts: list[int]) -> None:
    def lines_of(pieces: list[bytes]) -> list[bytes | LineProblem]:
        buffer = LineBuffer(max_line_octets=40, max_discard_octets=10_000)
        out: list[bytes | LineProblem] = []
        for piece in pieces:
            buffer.feed(piece)
            while (line := buffer.next_line()) is not None:
                out.append(line)
        return out

    whole = lines_of([data])
    assert lines_of(split(data, cuts)) == whole
    assert LineProblem.FLOOD not in whole
    for line in whole:
        assert line is LineProblem.TOO_LONG or (isinstance(line, bytes) and len(line) < 40)


@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=10))
def test_line_buffer_matches_a_plain_split(data: bytes, cuts: list[int]) -> None:
    """Within the length limit: the lines are the LF-separated pieces without one trailing
    CR, the rest is what ``buffered`` counts and ``take_unread`` hands over, after which
    the buffer is empty."""
    buffer = LineBuffer(max_line_octets=4000)
    lines: list[bytes | LineProblem] = []
    for piece in split(data, cuts):
        buffer.feed(piece)
        while (line := buffer.next_line()) is not None:
            lines.append(line)
    *complete, rest = data.split(b"\n")
    assert lines == [line.removesuffix(b"\r") for line in complete]
    assert buffer.buffered == len(rest)
    assert buffer.take_unread() == rest
    assert buffer.buffered == 0 and buffer.take_unread() == b"" and buffer.next_line() is None


@given(st.integers(min_value=0, max_value=5), st.lists(st.integers(min_value=0), max_size=6))
def test_top_filter_cuts_after_n_body_lines(lines: int, cuts: list[int]) -> None:
    message = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\nl3\r\n.l4\r\nl5"
    expected_body = [b"l1\r\n", b"l2\n", b"l3\r\n", b".l4\r\n", b"l5"][:lines]
    top = TopFilter(lines)
    got = b"".join(top.feed(piece) for piece in split(message, cuts))
    assert got == b"A: 1\r\nB: 2\r\n\r\n" + b"".join(expected_body)


def test_top_filter_handles_a_message_without_header() -> None:
    assert TopFilter(1).feed(b"\nbody\nmore\n") == b"\nbody\n"
