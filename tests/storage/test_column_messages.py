"""Snapshots kept as columns (a large maildrop's view of its index columns, a small one's
packed form) behave as the list of messages they were made from."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.storage.base import StoredMessage
from postoffice.storage.column_messages import ColumnMessages, SnapshotColumns
from postoffice.storage.packed import PackedMessages

keys = st.text(st.characters(blacklist_characters="\0"), min_size=1, max_size=60)
uids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=70)
messages = st.lists(st.builds(StoredMessage, keys, uids, st.integers(0, 2**63 - 1)), max_size=30)


def viewed(listed: list[StoredMessage]) -> ColumnMessages:
    return ColumnMessages(
        [m.key for m in listed], [m.uid for m in listed], [m.size for m in listed]
    )


def packed(listed: list[StoredMessage]) -> PackedMessages:
    return PackedMessages(
        [m.key for m in listed],
        [m.uid for m in listed],
        [m.size for m in listed],
        [m.size // 2 for m in listed],  # as if they were stored with CRLF
    )


KINDS = [viewed, packed]


@pytest.mark.parametrize("make", KINDS)
@given(messages, st.integers(-40, 40), st.integers(-40, 40), st.integers(-3, 3).filter(bool))
def test_snapshot_columns_behave_as_their_list(
    make: Callable[[list[StoredMessage]], SnapshotColumns],
    listed: list[StoredMessage],
    start: int,
    stop: int,
    step: int,
) -> None:
    kept = make(listed)
    assert len(kept) == len(listed)
    assert list(kept) == listed and kept == listed and kept == tuple(listed)
    assert kept != [*listed, StoredMessage("k", "u", 1)]
    for other in KINDS:  # either kind equals the other made from the same messages
        assert kept == other(listed) and kept != other([*listed, StoredMessage("k", "u", 1)])
    for index in range(-len(listed), len(listed)):
        assert kept[index] == listed[index]
        assert type(kept[index]) is StoredMessage
    for index in (len(listed), -len(listed) - 1):
        with pytest.raises(IndexError):
            kept[index]
    assert kept[start:stop:step] == listed[start:stop:step]
    assert list(kept.keys()) == [m.key for m in listed]
    assert list(kept.uids()) == [m.uid for m in listed]
    assert list(kept.sizes()) == [m.size for m in listed]
    assert repr(kept) == f"{type(kept).__name__}({listed!r})"


def test_columns_of_unequal_length_are_refused() -> None:
    with pytest.raises(ValueError):
        ColumnMessages(["cur/a"], ["uid"], [1, 2])
