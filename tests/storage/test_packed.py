"""A small maildrop's packed snapshot behaves as the list of messages it was made from."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.storage.base import StoredMessage
from postoffice.storage.packed import PackedMessages

keys = st.text(st.characters(blacklist_characters="\0"), min_size=1, max_size=60)
uids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=70)
messages = st.lists(st.builds(StoredMessage, keys, uids, st.integers(0, 2**63 - 1)), max_size=30)


def packed(listed: list[StoredMessage]) -> PackedMessages:
    return PackedMessages(
        [m.key for m in listed],
        [m.uid for m in listed],
        [m.size for m in listed],
        [m.size // 2 for m in listed],  # as if they were stored with CRLF
    )


@given(messages, st.integers(-40, 40), st.integers(-40, 40), st.integers(-3, 3).filter(bool))
def test_packed_messages_behave_as_their_list(
    listed: list[StoredMessage], start: int, stop: int, step: int
) -> None:
    kept = packed(listed)
    assert len(kept) == len(listed)
    assert list(kept) == listed and kept == listed and kept == tuple(listed)
    assert kept == packed(listed) and kept != [*listed, StoredMessage("k", "u", 1)]
    for index in range(-len(listed), len(listed)):
        assert kept[index] == listed[index]
    for index in (len(listed), -len(listed) - 1):
        with pytest.raises(IndexError):
            kept[index]
    assert kept[start:stop:step] == listed[start:stop:step]
    assert kept.keys() == [m.key for m in listed]
    assert kept.uids() == [m.uid for m in listed]
    assert kept.sizes() == [m.size for m in listed]
    assert kept.disk_sizes() == [m.size // 2 for m in listed]
    plain = PackedMessages(kept.keys(), kept.uids(), kept.sizes())
    assert plain.disk_sizes() == plain.sizes() and plain == kept


def test_a_nul_or_a_bad_size_cannot_be_packed() -> None:
    """Only a forged index could hold them; the caller keeps such a maildrop unpacked."""
    with pytest.raises(ValueError):
        PackedMessages(["cur/a\0b"], ["uid"], [1])
    with pytest.raises(ValueError):
        PackedMessages(["cur/a"], ["uid"], [1, 2])
    with pytest.raises(ValueError):
        PackedMessages(["cur/a"], ["uid"], [1], [1, 2])
    with pytest.raises(ValueError):
        PackedMessages(["cur/a"], ["uid"], [-1])
