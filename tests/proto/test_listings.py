"""LIST and UIDL bodies built at C speed equal the line-by-line form, and parse back."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.proto import listings
from postoffice.proto.listings import (
    parse_scan_listing,
    parse_uidl_listing,
    scan_listing_body,
    uid_listing_body,
)

_uid = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=70)


@given(
    sizes=st.lists(st.integers(0, 10**12), max_size=40),
    deleted=st.sets(st.integers(0, 45)),
)
def test_scan_listing_body_lists_messages_not_deleted(sizes: list[int], deleted: set[int]) -> None:
    """One "number size" line per message not deleted, numbered from 1."""
    body = scan_listing_body(sizes, deleted)
    expected = {n + 1: size for n, size in enumerate(sizes) if n not in deleted}
    assert body == b"".join(b"%d %d\r\n" % item for item in expected.items())
    assert parse_scan_listing(body) == expected


@given(uids=st.lists(_uid, max_size=40, unique=True), deleted=st.sets(st.integers(0, 45)))
def test_uid_listing_body_lists_messages_not_deleted(uids: list[str], deleted: set[int]) -> None:
    """One "number uid" line per message not deleted; a "%" in a UID is not a format."""
    body = uid_listing_body(uids, dict.fromkeys(deleted))
    expected = {n + 1: uid for n, uid in enumerate(uids) if n not in deleted}
    assert body == "".join(f"{n} {uid}\r\n" for n, uid in expected.items()).encode("ascii")
    assert parse_uidl_listing(body) == expected


def _plain_uid_body(uids: list[str]) -> bytes:
    return "".join(f"{n + 1} {uid}\r\n" for n, uid in enumerate(uids)).encode("ascii")


def _plain_scan_body(sizes: list[int]) -> bytes:
    return b"".join(b"%d %d\r\n" % (n + 1, size) for n, size in enumerate(sizes))


def test_big_bodies_come_from_the_cache_only_for_the_same_content() -> None:
    sizes = [1000 + n % 977 for n in range(12_000)]
    uids = [f"uid-{n}" for n in range(12_000)]
    expected_scan = _plain_scan_body(sizes)
    expected_uids = _plain_uid_body(uids)
    for _ in range(2):  # formatted, then taken from the cache
        assert scan_listing_body(sizes) == expected_scan
        assert uid_listing_body(uids) == expected_uids
    sizes[5_000] += 1
    uids[7_000] = "changed"
    assert scan_listing_body(sizes).split(b"\r\n")[5_000] == b"5001 %d" % sizes[5_000]
    assert uid_listing_body(uids).split(b"\r\n")[7_000] == b"7001 changed"
    # With deletions the body is formatted afresh and skips the deleted messages.
    body = scan_listing_body(sizes, {0, 11_999})
    assert body.startswith(b"2 ") and b"\r\n12000 " not in body


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["append", "change", "shrink", "same", "other"]),
            st.integers(1, 30),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_big_bodies_grown_from_a_kept_body_equal_formatting_afresh(
    steps: list[tuple[str, int]],
) -> None:
    """Whatever the bodies kept from earlier calls (here and in other tests), a maildrop that
    gained messages at its end, lost some, had one changed, or is another altogether gets
    exactly the body formatted line by line."""
    base = 10_000
    uids = [f"uid-{n}" for n in range(base)]
    sizes = [1000 + n % 977 for n in range(base)]
    for step, amount in steps:
        if step == "append":
            uids += [f"new-{len(uids) + k}" for k in range(amount)]
            sizes += [2000 + len(sizes) + k for k in range(amount)]
        elif step == "change":
            uids[-amount] = f"changed-{amount}-{len(uids)}"
            sizes[-amount] += 1
        elif step == "shrink" and len(uids) - amount >= base:
            del uids[-amount:], sizes[-amount:]
        elif step == "other":
            uids = [f"other-{amount}-{n}" for n in range(base + amount)]
            sizes = [3000 + amount + n % 13 for n in range(base + amount)]
        assert uid_listing_body(uids) == _plain_uid_body(uids)
        assert scan_listing_body(sizes) == _plain_scan_body(sizes)


def test_a_body_grown_from_a_kept_one_formats_only_the_new_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    formatted: list[int] = []
    make = listings._UID_BODIES._make

    def counting(values: Sequence[str], deleted: Collection[int], first: int) -> bytes:
        formatted.append(len(values))
        return make(values, deleted, first)

    monkeypatch.setattr(listings._UID_BODIES, "_make", counting)
    uids = [f"kept-{n}" for n in range(12_000)]
    first = uid_listing_body(uids)
    grown = uid_listing_body([*uids, "new-a", "new-b"])
    assert grown == first + b"12001 new-a\r\n12002 new-b\r\n"
    assert uid_listing_body(uids) is first  # still kept: not formatted again
    assert formatted == [12_000, 2]
