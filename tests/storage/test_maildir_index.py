"""The index file: what is written is read back; anything else is not used."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

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
    index = Index(dirs=(1, 2, 3, 4), listed_ns=99, columns=(keys, disk, wire, uids), pinned=True)
    assert write_index(tmp_path, index) is not None
    loaded = load_index(tmp_path / INDEX_NAME)
    assert loaded is not None
    back = loaded[0]
    assert back.columns() == (keys, disk, wire, uids)
    assert (back.dirs, back.listed_ns, back.pinned) == ((1, 2, 3, 4), 99, True)


def test_empty_index_round_trips(tmp_path: Path) -> None:
    """A maildrop with no mail has an index too."""
    write_index(tmp_path, Index(dirs=None, listed_ns=1, columns=([], [], [], [])))
    loaded = load_index(tmp_path / INDEX_NAME)
    assert loaded is not None and loaded[0].columns() == ([], [], [], [])


def test_key_with_a_line_feed_is_left_out_and_the_listing_not_trusted(tmp_path: Path) -> None:
    """Such a name cannot be stored, so the next snapshot must list the directories."""
    keys, disk, wire, uids = columns(3)
    keys[1] = "new/1.a\nb"
    index = Index(dirs=(1, 2, 3, 4), listed_ns=5, columns=(keys, disk, wire, uids))
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


def whole_file(index: Index, scheme_magic: bytes = b"postoffice-index 4\n") -> bytes:
    """The file as one piece, the way the format is described (maildir_index.py)."""
    keys, disk, wire, uids = index.columns()
    dirs = index.dirs
    head = "- - - -" if dirs is None else f"{dirs[0]} {dirs[1]} {dirs[2]} {dirs[3]}"
    body = (
        f"{head} {index.listed_ns} {len(keys)} {int(index.pinned)}\n".encode("ascii")
        + b"".join(size.to_bytes(8, "little") for size in disk)
        + b"".join(size.to_bytes(8, "little") for size in wire)
        + "".join(f"{line}\n" for line in [*uids, *keys]).encode("utf-8", "surrogateescape")
    )
    return scheme_magic + hashlib.sha256(body).hexdigest().encode("ascii") + b"\n" + body


def test_file_written_in_pieces_is_the_whole_file(tmp_path: Path) -> None:
    """Many entries, written a few thousand lines at a time, make the same bytes as the
    format written in one piece; a key with an undecodable byte included."""
    n = 3 * maildir_index._LINES_AT_ONCE + 5
    keys, disk, wire, uids = columns(n)
    keys[n - 2] = "cur/1.caf\udce9:2,S"  # a name that was not UTF-8
    index = Index(dirs=(1, 2, 3, 4), listed_ns=7, columns=(keys, disk, wire, uids))
    write_index(tmp_path, index)
    assert (tmp_path / INDEX_NAME).read_bytes() == whole_file(index)
    loaded = load_index(tmp_path / INDEX_NAME)
    assert loaded is not None and loaded[0].columns() == (keys, disk, wire, uids)


def test_line_feed_in_a_later_piece_leaves_that_key_out(tmp_path: Path) -> None:
    """A key with a line feed found after the first pieces were written: the file is
    written again without it, and not trusted."""
    n = 2 * maildir_index._LINES_AT_ONCE + 3
    keys, disk, wire, uids = columns(n)
    keys[n - 1] = "new/1.a\nb"
    write_index(tmp_path, Index(dirs=(1, 2, 3, 4), listed_ns=5, columns=(keys, disk, wire, uids)))
    expected = Index(dirs=None, listed_ns=5, columns=(keys[:-1], disk[:-1], wire[:-1], uids[:-1]))
    assert (tmp_path / INDEX_NAME).read_bytes() == whole_file(expected)
    assert [p.name for p in tmp_path.iterdir()] == [INDEX_NAME]


@pytest.mark.parametrize("size", [0, 1, 4096, 3 << 20])
def test_a_file_is_read_whole_with_its_identity(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "file"
    path.write_bytes(data)
    raw, file_id = maildir_index._read_whole(path)
    st = os.stat(path)
    assert raw == data and file_id == (st.st_ino, st.st_mtime_ns, st.st_size)
