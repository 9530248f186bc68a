"""UIDL schemes: Dovecot's uidlist and pop3_uidl_format, Courier's sizelist, X-UIDL headers."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.errors import StorageError
from postoffice.storage.maildir import INDEX_NAME, MaildirMaildrop, ensure_maildir
from postoffice.storage.uidl import parse_uidl_format, read_x_uidl
from postoffice.storage.uidl_courier import parse_sizelist
from postoffice.storage.uidl_dovecot import DovecotFormat, parse_uidlist

# As the real Dovecot 2.3 wrote it for three doveadm saves, two files dropped into new/
# (older time stamps, so they got the higher UIDs) and pop3_save_uidl for UIDs 1 and 4.
UIDLIST = (
    b"3 V1795772344 N6 G5331cc24b84f096b1228000083ecc375\n"
    b"1 P1795772344.1 :1795772344.M617329P10258.vm,S=30,W=34\n"
    b"2 :1795772344.M658171P10263.vm,S=30,W=34\n"
    b"3 :1795772344.M696512P10266.vm,S=30,W=34\n"
    b"4 W34 P1795772344.4 :170000004.M1P1.test\n"
    b"5 W34 :170000005.M1P1.test\n"
)
MESSAGE = b"From: a@b\nSubject: m\n\nbody\n"


@pytest.fixture
def md(tmp_path: Path) -> Path:
    path = tmp_path / "Maildir"
    ensure_maildir(path)
    return path


def put(md: Path, key: str, data: bytes = MESSAGE) -> None:
    (md / key).write_bytes(data)


def listing(md: Path, uidl_format: str) -> list[tuple[str, str]]:
    return [(m.key, m.uid) for m in MaildirMaildrop(md, uidl_format=uidl_format).snapshot()]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("%08Xu%08Xv", "000000016b094fb8"),
        ("%v.%u", "1795772344.1"),
        ("%{uidvalidity}-%{uid}", "1795772344-1"),
        ("%f", "1795772344.M1P2.h,S=30,W=34"),
        ("%g", "guid-1"),
        ("%Xu.%Xv", "1.6b094fb8"),
        ("100%%-%u", "100%-1"),
        ("%04u", "0001"),
        ("%2v", "17"),
        ("%-3.3v", "344"),
        ("%1.04u", "001"),
        ("%Uf", "1795772344.M1P2.H,S=30,W=34"),
    ],
)
def test_pop3_uidl_format_expands_like_dovecot(text: str, expected: str) -> None:
    """Dovecot's var_expand: widths, zero padding, offsets, lower-case X, long names."""
    fmt = DovecotFormat.compile(text)
    value = fmt.expand(
        uid=1, uidvalidity=1795772344, filename="1795772344.M1P2.h,S=30,W=34", guid="guid-1"
    )
    assert value == expected


@pytest.mark.parametrize("text", ["%m", "%{md5}", "%q", "abc", "%u%", "%{nosuch}"])
def test_unusable_pop3_uidl_formats_are_refused(text: str) -> None:
    """A format Dovecot cannot serve from a Maildir, or one without a variable, is an error."""
    with pytest.raises(ValueError, match="pop3_uidl_format"):
        DovecotFormat.compile(text)


@pytest.mark.parametrize(
    ("text", "scheme_id"),
    [
        ("postoffice", "postoffice"),
        ("dovecot", "dovecot:%08Xu%08Xv"),
        ("dovecot:%v.%u", "dovecot:%v.%u"),
        ("courier", "courier"),
        ("x-uidl", "x-uidl"),
    ],
)
def test_uidl_format_names(text: str, scheme_id: str) -> None:
    assert parse_uidl_format(text).id == scheme_id


