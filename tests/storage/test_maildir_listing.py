"""The column-wise listing gives what parsing and counting each name alone gives."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.storage import maildir_index, maildir_listing
from postoffice.storage.maildir import MaildirMaildrop, ensure_maildir
from postoffice.storage.maildir_names import alternate_uid, parse_name
from postoffice.storage.wire import wire_size


def reference(md: Path) -> list[tuple[str, str, int]]:
    """(key, uid, size) the slow way: parse_name per name, tags believed when sane."""
    rows = []
    for sub in ("new", "cur"):
        for name in os.listdir(md / sub):
            if name.startswith("."):
                continue
            seconds, micros, base, uid, tags = parse_name(name)
            data = (md / sub / name).read_bytes()
            size = wire_size(data)
            if tags is not None and 0 < tags[0] <= tags[1] <= 2 * tags[0]:
                size = tags[1]
            rows.append(((seconds, micros, base, f"{sub}/{name}"), uid, size))
    # One entry per base name: the cur/ one, else the smaller key.
    best: dict[str, tuple[tuple[int, int, str, str], str, int]] = {}
    for row in rows:
        base, key = row[0][2], row[0][3]
        other = best.get(base)
        if other is None:
            best[base] = row
            continue
        other_key = other[0][3]
        same_directory = key[:4] == other_key[:4]
        if key < other_key if same_directory else key.startswith("cur/"):
            best[base] = row
    rows = sorted(best.values())
    taken: set[str] = set()
    listed = []
    for (_, _, base, key), uid, size in rows:
        if uid in taken:
            uid = alternate_uid(base, taken)
        taken.add(uid)
        listed.append((key, uid, size))
    return listed


_seconds = st.sampled_from(["1", "9", "10", "99", "1700000000", "1700000001", "999999999"])
_micros = st.none() | st.sampled_from(["0", "7", "10", "99", "100", "999999", "1234567"])
_rest = st.text("PQ.abc,=:-_ \t\u00e9\n", max_size=8) | st.sampled_from(["P1.host", "x" * 80])
_tags = st.sampled_from(["", ",S=5,W=6", ",S=6,W=6", ",S=5,W=11", ",W=6", ",S=5", ",XX=1"])
_info = st.sampled_from(["", ":2,", ":2,S", ":2,RS", ":1,x"])


@st.composite
def names(draw: st.DrawFn) -> str:
    micros = draw(_micros)
    stem = draw(_seconds) + "." + (f"M{micros}" if micros is not None else "")
    return stem + draw(_rest) + draw(_tags) + draw(_info)


@settings(max_examples=80, deadline=None)
def assert_lists_like_the_reference(new: list[str], cur: list[str]) -> None:
    """A cold snapshot of a maildir holding ``new`` and ``cur`` equals ``reference``."""
    with tempfile.TemporaryDirectory() as top:
        md = Path(top)
        ensure_maildir(md)
        for sub, listed in (("new", new), ("cur", cur)):
            for name in listed:
                (md / sub / name).write_bytes(b"abcd\n")
        maildir_index.forget_all()
        messages = MaildirMaildrop(md).snapshot()
        assert [(m.key, m.uid, m.size) for m in messages] == reference(md)


@given(
    new=st.lists(names(), max_size=12, unique=True),
    cur=st.lists(names(), max_size=12, unique=True),
)
def test_cold_listing_equals_the_reference(new: list[str], cur: list[str]) -> None:
    """Order, UIDLs, sizes and duplicate resolution match a name-by-name listing."""
    assert_lists_like_the_reference(new, cur)


@pytest.mark.parametrize("count", [0, 1, 500])
def test_many_names_in_random_directory_order(tmp_path: Path, count: int) -> None:
    """Names in both directories, some within one second, list oldest first."""
    md = tmp_path / "Maildir"
    ensure_maildir(md)
    for i in range(count):
        micros = (i * 7919) % 1000
        name = f"{1700000000 + i // 3}.M{micros}P{i}.host,S=5,W=6"
        if i % 4:
            (md / "cur" / f"{name}:2,S").write_bytes(b"abcd\n")
        else:
            (md / "new" / name).write_bytes(b"abcd\n")
    messages = MaildirMaildrop(md).snapshot()
    assert [(m.key, m.uid, m.size) for m in messages] == reference(md)


def keys_listed_with_one_file_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_cur: list[str], in_new: str, gone: str
) -> list[str]:
    """The keys a snapshot lists when the file ``gone`` vanishes as it is measured."""
    md = tmp_path / "Maildir"
    ensure_maildir(md)
    for name in in_cur:
        (md / "cur" / name).write_bytes(b"abcd\n")
    (md / "new" / in_new).write_bytes(b"abcd\n")
    real_count = maildir_listing.count_file

    def count_file(path: Path) -> tuple[int, int] | None:
        return None if path.name == gone else real_count(path)

    monkeypatch.setattr(maildir_listing, "count_file", count_file)
    return [m.key for m in MaildirMaildrop(md).snapshot()]


def test_file_gone_while_measured_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name without size tags whose file vanishes before it is read is not listed."""
    keys = keys_listed_with_one_file_gone(
        tmp_path,
        monkeypatch,
        ["1700000002.M5P1.h", "1700000001.M5P1.h", "1700000003.M5P1.h,S=5,W=6"],
        "1700000000.M9P1.h,S=5,W=6",
        gone="1700000001.M5P1.h",
    )
    assert keys == [
        "new/1700000000.M9P1.h,S=5,W=6",
        "cur/1700000002.M5P1.h",
        "cur/1700000003.M5P1.h,S=5,W=6",
    ]


