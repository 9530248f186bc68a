"""LIST and UIDL bodies built at C speed equal the line-by-line form, and parse back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

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
