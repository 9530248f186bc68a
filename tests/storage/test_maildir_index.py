"""The index file: what is written is read back; anything else is not used."""

from __future__ import annotations

import hashlib
from pathlib import Path

from postoffice.storage import maildir_index
from postoffice.storage.maildir_index import INDEX_NAME, Index, load_index, write_index


def columns(n: int) -> tuple[list[str], list[int], list[int], list[str]]:
    keys = [f"cur/{1700000000 + i}.M{i}P1.host,S={i + 1},W={2 * i + 2}:2,S" for i in range(n)]
    uids = [f"{1700000000 + i}.M{i}P1.host" for i in range(n)]
    return keys, [i + 1 for i in range(n)], [2 * i + 2 for i in range(n)], uids


def test_round_trip_keeps_every_column(tmp_path: Path) -> None:
    """Keys, sizes (also beyond 32 bits), UIDs, directory state and the pin come back."""
    keys, disk, wire, uids = columns(5)
    wire[3] = 1 << 40
    index = Index(
        dirs=((1, 2), (3, 4)), listed_ns=99, columns=(keys, disk, wire, uids), pinned=True
    )
    assert write_index(tmp_path, index) is not None
    loaded = load_index(tmp_path / INDEX_NAME)
    assert loaded is not None
    back = loaded[0]
    assert back.columns() == (keys, disk, wire, uids)
    assert (back.dirs, back.listed_ns, back.pinned) == (((1, 2), (3, 4)), 99, True)


def test_empty_index_round_trips(tmp_path: Path) -> None:
    """A maildrop with no mail has an index too."""
    write_index(tmp_path, Index(dirs=None, listed_ns=1, columns=([], [], [], [])))
    loaded = load_index(tmp_path / INDEX_NAME)
    assert loaded is not None and loaded[0].columns() == ([], [], [], [])


def test_key_with_a_line_feed_is_left_out_and_the_listing_not_trusted(tmp_path: Path) -> None:
    """Such a name cannot be stored, so the next snapshot must list the directories."""
    keys, disk, wire, uids = columns(3)
    keys[1] = "new/1.a\nb"
    index = Index(dirs=((1, 2), (3, 4)), listed_ns=5, columns=(keys, disk, wire, uids))
    write_index(tmp_path, index)
    loaded = load_index(tmp_path / INDEX_NAME)
    assert loaded is not None
    assert loaded[0].columns()[0] == [keys[0], keys[2]]
    assert loaded[0].dirs is None


def forge(path: Path, body: bytes) -> None:
    """A file with a valid checksum around ``body``."""
    digest = hashlib.sha256(body).hexdigest().encode("ascii")
    path.write_bytes(b"postoffice-index 4\n" + digest + b"\n" + body)


def test_forged_counts_and_sizes_are_refused(tmp_path: Path) -> None:
    """A count the body does not hold, or a short size column, makes the file unused."""
    path = tmp_path / INDEX_NAME
    write_index(tmp_path, Index(dirs=None, listed_ns=1, columns=columns(2)))
    good = path.read_bytes()
    body = good[good.index(b"\n", 20) + 1 :]
    assert load_index(path) is not None
    forge(path, body.replace(b" 2 0\n", b" 3 0\n", 1))
    assert load_index(path) is None
    forge(path, body.replace(b" 2 0\n", b" 1 0\n", 1))
    assert load_index(path) is None
    forge(path, body[:-1])  # the last key without its line feed
    assert load_index(path) is None
    forge(path, body.replace(b" 2 0\n", b" -1 0\n", 1))
    assert load_index(path) is None
    maildir_index.forget_all()


def test_index_with_uidls_no_client_may_see_is_not_used(tmp_path: Path) -> None:
    """An empty, too long, repeated or non-printable UIDL makes the whole file unused."""
    keys, disk, wire, uids = columns(3)
    for bad in ("", "x" * 71, uids[0], "a b", "caf\u00e9", "tab\there"):
        index = Index(dirs=None, listed_ns=1, columns=(keys, disk, wire, [*uids[:2], bad]))
        write_index(tmp_path, index)
        assert load_index(tmp_path / INDEX_NAME) is None, bad
    write_index(tmp_path, Index(dirs=None, listed_ns=1, columns=(keys, disk, wire, uids)))
    assert load_index(tmp_path / INDEX_NAME) is not None
