"""RFC 5034 base64 framing: strict decoding, ``=`` and ``*``, and the 255-octet rule."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.sasl.errors import MalformedSaslError
from postoffice.sasl.framing import (
    CANCEL,
    challenge_line,
    decode_base64,
    decode_challenge_line,
    decode_initial_response,
    decode_response,
    encode_base64,
    initial_response_argument,
    initial_response_fits,
    response_line,
)


@pytest.mark.parametrize(
    ("text", "data"),
    [
        (b"", b""),
        (b"AA==", b"\0"),
        (b"AGFsaWNlAHdvbmRlcmxhbmQ=", b"\0alice\0wonderland"),
        (b"VXNlcm5hbWU6", b"Username:"),
        ("biws", b"n,,"),
    ],
)
def test_canonical_base64_decodes(text: bytes | str, data: bytes) -> None:
    assert decode_base64(text) == data


@pytest.mark.parametrize(
    "text",
    [
        b"A",  # one character short of a quantum
        b"AA=",  # short padding
        b"AA",  # padding missing
        b"AAA",
        b"AA==AA==",  # padding inside
        b"AB==",  # trailing bits set: non-canonical spelling of b"\0"
        b"AAB=",
        b"AA AA",  # whitespace
        b"AAAA\n",
        b"AA-_",  # the URL-safe alphabet
        b"=",
        b"*",
        "AAAé",
    ],
)
def test_anything_but_canonical_base64_is_malformed(text: bytes | str) -> None:
    with pytest.raises(MalformedSaslError):
        decode_base64(text)


def test_server_side_lines() -> None:
    assert challenge_line(b"Username:") == b"+ VXNlcm5hbWU6\r\n"
    assert challenge_line(b"") == b"+ \r\n"
    assert decode_response(b"*") is CANCEL
    assert decode_response(b"") == b""
    assert decode_response(b"AA==") == b"\0"
    assert decode_initial_response(b"=") == b""
    assert decode_initial_response(b"dXNlcg==") == b"user"
    with pytest.raises(MalformedSaslError):
        decode_initial_response(b"")
    with pytest.raises(MalformedSaslError):
        decode_response(b"**")


def test_client_side_lines() -> None:
    assert decode_challenge_line(b"+ VXNlcm5hbWU6") == b"Username:"
    assert decode_challenge_line(b"+") == b""
    assert decode_challenge_line(b"+ ") == b""
    with pytest.raises(MalformedSaslError):
        decode_challenge_line(b"+OK")
    assert response_line(b"") == b"\r\n"
    assert response_line(b"\x01") == b"AQ==\r\n"
    assert response_line(CANCEL) == b"*\r\n"
    assert initial_response_argument(b"") == b"="
    assert initial_response_argument(b"user") == b"dXNlcg=="


def test_initial_response_fits_in_255_octets_with_crlf() -> None:
    # "AUTH PLAIN " is 11 octets, CRLF 2: 242 octets of base64 fit, i.e. 181 of data.
    assert initial_response_fits("PLAIN", b"x" * 180)
    assert len(b"AUTH PLAIN " + base64.b64encode(b"x" * 181) + b"\r\n") == 257
    assert not initial_response_fits("PLAIN", b"x" * 181)


@given(st.binary(max_size=200))
def test_base64_round_trips(data: bytes) -> None:
    assert decode_base64(encode_base64(data)) == data
    assert decode_challenge_line(challenge_line(data).removesuffix(b"\r\n")) == data
    assert decode_response(response_line(data).removesuffix(b"\r\n")) == data


@given(st.binary(max_size=60) | st.text(max_size=60))
def test_decoding_anything_gives_data_or_malformed(text: bytes | str) -> None:
    try:
        data = decode_base64(text)
    except MalformedSaslError:
        return
    raw = text.encode("ascii") if isinstance(text, str) else text
    assert encode_base64(data) == raw  # only the one canonical spelling is accepted
