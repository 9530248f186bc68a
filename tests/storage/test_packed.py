"""A small maildrop's packed snapshot: its sizes on disk, and what cannot be packed (its
behaviour as a list of messages: ``test_column_messages``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.storage.packed import PackedMessages


@given(st.lists(st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)), max_size=30))
def test_packed_messages_keep_their_disk_sizes(sizes: list[tuple[int, int]]) -> None:
    """Besides the messages (``test_column_messages``), the sizes on disk the index needs;
    without them, the same as the sizes."""
    keys = [f"cur/{i}" for i in range(len(sizes))]
    uids = [f"uid{i}" for i in range(len(sizes))]
    wire, disk = [w for w, _ in sizes], [d for _, d in sizes]
    kept = PackedMessages(keys, uids, wire, disk)
    assert kept.sizes() == wire and kept.disk_sizes() == disk
    plain = PackedMessages(keys, uids, wire)
    assert plain.disk_sizes() == plain.sizes() == wire and plain == kept


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
