"""A large maildrop's snapshot, a view of its index columns, behaves as its list."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.storage.base import StoredMessage
from postoffice.storage.column_messages import ColumnMessages

keys = st.text(min_size=1, max_size=60)
uids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=70)
messages = st.lists(st.builds(StoredMessage, keys, uids, st.integers(0, 2**63 - 1)), max_size=30)


def viewed(listed: list[StoredMessage]) -> ColumnMessages:
    return ColumnMessages(
        [m.key for m in listed], [m.uid for m in listed], [m.size for m in listed]
    )


@given(messages, st.integers(-40, 40), st.integers(-40, 40), st.integers(-3, 3).filter(bool))
def test_column_messages_behave_as_their_list(
    listed: list[StoredMessage], start: int, stop: int, step: int
) -> None:
    view = viewed(listed)
    assert len(view) == len(listed)
    assert list(view) == listed and view == listed and view == tuple(listed)
    assert view == viewed(listed) and view != [*listed, StoredMessage("k", "u", 1)]
    for index in range(-len(listed), len(listed)):
        assert view[index] == listed[index]
        assert type(view[index]) is StoredMessage
    for index in (len(listed), -len(listed) - 1):
        with pytest.raises(IndexError):
            view[index]
    assert view[start:stop:step] == listed[start:stop:step]
    assert view.keys() == [m.key for m in listed]
    assert list(view.uids()) == [m.uid for m in listed]
    assert list(view.sizes()) == [m.size for m in listed]


def test_columns_of_unequal_length_are_refused() -> None:
    with pytest.raises(ValueError):
        ColumnMessages(["cur/a"], ["uid"], [1, 2])
