"""A user's maildir path: spelled as a Path spells it, with or without making the Path."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.auth.base import UserRecord
from postoffice.errors import StorageError
from postoffice.storage.paths import maildir_for, maildir_path_for

ALICE = UserRecord(name="alice", password_hash="{PLAIN}x", home="/home/alice")


PIECES = st.sampled_from(["/", "a", ".", "..", "~", "{user}", "{home}"])


@given(st.lists(PIECES, max_size=12).map("".join))
def test_the_string_is_what_the_path_spells(template: str) -> None:
    data_dir = Path("/var/lib/postoffice")
    filled = template.format(user="alice", home="/home/alice")
    try:
        expected = Path(filled).expanduser()
    except RuntimeError:  # "~name" of no such user: refused, not a traceback
        expected = Path(filled)
    if not expected.is_absolute():
        with pytest.raises(StorageError):
            maildir_path_for(template, data_dir=data_dir, user=ALICE)
        return
    assert maildir_path_for(template, data_dir=data_dir, user=ALICE) == str(expected)
    assert maildir_for(template, data_dir=data_dir, user=ALICE) == expected


def test_the_usual_templates() -> None:
    data_dir = Path("/var/lib/postoffice")
    assert (
        maildir_path_for("{data_dir}/mail/{user}/Maildir", data_dir=data_dir, user=ALICE)
        == "/var/lib/postoffice/mail/alice/Maildir"
    )
    assert maildir_path_for("{home}/Maildir/", data_dir=data_dir, user=ALICE) == (
        "/home/alice/Maildir"
    )
    with pytest.raises(StorageError, match="no home directory"):
        maildir_path_for("{home}/Maildir", data_dir=data_dir, user=UserRecord(name="bob"))
