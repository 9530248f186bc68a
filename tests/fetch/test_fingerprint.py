"""The fast header reading of fingerprints agrees with ``email``'s, or steps aside."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.fetch.fingerprint import _is_plain, _parsed_fields, _plain_fields, fingerprint_of

NAMES = st.sampled_from(
    [
        *(b"Message-ID", b"message-id", b"MESSAGE-ID", b"Date", b"date", b"Subject"),
        *(b"X-Date", b"Message-ID ", b"Message-IDs", b"Received", b"From", b":", b""),
    ]
)
TEXT = st.binary(max_size=12).map(lambda raw: bytes(b for b in raw if b not in b"\r\n"))
WORDS = st.one_of(TEXT, st.sampled_from([b" <a@b>", b"\t<c@d> ", b"", b"  Mon, 1 Jan", b"\x1c"]))
LINE_END = st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"])


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from([b" ", b"\t"])) + draw(WORDS))  # continuation
        else:
            lines.append(draw(NAMES) + b":" + draw(WORDS))
        lines.append(draw(LINE_END))
    if draw(st.booleans()):
        lines.insert(0, b"From someone\r\n")
    return b"".join(lines).rstrip(b"\r\n")


@settings(max_examples=600)
@given(headers())
def test_plain_reading_agrees_with_email_or_declines(header: bytes) -> None:
    plain = _plain_fields(header)
    if plain is not None:
        assert plain == _parsed_fields(header)


# The definition of a plain header as one regular expression over the whole header: lines
# that are each a field (an RFC 5322 §2.2 name, then ":") or, after the first, a
# continuation; CR only in CRLF; no blank line.
_LINE = rb"(?:[\x21-\x39\x3b-\x7e]+:|[ \t])[^\r\n]*"
_PLAIN = re.compile(rb"(?![ \t])(?:" + _LINE + rb"\r?\n)*" + _LINE)
_PIECES = st.sampled_from(
    [b"a", b"B", b":", b" ", b"\t", b"\r", b"\n", b"\r\n", b"x:", b"Date:", b"\x7f", b"\x00"]
)


@settings(max_examples=2000)
@given(st.one_of(headers(), st.lists(_PIECES, max_size=14).map(b"".join)))
def test_line_start_check_agrees_with_the_whole_header_expression(header: bytes) -> None:
    assert _is_plain(header) == (_PLAIN.fullmatch(header) is not None)


@pytest.mark.parametrize(
    "header",
    [
        b"Return-Path: <a@b>\r\nMessage-ID:\r\n <abc@def>\r\nDate: Mon, 1 Jan\r\n  2024\r\n"
        b"Subject: hi",
        b"Subject: no ids here\r\nX-Spam: 0",
        b"message-id: <x@y>\r\nMESSAGE-ID: <second@y>\r\ndate:",
        b"Date: \t Tue,\r\n\t2 Jan 2024  10:00 +0000",
    ],
)
def test_ordinary_headers_take_the_fast_way_and_match(header: bytes) -> None:
    assert _plain_fields(header) is not None
    assert _plain_fields(header) == _parsed_fields(header)


@pytest.mark.parametrize(
    "header",
    [
        b"Message-ID: <caf\xc3\xa9@x>\r\nDate: d",  # not ASCII
        b"Message-ID: <a@b>\rDate: d",  # a bare CR ends a line for email
        b" leading continuation\r\nMessage-ID: <a@b>",
        b"not a field\r\nMessage-ID: <a@b>",
        b"From someone\r\nMessage-ID: <a@b>",
        b"Subject: x\n\nMessage-ID: <a@b>",  # a blank line: the rest is body
    ],
)
def test_unusual_headers_are_left_to_email(header: bytes) -> None:
    assert _plain_fields(header) is None
    found = fingerprint_of(header)
    assert (found.message_id, found.date) == _parsed_fields(header.rstrip(b"\r\n"))
