"""The wire size of a stored message: bytes arithmetic equals a plain reference loop."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from postoffice.storage.wire import WireSizeCounter, wire_size

# Mostly line-end bytes, so that CR, LF and CRLF meet often.
_data = st.binary(max_size=200) | st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b".", b""]), max_size=60
).map(b"".join)


def reference_wire_size(data: bytes) -> int:
    """Convert bare LF to CRLF one byte at a time, append CRLF if the last byte is not LF."""
    out = bytearray()
    previous = None
    for byte in data:
        if byte == 0x0A and previous != 0x0D:
            out += b"\r"
        out.append(byte)
        previous = byte
    if not out.endswith(b"\n"):
        out += b"\r\n"
    return len(out)


@given(_data)
def test_wire_size_equals_reference(data: bytes) -> None:
    """wire_size agrees with the byte-by-byte reference conversion."""
    assert wire_size(data) == reference_wire_size(data)


@given(_data, st.lists(st.integers(min_value=0, max_value=200), max_size=10))
def test_counter_over_any_chunking_equals_wire_size(data: bytes, cuts: list[int]) -> None:
    """Feeding the counter in any chunks gives wire_size of the whole, and counts octets."""
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    counter = WireSizeCounter()
    for start, end in itertools.pairwise(bounds):
        counter.update(data[start:end])
    counter.update(b"")
    assert counter.size == wire_size(data)
    assert counter.octets == len(data)


def test_examples() -> None:
    """Known sizes: LF, CRLF, no final newline, empty, CR split across chunks."""
    assert wire_size(b"a\nb\n") == 6
    assert wire_size(b"a\r\nb\r\n") == 6
    assert wire_size(b"a") == 3
    assert wire_size(b"") == 2
    assert wire_size(b"a\r") == 4
    counter = WireSizeCounter()
    counter.update(b"a\r")
    counter.update(b"\nb\n")
    assert counter.size == 6