def test_usual_file_gone_while_measured_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Among names of the usual shape, one within a second, a file whose tags are not
    believed and that vanishes before it is read is not listed; the others keep the
    order their microseconds give them."""
    gone = "1700000001.M50P1.h,S=9,W=5:2,S"
    keys = keys_listed_with_one_file_gone(
        tmp_path,
        monkeypatch,
        ["1700000001.M100P1.h,S=5,W=6:2,S", gone, "1700000001.M7P1.h,S=5,W=6:2,S"],
        "1700000001.M99P1.h,S=5,W=6",
        gone=gone,
    )
    assert keys == [
        "cur/1700000001.M7P1.h,S=5,W=6:2,S",
        "new/1700000001.M99P1.h,S=5,W=6",
        "cur/1700000001.M100P1.h,S=5,W=6:2,S",
    ]


_usual = st.builds(
    lambda seconds, micros, n, info: f"{seconds}.{micros}P{n}.host,S=5,W=6{info}",
    st.sampled_from(["1700000000", "1700000001", "1700000002"]),
    st.sampled_from(["", "M0", "M7", "M10", "M99", "M100"]),
    st.integers(0, 3),
    st.sampled_from(["", ":2,S"]),
)


_with_microseconds = st.builds(
    lambda seconds, micros, n, extra, info: f"{seconds}.{micros}P{n}.host{extra},S=5,W=6{info}",
    st.sampled_from(["1700000000", "1700000001", "17000000001"]),
    st.sampled_from(["M0", "M7", "M10", "M999999", "M1234567"]),
    st.integers(0, 3),
    st.sampled_from(["", "", "", ",X=1", ":"]),
    st.sampled_from(["", ":2,S", ":2,RS"]),
)


# new/ and cur/ drawn from one kind of names: with _with_microseconds most listings are
# read by the quicker pattern alone, and a name of another shape (seven digits of
# microseconds, a field after the name) sends a whole listing to the general one.
_directories_of_one_kind = st.sampled_from([_usual, _with_microseconds]).flatmap(
    lambda names: st.tuples(
        st.lists(names, max_size=10, unique=True), st.lists(names, max_size=10, unique=True)
    )
)


@settings(max_examples=300, deadline=None)
@given(_directories_of_one_kind)
def test_usual_names_in_both_directories_list_like_the_reference(
    directories: tuple[list[str], list[str]],
) -> None:
    """Dovecot-shaped names, many within one second, in new/ and cur/: oldest first."""
    assert_lists_like_the_reference(*directories)


def test_usual_names_beside_dot_files_and_other_entries(tmp_path: Path) -> None:
    """Names that sort before and after dot files, and usual-shaped names of a
    directory, a symlink and a dot file, leave only the regular files listed."""
    md = tmp_path / "Maildir"
    ensure_maildir(md)
    served = {
        "cur/1700000001.M1P1.h,S=5,W=6:2,S",
        "cur/-1.M1P1.h,S=5,W=6:2,S",  # "-" sorts before "."
        "cur/+1.M1P1.h,S=5,W=6",  # "+" as well
        "new/1700000002.M1P1.h,S=5,W=6",
        "new/0.M1P1.h,S=5,W=6",  # "0" sorts after "/"
    }
    for key in served:
        (md / key).write_bytes(b"abcd\n")
    for key in ("cur/.1700000000.M1P1.h,S=5,W=6:2,S", "new/.x", "cur/..a"):
        (md / key).write_bytes(b"abcd\n")
    (md / "cur" / "1700000003.M1P1.h,S=5,W=6:2,S").mkdir()
    (md / "new" / "1700000004.M1P1.h,S=5,W=6").symlink_to(md / "new" / "0.M1P1.h,S=5,W=6")
    messages = MaildirMaildrop(md).snapshot()
    assert {m.key for m in messages} == served
    assert [m.key for m in messages] == [
        "cur/+1.M1P1.h,S=5,W=6",
        "cur/-1.M1P1.h,S=5,W=6:2,S",
        "new/0.M1P1.h,S=5,W=6",
        "cur/1700000001.M1P1.h,S=5,W=6:2,S",
        "new/1700000002.M1P1.h,S=5,W=6",
    ]


def test_a_name_with_a_line_feed_is_one_message(tmp_path: Path) -> None:
    """A name with a line feed between two usual-looking parts is listed once, with the
    tags, UIDL and order parse_name gives it, among usual names."""
    md = tmp_path / "Maildir"
    ensure_maildir(md)
    odd = "1700000001.M1P1.h,S=5,W=6\n1700000009.M2P1.h,S=5,W=6:2,S"
    for name in (odd, "1700000000.M1P1.h,S=5,W=6:2,S", "1700000002.M1P1.h,S=5,W=6:2,S"):
        (md / "cur" / name).write_bytes(b"abcd\n")
    messages = MaildirMaildrop(md).snapshot()
    assert [(m.key, m.uid, m.size) for m in messages] == reference(md)
    assert [m.key for m in messages][1] == f"cur/{odd}"
    assert len(messages) == 3


@pytest.mark.parametrize(
    "tags",
    [
        [",S=5,W=6", ",S=05,W=6", ",S=5,W=0006"],  # leading zeros (not JSON numbers)
        [",S=0,W=0", ",S=5,W=6", ",S=123456789012345678,W=123456789012345678"],
        [",S=7,W=6", ",S=5,W=11", ",S=6,W=6"],  # tags that are not believed
    ],
)
@pytest.mark.parametrize("piece", [1, 2048])
def test_usual_names_with_any_tag_digits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tags: list[str], piece: int
) -> None:
    """S and W of usual names, read a piece at a time, give the values int() gives; a
    tag not to be believed in any piece has its file counted."""
    monkeypatch.setattr(maildir_listing, "_PIECE", piece)
    md = tmp_path / "Maildir"
    ensure_maildir(md)
    for i, tag in enumerate(tags):
        (md / "cur" / f"170000000{i}.M{i}P1.h{tag}:2,S").write_bytes(b"abcd\n")
    (md / "new" / "1700000009.M1P1.h,S=5,W=6").write_bytes(b"abcd\n")
    messages = MaildirMaildrop(md).snapshot()
    assert [(m.key, m.uid, m.size) for m in messages] == reference(md)
    index = maildir_index.load_index(md / maildir_index.INDEX_NAME)
    assert index is not None
    keys, disk, wire, _ = index[0].columns()
    by_key = dict(zip(keys, zip(disk, wire, strict=True), strict=True))
    for i, tag in enumerate(tags):
        s, _, w = tag[3:].partition(",W=")
        if 0 < int(s) <= int(w) <= 2 * int(s):
            assert by_key[f"cur/170000000{i}.M{i}P1.h{tag}:2,S"] == (int(s), int(w))


@pytest.mark.parametrize(
    ("cur", "new"),
    [
        # One UIDL twice in cur/: one base name twice, then two base names.
        (["1.M1P1.h,S=5,W=6:2,S", "1.M1P1.h,S=5,W=6:2,RS", "2.M1P1.h,S=5,W=6:2,S"], []),
        (["1.M1P1.h,S=5,W=6:2,S", "1.M1P1.h,S=5,W=7:2,S", "1.M1P1.hx,S=5,W=6:2,S"], []),
        # One UIDL in both directories, far apart in name order.
        (["1.M1P1.h,S=5,W=6:2,S", "2.M1P1.h,S=5,W=6:2,S"], ["0.M1P1.h,S=5,W=6"]),
        (["1.M1P1.h,S=5,W=6:2,S", "2.M1P1.h,S=5,W=6:2,S"], ["1.M1P1.h,S=5,W=9"]),
    ],
)
def test_one_uidl_twice_among_usual_names(cur: list[str], new: list[str]) -> None:
    """Usual names sharing a UIDL, in one directory or across both, are resolved as the
    reference resolves them (one entry per base name, a digest for a later base name)."""
    assert_lists_like_the_reference(new, cur)


@pytest.mark.parametrize("odd", [None, "1700000100.P1.h,S=5,W=6", "1700000100.M1P1.h x,S=5,W=6"])
@pytest.mark.parametrize("piece", [1, 3, 2048])
def test_usual_names_split_in_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int, odd: str | None
) -> None:
    """Names parsed a few at a time, across both directories, list like the reference;
    a name of another shape in the last piece sends the whole listing the general way."""
    monkeypatch.setattr(maildir_listing, "_PIECE", piece)
    md = tmp_path / "Maildir"
    ensure_maildir(md)
    for i in range(11):
        (md / "cur" / f"{1700000000 + i // 2}.M{i % 2 * 10 + 5}P{i}.h,S=5,W=6:2,S").write_bytes(
            b"abcd\n"
        )
    for i in range(7):
        (md / "new" / f"{1700000003 + i}.M{100 - i}P{i}.h,S=5,W=6").write_bytes(b"abcd\n")
    if odd is not None:
        (md / "new" / odd).write_bytes(b"abcd\n")
    messages = MaildirMaildrop(md).snapshot()
    assert [(m.key, m.uid, m.size) for m in messages] == reference(md)
    assert len(messages) == 18 + (odd is not None)


@pytest.mark.parametrize(
    ("cur", "new"),
    [
        # Unpadded microseconds within one second: name order is not time order.
        (["1700000000.M99P1.h,S=5,W=6:2,S", "1700000000.M100P2.h,S=5,W=6:2,S"], []),
        # One time twice, in both directories: then by base name (new/ first here).
        (
            ["1700000000.M5Pb.h,S=5,W=6:2,S", "1700000000.M10Pa.h,S=5,W=6:2,S"],
            ["1700000000.M5Pa.h,S=5,W=6"],
        ),
        # Seconds of unequal length: not comparable as text.
        (
            ["999999999.M5P1.h,S=5,W=6:2,S", "1000000000.M7P1.h,S=5,W=6:2,S"],
            ["999999999.M10P1.h,S=5,W=6"],
        ),
    ],
)
def test_usual_names_out_of_name_order(cur: list[str], new: list[str]) -> None:
    """Usual names whose name order is not their time order are sorted like the
    reference sorts them."""
    assert_lists_like_the_reference(new, cur)