@pytest.mark.parametrize("text", ["Dovecot", "courier:x", "", "uidl"])
def test_unknown_uidl_format(text: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_uidl_format(text)


def test_uidlist_version_3_fields() -> None:
    """V, N, P, O and G are read; records are keyed by base name; a partial line is ignored."""
    data = UIDLIST + b"7 O2 GXY :1795772399.M1P1.h:2,S\n8 P9 :partial"
    uidlist = parse_uidlist(data)
    assert (uidlist.uidvalidity, uidlist.next_uid) == (1795772344, 6)
    assert uidlist.records["1795772344.M617329P10258.vm,S=30,W=34"].pop3_uidl == "1795772344.1"
    assert uidlist.records["1795772344.M658171P10263.vm,S=30,W=34"].pop3_uidl is None
    seven = uidlist.records["1795772399.M1P1.h"]
    assert (seven.uid, seven.pop3_order, seven.guid) == (7, 2, "XY")
    assert len(uidlist.records) == 6


def test_uidlist_versions_1_and_2() -> None:
    one = parse_uidlist(b"1 1100000000 3\n1 100.a.h\n2 200.b.h:2,S\n")
    assert one.uidvalidity == 1100000000
    assert {name: r.uid for name, r in one.records.items()} == {"100.a.h": 1, "200.b.h": 2}
    two = parse_uidlist(b"2 1100000000 2\n1 0 100.a.h\n")
    assert two.records["100.a.h"].uid == 1


@pytest.mark.parametrize("data", [b"", b"4 V1\n", b"3 N5\n", b"1 x y\n"])
def test_unusable_uidlist_header(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_uidlist(data)


@given(st.binary(max_size=300))
def test_uidlist_parser_returns_or_raises_value_error(data: bytes) -> None:
    """Any bytes parse or raise ValueError (never another exception)."""
    with contextlib.suppress(ValueError):
        parse_uidlist(data)


@given(st.binary(max_size=300))
def test_sizelist_parser_returns_or_raises_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        parse_sizelist(data)


def dovecot_maildir(md: Path) -> None:
    (md / "dovecot-uidlist").write_bytes(UIDLIST)
    put(md, "cur/1795772344.M617329P10258.vm,S=30,W=34:2,")
    put(md, "cur/1795772344.M658171P10263.vm,S=30,W=34:2,S")
    put(md, "new/1795772344.M696512P10266.vm,S=30,W=34")
    put(md, "cur/170000004.M1P1.test:2,")
    put(md, "cur/170000005.M1P1.test:2,")


def test_dovecot_scheme_serves_dovecots_uidls_in_uid_order(md: Path) -> None:
    """Saved P UIDLs win, the rest use the format; order is Dovecot's UID order."""
    dovecot_maildir(md)
    assert [uid for _, uid in listing(md, "dovecot")] == [
        "1795772344.1",
        "000000026b094fb8",
        "000000036b094fb8",
        "1795772344.4",
        "000000056b094fb8",
    ]
    assert [uid for _, uid in listing(md, "dovecot:%u")] == [
        "1795772344.1",
        "2",
        "3",
        "1795772344.4",
        "5",
    ]


def test_dovecot_scheme_natural_uidl_for_mail_dovecot_never_saw(md: Path) -> None:
    """A message not in dovecot-uidlist gets the natural UIDL and comes last."""
    dovecot_maildir(md)
    put(md, "new/1600000000.M5P5.late,S=30,W=34")
    listed = listing(md, "dovecot")
    assert listed[-1] == ("new/1600000000.M5P5.late,S=30,W=34", "1600000000.M5P5.late")
    assert len(listed) == 6


def test_dovecot_uidls_stay_after_the_uidlist_is_gone(md: Path) -> None:
    """Once listed, a UIDL is kept by the index even if dovecot-uidlist disappears."""
    dovecot_maildir(md)
    first = listing(md, "dovecot")
    (md / "dovecot-uidlist").unlink()
    put(md, "new/1800000000.M1P1.new")
    again = listing(md, "dovecot")
    assert again[:5] == first
    assert again[5][1] == "1800000000.M1P1.new"


def test_changing_the_scheme_does_not_reuse_the_index(md: Path) -> None:
    """An index written under one scheme is not used under another."""
    dovecot_maildir(md)
    natural = listing(md, "postoffice")
    assert natural[0][1] == "170000004.M1P1.test"
    assert listing(md, "dovecot")[0][1] == "1795772344.1"
    assert listing(md, "postoffice") == natural
    assert (md / INDEX_NAME).read_bytes().startswith(b"postoffice-index 4\n")


def test_duplicate_and_invalid_saved_uidls(md: Path) -> None:
    """Dovecot may serve duplicates and over-long UIDLs; we keep the first and digest the rest."""
    long_uidl = "x" * 71
    (md / "dovecot-uidlist").write_bytes(
        f"3 V5 N4\n1 Psame :1.a.h\n2 Psame :2.b.h\n3 P{long_uidl} :3.c.h\n".encode()
    )
    for name in ("1.a.h", "2.b.h", "3.c.h"):
        put(md, f"new/{name}")
    uids = [uid for _, uid in listing(md, "dovecot")]
    assert uids[0] == "same"
    assert uids[1].startswith("D") and uids[2].startswith("D")
    assert len(set(uids)) == 3


def test_unreadable_uidlist_fails_the_snapshot(md: Path) -> None:
    """A uidlist that cannot be parsed fails the snapshot rather than change every UIDL."""
    (md / "dovecot-uidlist").write_bytes(b"9 garbage\n")
    put(md, "new/1.a.h")
    with pytest.raises(StorageError, match="dovecot-uidlist"):
        listing(md, "dovecot")


def test_pop3_order_field_orders_first(md: Path) -> None:
    """Dovecot's saved POP3 order (O) comes before plain UID order."""
    (md / "dovecot-uidlist").write_bytes(b"3 V5 N4\n1 :1.a.h\n2 O2 :2.b.h\n3 O1 :3.c.h\n")
    for name in ("1.a.h", "2.b.h", "3.c.h"):
        put(md, f"new/{name}")
    assert [key for key, _ in listing(md, "dovecot:%u")] == ["new/3.c.h", "new/2.b.h", "new/1.a.h"]


def test_courier_scheme(md: Path) -> None:
    """UID<n>-<uidvalidity> from courierpop3dsizelist, matched by base name."""
    (md / "courierpop3dsizelist").write_bytes(
        b"/3 4 1700000000\n"
        b"1600000001.M1P1.h:2,S 40 1:1700000000:0\n"
        b"1600000002.M1P1.h with space:2, 40 2:1700000000:0\n"
        b"1600000003.M1P1.h 40 3:0\n"
    )
    put(md, "cur/1600000001.M1P1.h:2,S")
    put(md, "cur/1600000002.M1P1.h with space:2,S")
    put(md, "cur/1600000003.M1P1.h:2,")
    put(md, "new/1600000004.M1P1.h")
    assert [uid for _, uid in listing(md, "courier")] == [
        "UID1-1700000000",
        "UID2-1700000000",
        "UID3",
        "1600000004.M1P1.h",
    ]


def test_courier_version_0_uidl() -> None:
    sizelist = parse_sizelist(b'/2 2 0\n1600000001.a+b c" 10 0:0\n')
    assert sizelist.uidls == {'1600000001.a+b c"': "1600000001.a+2Bb+20c+22"}


def test_x_uidl_scheme(md: Path) -> None:
    """The X-UIDL header's value (folded or not); without one, the natural UIDL."""
    put(md, "new/1.a.h", b"Subject: x\r\nX-UIDL:  abc123 \r\n\r\nX-UIDL: body\r\n")
    put(md, "new/2.b.h", b"x-uidl:\n\tfolded-1\nSubject: y\n\nbody\n")
    put(md, "new/3.c.h", b"Subject: none\n\nX-UIDL: only in the body\n")
    assert [uid for _, uid in listing(md, "x-uidl")] == ["abc123", "folded-1", "3.c.h"]


def test_x_uidl_of_a_vanished_file(tmp_path: Path) -> None:
    assert read_x_uidl(tmp_path / "gone") is None
