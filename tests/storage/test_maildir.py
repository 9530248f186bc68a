"""Maildir-specific behaviour: names, UIDLs, size tags, the index cache, flock, flags."""

from __future__ import annotations

import fcntl
import gc
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.errors import MaildropInUseError, StorageError
from postoffice.storage import maildir as maildir_module
from postoffice.storage import maildir_index
from postoffice.storage.base import StoredMessage
from postoffice.storage.column_messages import ColumnMessages
from postoffice.storage.maildir import INDEX_NAME, MaildirMaildrop, ensure_maildir
from postoffice.storage.packed import PackedMessages
from postoffice.storage.wire import wire_size

UID_RE = re.compile(r"[\x21-\x7e]{1,70}")


@pytest.fixture
def md(tmp_path: Path) -> Path:
    path = tmp_path / "Maildir"
    ensure_maildir(path)
    return path


def put(md: Path, key: str, data: bytes = b"Subject: x\n\nbody\n") -> Path:
    path = md / key
    path.write_bytes(data)
    return path


def snap(md: Path) -> Sequence[StoredMessage]:
    return MaildirMaildrop(md).snapshot()


def load_index(md: Path) -> maildir_index.Index | None:
    loaded = maildir_index.load_index(md / INDEX_NAME)
    return None if loaded is None else loaded[0]


def age_directories(md: Path, seconds: int = 100) -> None:
    """Set new/ and cur/ mtimes into the past, as if nothing changed for a while."""
    past = time.time_ns() - seconds * 1_000_000_000
    for sub in ("new", "cur"):
        os.utime(md / sub, ns=(past, past))


def test_ensure_maildir_creates_private_directories(tmp_path: Path) -> None:
    """cur/, new/ and tmp/ are created with mode 0700 (or stricter through umask)."""
    ensure_maildir(tmp_path / "a" / "Maildir")
    for sub in ("cur", "new", "tmp"):
        mode = stat.S_IMODE(os.stat(tmp_path / "a" / "Maildir" / sub).st_mode)
        assert mode & 0o077 == 0


def test_missing_maildir_without_create(tmp_path: Path) -> None:
    """create=False refuses a directory that is not a maildir."""
    with pytest.raises(StorageError):
        MaildirMaildrop(tmp_path / "nothing", create=False).snapshot()
    assert not (tmp_path / "nothing").exists()


def test_only_complete_regular_files_are_served(md: Path) -> None:
    """tmp/, dot files, directories and symlinks are never listed."""
    put(md, "tmp/1.in-progress")
    put(md, "new/.2.hidden")
    (md / "new" / "3.subdir").mkdir()
    (md / "new" / "4.link").symlink_to(md / "tmp" / "1.in-progress")
    put(md, "new/5.real")
    assert [m.key for m in snap(md)] == ["new/5.real"]


def test_order_is_delivery_time_then_name(md: Path) -> None:
    """Oldest first by the time prefix (numerically), microseconds within a second."""
    put(md, "cur/20.a:2,S")
    put(md, "new/100.b")
    put(md, "new/3.c")
    put(md, "new/20.M99P1.h")
    put(md, "new/20.M123P1.h")
    keys = [m.key for m in snap(md)]
    assert keys == ["new/3.c", "cur/20.a:2,S", "new/20.M99P1.h", "new/20.M123P1.h", "new/100.b"]


def test_uidl_survives_moves_and_flag_changes(md: Path) -> None:
    """Another program moving new/X to cur/X:2, and then to X:2,S keeps the UIDL."""
    put(md, "new/1700000000.M1P2.host,S=17,W=20")
    first = snap(md)
    assert first[0].uid == "1700000000.M1P2.host"
    os.rename(md / first[0].key, md / "cur/1700000000.M1P2.host,S=17,W=20:2,")
    assert snap(md)[0].uid == first[0].uid
    os.rename(
        md / "cur/1700000000.M1P2.host,S=17,W=20:2,", md / "cur/1700000000.M1P2.host,S=17,W=20:2,S"
    )
    assert snap(md)[0].uid == first[0].uid


@pytest.mark.parametrize(
    "name",
    ["1." + "x" * 80, "2.caf\u00e9", "3.with space", "4.tab\there", "5.\udcff-undecodable"],
)
def test_odd_names_get_a_valid_stable_digest(md: Path, name: str) -> None:
    """A base name that is no valid UIDL gets a digest UIDL, the same in every session."""
    path = md / "new" / name
    path.write_bytes(b"x\n")
    uid = snap(md)[0].uid
    assert UID_RE.fullmatch(uid)
    assert uid.startswith("D") and len(uid) == 41
    os.rename(path, md / "cur" / (name + ":2,S"))
    (md / INDEX_NAME).unlink()
    assert snap(md)[0].uid == uid


def test_duplicate_uidls_are_resolved_stably(md: Path) -> None:
    """Two names with the same UIDL: the first keeps it, the other gets a digest, always."""
    put(md, "new/100.abc,XX=1")
    put(md, "new/100.abc,XX=2")
    put(md, "new/101.abc")
    messages = snap(md)
    assert messages[0].uid == "100.abc"
    assert messages[1].uid.startswith("D")
    assert len({m.uid for m in messages}) == 3
    assert snap(md) == messages
    (md / INDEX_NAME).unlink()
    assert snap(md) == messages


def test_known_uid_is_not_taken_by_a_newcomer(md: Path) -> None:
    """A file that sorts first but arrives later cannot steal a UIDL already handed out."""
    put(md, "new/200.abc,XX=1")
    before = snap(md)
    put(md, "new/200.abc,XX=0")
    after = {m.key: m.uid for m in snap(md)}
    assert after["new/200.abc,XX=1"] == before[0].uid == "200.abc"
    assert after["new/200.abc,XX=0"].startswith("D")


@pytest.mark.parametrize(
    ("name", "data", "size"),
    [
        ("1.t,S=5,W=9", b"abcd\n", 9),  # agrees with the file: believed without reading
        ("2.t,S=6,W=9", b"abcd\n", 9),  # believed without a stat; RETR corrects it
        ("3.t,S=5,W=11", b"abcd\n", 6),  # W above 2*S: counted
        ("4.t,S=5,W=4", b"abcd\n", 6),  # W below S: counted
        ("5.t,S=0,W=0", b"", 2),  # an empty file is counted (its wire size is 2)
        ("6.t,W=9", b"abcd\n", 6),  # W without S: counted
        ("7.t,S=5,W=x", b"abcd\n", 6),  # malformed: counted
    ],
)
def test_size_tags_are_trusted_only_when_they_agree(
    md: Path, name: str, data: bytes, size: int
) -> None:
    """,S=,W= tags give the size only when 0 < S <= W <= 2S; otherwise the file is counted."""
    put(md, f"new/{name}", data)
    assert snap(md)[0].size == size


def test_large_file_is_counted_in_chunks(md: Path) -> None:
    """A file bigger than one read chunk, with CRLF split at a chunk edge, counts exactly."""
    data = b"a" * (65536 - 1) + b"\r\n" + b"line\n" * 50000
    put(md, "new/1.big", data)
    assert snap(md)[0].size == wire_size(data)


# -- the index cache -----------------------------------------------------------------------


def test_cache_is_written_and_trusted_when_directories_are_old(
    md: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With old, unchanged directory mtimes the next snapshot reads no directory."""
    put(md, "new/1.a")
    put(md, "cur/2.b:2,S", b"two\r\n")
    age_directories(md)
    first = snap(md)
    assert (md / INDEX_NAME).is_file()

    def no_listing(path: object) -> object:
        raise AssertionError("directory listed although the cache is trusted")

    monkeypatch.setattr(os, "scandir", no_listing)
    assert snap(md) == first


def test_a_few_new_names_leave_the_cache_file_as_it_was(md: Path) -> None:
    """A delivery of a few tagged names into new/ is listed without rewriting the index;
    another process, listing against the file, finds the same snapshot."""
    for i in range(30):
        put(md, f"cur/{1000 + i}.M1P1.host,S=5,W=6:2,S", b"body\n")
    age_directories(md)
    snap(md)
    written = (md / INDEX_NAME).read_bytes()
    put(md, "new/2000.M1P1.host,S=5,W=6", b"body\n")
    put(md, "new/2001.M1P1.host,S=5,W=6", b"body\n")
    listed = snap(md)
    assert [m.key for m in listed[-2:]] == [
        "new/2000.M1P1.host,S=5,W=6",
        "new/2001.M1P1.host,S=5,W=6",
    ]
    assert snap(md) == listed  # this process, from its memory
    assert (md / INDEX_NAME).read_bytes() == written
    maildir_index.forget_all()  # another process
    assert snap(md) == listed
    assert (md / INDEX_NAME).read_bytes() == written


@pytest.mark.parametrize(
    "name", ["new/2000.M1P1.host", "new/1001.M1P1.host,S=5,W=6,X=1"], ids=["counted", "pinned"]
)
def test_new_names_that_cannot_be_rederived_cheaply_are_written(md: Path, name: str) -> None:
    """A newcomer whose size had to be counted, or whose UIDL is a digest (its natural
    UIDL was taken), is written into the index at once."""
    for i in range(30):
        put(md, f"cur/{1000 + i}.M1P1.host,S=5,W=6:2,S", b"body\n")
    age_directories(md)
    snap(md)
    written = (md / INDEX_NAME).read_bytes()
    put(md, name, b"body\n")
    listed = snap(md)
    assert len(listed) == 31
    assert (md / INDEX_NAME).read_bytes() != written
    maildir_index.forget_all()
    assert snap(md) == listed


def test_stale_cache_notices_added_and_removed_files(md: Path) -> None:
    """A file added or removed after the cache was written changes the listing."""
    put(md, "new/1.a")
    put(md, "new/2.b")
    age_directories(md)
    snap(md)
    snap(md)  # now from the trusted cache
    put(md, "new/3.c")
    (md / "new" / "1.a").unlink()
    assert [m.key for m in snap(md)] == ["new/2.b", "new/3.c"]


def test_change_in_the_same_tick_is_not_hidden(md: Path) -> None:
    """A cache written within 2 s of the last change is not trusted even if mtimes match."""
    put(md, "new/1.a")
    snap(md)
    mtimes = [os.stat(md / sub).st_mtime_ns for sub in ("new", "cur")]
    put(md, "new/2.b")
    # Pretend the change fell in the same timestamp tick: the mtime did not move.
    os.utime(md / "new", ns=(mtimes[0], mtimes[0]))
    assert [m.key for m in snap(md)] == ["new/1.a", "new/2.b"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: b"garbage",
        lambda raw: raw[: len(raw) // 2],
        lambda raw: raw[:-3] + bytes([raw[-3] ^ 1]) + raw[-2:],
        lambda raw: raw.replace(b"postoffice-index ", b"postoffice-index 9"),
        lambda raw: b"",
    ],
    ids=["garbage", "truncated", "bitflip", "version", "empty"],
)
def test_corrupt_cache_is_rebuilt(md: Path, damage: object) -> None:
    """A damaged cache is ignored, the snapshot is right, and a good cache replaces it."""
    put(md, "new/1.a", b"one\n")
    put(md, "new/2.b", b"two")
    age_directories(md)
    first = snap(md)
    raw = (md / INDEX_NAME).read_bytes()
    assert callable(damage)
    (md / INDEX_NAME).write_bytes(damage(raw))
    assert snap(md) == first
    assert load_index(md) is not None


def test_forged_cache_with_valid_checksum_cannot_escape(md: Path) -> None:
    """Invalid UIDs make a cache untrusted; a key outside new/ and cur/ is never opened."""
    put(md, "new/1.a", b"one\n")
    age_directories(md)
    snap(md)
    index = load_index(md)
    assert index is not None
    index.entries["new/2.b"] = (1, 3, "bad uid")
    maildir_index.write_index(md, index)
    assert load_index(md) is None
    assert [m.key for m in snap(md)] == ["new/1.a"]

    index = load_index(md)
    assert index is not None
    index.entries["new/../../etc/passwd"] = (1, 3, "evil")
    maildir_index.write_index(md, index)
    maildrop = MaildirMaildrop(md)
    messages = maildrop.snapshot()
    evil = next(m for m in messages if m.uid == "evil")
    with pytest.raises(StorageError):
        maildrop.open(evil)
    result = maildrop.commit(deleted=[evil], retrieved=[evil])
    assert (result.removed, result.not_removed) == (0, 1)


def test_cache_is_used_only_for_names_it_knows(md: Path) -> None:
    """A cached size is used for its exact key; a renamed file is measured afresh."""
    put(md, "new/1.a", b"one\n")
    put(md, "new/2.b", b"two\n")
    snap(md)
    index = load_index(md)
    assert index is not None
    index.entries["new/1.a"] = (4, 999, "1.a")
    index.entries["new/2.b"] = (4, 888, "2.b")
    index.dirs = None  # force a listing, which may still use sizes of known names
    maildir_index.write_index(md, index)
    os.rename(md / "new" / "2.b", md / "cur" / "2.b:2,S")
    sizes = {m.key: m.size for m in snap(md)}
    assert sizes == {"new/1.a": 999, "cur/2.b:2,S": 5}


def test_correct_size_updates_the_cache(md: Path) -> None:
    """correct_size records the size RETR found for the next session."""
    put(md, "new/1.a", b"one\n")
    maildrop = MaildirMaildrop(md)
    maildrop.lock()
    message = maildrop.snapshot()[0]
    maildrop.correct_size(message, 42)
    maildrop.unlock()
    assert snap(md)[0].size == 42


def test_correct_size_leaves_the_shared_remembered_snapshot_alone(md: Path) -> None:
    """Sessions share the remembered index and messages; one session's correction goes to
    the file (and so to the next snapshot), never into what other sessions hold."""
    put(md, "new/1.a", b"one\n")
    age_directories(md)
    first = snap(md)
    maildrop = MaildirMaildrop(md)
    maildrop.lock()
    messages = maildrop.snapshot()
    remembered = maildir_index._memo[(str(md), "postoffice")][1]
    columns = remembered.columns()
    assert maildrop._index is remembered  # shared, not copied, by an idle session
    maildrop.correct_size(messages[0], 42)
    maildrop.unlock()
    assert remembered.columns() == columns and messages == first
    assert snap(md)[0].size == 42


def test_unwritable_cache_is_not_fatal(md: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the cache cannot be written the snapshot still succeeds and leaves no temp file."""
    put(md, "new/1.a", b"one\n")

    def full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    assert [m.size for m in snap(md)] == [5]
    assert sorted(os.listdir(md)) == ["cur", "new", "tmp"]


def test_message_seen_twice_while_listing_is_listed_once(md: Path) -> None:
    """new/X and cur/X:2,S at once (a move during our listing) is one message, the cur/ one."""
    put(md, "new/1.x")
    first = snap(md)
    os.link(md / "new/1.x", md / "cur/1.x:2,S")
    put(md, "new/2.y")
    os.link(md / "new/2.y", md / "cur/2.y:2,")
    listed = snap(md)
    assert [m.key for m in listed] == ["cur/1.x:2,S", "cur/2.y:2,"]
    assert listed[0].uid == first[0].uid


def test_few_newcomers_among_many_known_list_like_a_cold_listing(md: Path) -> None:
    """A few new names merged into many known ones: each in its place, a name of a known
    message (the same base name) not listed twice, UIDLs unchanged."""
    for i in range(80):
        put(md, f"cur/{1000 + i}.M{i}P1.host,S=5,W=6:2,S", b"body\n")
    age_directories(md)
    first = snap(md)
    put(md, f"new/{2000}.M1P1.host,S=5,W=6", b"body\n")  # newer than all
    put(md, f"new/{500}.M1P1.host,S=5,W=6", b"body\n")  # older than all
    put(md, f"new/{1010}.M99P1.host,S=5,W=6", b"body\n")  # in the middle
    os.link(md / "cur/1020.M20P1.host,S=5,W=6:2,S", md / "new/1020.M20P1.host,S=5,W=6")
    age_directories(md)
    os.utime(md / "new")  # new/ changed just now, cur/ is trusted
    incremental = snap(md)
    assert len(incremental) == 83
    assert {m.uid: m for m in first}.items() <= {m.uid: m for m in incremental}.items()
    (md / INDEX_NAME).unlink()
    maildir_index.forget_all()
    assert incremental == snap(md)


@pytest.mark.parametrize("packed", [True, False])
def test_newer_delivery_keeps_the_remembered_messages(
    md: Path, packed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery newer than every known message: the remembered messages come first, the
    same again (packed below ``_PACKED_BELOW``, else a view of the index's columns), and
    the snapshot equals a cold listing."""
    if not packed:
        monkeypatch.setattr(maildir_index, "_PACKED_BELOW", 0)
    for i in range(30):
        put(md, f"cur/{1000 + i}.M1P1.host,S=5,W=6:2,S", b"body\n")
    age_directories(md)
    first = snap(md)
    assert isinstance(first, PackedMessages if packed else ColumnMessages)
    put(md, "new/2000.M1P1.host,S=5,W=6", b"body\n")
    listed = snap(md)
    assert isinstance(listed, PackedMessages if packed else ColumnMessages)
    assert listed[:30] == list(first)
    assert len(listed) == 31
    assert listed[-1].key == "new/2000.M1P1.host,S=5,W=6"
    maildir_index.forget_all()
    (md / INDEX_NAME).unlink()
    assert snap(md) == listed


def test_membership_of_the_newest_messages_is_checked_without_a_dict(md: Path) -> None:
    """Opening the newest messages needs no dict of the whole snapshot; a forged message
    with a recent key and an old message are still judged exactly."""
    for i in range(100):
        put(md, f"cur/{1000 + i}.M1P1.host:2,S", b"body\n")
    maildrop = MaildirMaildrop(md)
    messages = maildrop.snapshot()
    for message in messages[-10:]:
        maildrop.open(message).close()
    assert maildrop._by_key is None
    with pytest.raises(ValueError):
        maildrop.open(StoredMessage(key=messages[-1].key, uid="forged", size=1))
    maildrop.open(messages[0]).close()
    assert maildrop._by_key is not None


def test_repeated_snapshot_in_one_process_sees_every_change(md: Path) -> None:
    """The in-process reuse of a snapshot never hides a correction, delivery or removal."""
    put(md, "new/1.a", b"one\n")
    put(md, "new/2.b", b"two\n")
    age_directories(md)
    snap(md)
    first = snap(md)
    assert snap(md) == first  # reused
    other = MaildirMaildrop(md)
    other.correct_size(other.snapshot()[0], 40)
    assert [m.size for m in snap(md)] == [40, 5]
    put(md, "new/3.c")
    assert len(snap(md)) == 3
    (md / "new/2.b").unlink()
    assert [m.key for m in snap(md)] == ["new/1.a", "new/3.c"]


_name = st.builds(
    lambda seconds, micros, tag: f"{seconds}." + (f"M{micros}" if micros is not None else "") + tag,
    st.integers(1, 4),
    st.none() | st.integers(0, 999_999),
    st.text("abcxyz", min_size=1, max_size=4),
)


@settings(max_examples=60, deadline=None)
@given(
    first=st.lists(_name, min_size=25, max_size=80, unique=True),
    later=st.lists(_name, min_size=1, max_size=8, unique=True),
    removed=st.lists(st.integers(0, 79), max_size=5),
)
def test_incremental_listing_equals_a_cold_listing(
    first: list[str], later: list[str], removed: list[int]
) -> None:
    """Listing against the index (known names kept, new ones merged in) equals a fresh listing."""
    with tempfile.TemporaryDirectory() as top:
        md = Path(top)
        ensure_maildir(md)
        for name in first:
            put(md, f"new/{name}", name.encode())
        snap(md)
        for i in removed:
            if i < len(first):
                (md / "new" / first[i]).unlink(missing_ok=True)
        for name in later:
            if name not in first:
                put(md, f"cur/{name}:2,S", name.encode())
        incremental = snap(md)
        (md / INDEX_NAME).unlink()
        maildir_index.forget_all()
        assert incremental == snap(md)


# -- locking -------------------------------------------------------------------------------

HOLD_LOCK = """
import sys
from pathlib import Path
from postoffice.storage.maildir import MaildirMaildrop
m = MaildirMaildrop(Path(sys.argv[1]))
m.lock()
print("locked", flush=True)
sys.stdin.read()
"""

TRY_LOCK = """
import sys
from pathlib import Path
from postoffice.errors import MaildropInUseError
from postoffice.storage.maildir import MaildirMaildrop
try:
    MaildirMaildrop(Path(sys.argv[1])).lock()
except MaildropInUseError:
    sys.exit(3)
"""


def test_lock_excludes_another_process_and_dies_with_it(md: Path) -> None:
    """A lock held by another process excludes us; SIGKILL of that process releases it."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(md)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"locked\n"
        with pytest.raises(MaildropInUseError):
            MaildirMaildrop(md).lock()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    mine = MaildirMaildrop(md)
    mine.lock()
    assert subprocess.run([sys.executable, "-c", TRY_LOCK, str(md)]).returncode == 3
    mine.unlock()
    assert subprocess.run([sys.executable, "-c", TRY_LOCK, str(md)]).returncode == 0


def test_lock_descriptor_is_close_on_exec(md: Path) -> None:
    """The lock descriptor is not inherited by programs we start."""
    maildrop = MaildirMaildrop(md)
    maildrop.lock()
    fd = maildrop._lock_fd
    assert fd is not None
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    maildrop.unlock()


def test_forgotten_maildrop_releases_its_lock(md: Path) -> None:
    """A maildrop dropped without unlock() releases the lock when collected."""
    first = MaildirMaildrop(md)
    first.lock()
    del first
    gc.collect()
    MaildirMaildrop(md).lock()


# -- commit --------------------------------------------------------------------------------


def test_commit_marks_retrieved_mail_seen(md: Path) -> None:
    """Retrieved mail moves new/ -> cur/ with :2,S; flags stay sorted; deleted just go."""
    put(md, "new/1.a")
    put(md, "cur/2.b:2,RF")
    put(md, "cur/3.c:2,S")
    put(md, "new/4.d")
    put(md, "new/5.e")
    maildrop = MaildirMaildrop(md)
    maildrop.lock()
    messages = maildrop.snapshot()
    result = maildrop.commit(deleted=[messages[4]], retrieved=messages)
    assert (result.removed, result.remaining) == (1, 4)
    assert sorted(os.listdir(md / "new")) == []
    assert sorted(os.listdir(md / "cur")) == ["1.a:2,S", "2.b:2,FRS", "3.c:2,S", "4.d:2,S"]
    maildrop.unlock()
    assert [m.uid for m in snap(md)] == [m.uid for m in messages[:4]]


def test_commit_without_flag_updates_leaves_names(md: Path) -> None:
    """flag_updates=False removes deleted mail but renames nothing."""
    put(md, "new/1.a")
    put(md, "new/2.b")
    maildrop = MaildirMaildrop(md, flag_updates=False)
    messages = maildrop.snapshot()
    maildrop.commit(deleted=[messages[1]], retrieved=messages)
    assert os.listdir(md / "new") == ["1.a"]
    assert os.listdir(md / "cur") == []


def test_renamed_message_is_still_opened_and_deleted(md: Path) -> None:
    """A message another program renamed after our snapshot is found by its base name."""
    put(md, "new/1.a", b"first\n")
    put(md, "new/2.b", b"second\n")
    maildrop = MaildirMaildrop(md)
    maildrop.lock()
    messages = maildrop.snapshot()
    os.rename(md / "new/1.a", md / "cur/1.a:2,S")
    os.rename(md / "new/2.b", md / "cur/2.b:2,RS")
    with maildrop.open(messages[0]) as f:
        assert f.read() == b"first\n"
    result = maildrop.commit(deleted=messages, retrieved=[])
    assert (result.removed, result.not_removed, result.remaining) == (2, 0, 0)
    assert os.listdir(md / "cur") == []


def test_failed_unlink_counts_as_not_removed(md: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unlink failing with an error other than ENOENT is reported, not hidden."""
    put(md, "new/1.a")
    put(md, "new/2.b")
    maildrop = MaildirMaildrop(md)
    messages = maildrop.snapshot()
    real_unlink = os.unlink

    def unlink(path: object, *args: object, **kwargs: object) -> None:
        if str(path).endswith("1.a"):
            raise PermissionError(13, "Permission denied")
        real_unlink(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", unlink)
    result = maildrop.commit(deleted=messages, retrieved=[])
    assert (result.removed, result.not_removed, result.remaining) == (1, 1, 1)
    monkeypatch.undo()
    assert [m.key for m in snap(md)] == ["new/1.a"]


def test_a_small_remembered_maildrop_keeps_its_messages_packed_not_columns(md: Path) -> None:
    """Below the threshold the memory keeps the messages packed and an array of disk sizes;
    the columns and messages made from them are the ones the listing gave."""
    for i in range(5):
        put(md, f"cur/{1000 + i}.M1P1.host,S=5,W=6:2,S", b"body\n")
    put(md, "new/2000.M1P1.host", b"two\nlines\n")  # counted: a size of its own
    age_directories(md)
    maildrop = MaildirMaildrop(md)
    messages = maildrop.snapshot()
    maildir_index.forget_all()
    loaded = load_index(md)
    assert loaded is not None
    stat_new, stat_cur = os.stat(md / "new"), os.stat(md / "cur")
    dirs = (stat_new.st_ino, stat_new.st_mtime_ns, stat_cur.st_ino, stat_cur.st_mtime_ns)
    file_id = maildir_index._file_id(os.stat(md / INDEX_NAME))
    kept, kept_messages = maildir_index.remember(md, "postoffice", file_id, loaded)
    assert kept._columns is None and kept._packed is not None
    assert isinstance(kept_messages, PackedMessages) and kept_messages == messages
    assert kept.columns() == loaded.columns()
    assert kept.entries == loaded.entries
    recalled = maildir_index.recall(md, "postoffice", dirs)
    assert recalled is not None
    assert recalled[0].columns() == loaded.columns() and recalled[1] == messages


@pytest.mark.parametrize("packed_below", [0, 1_000], ids=["columns", "messages"])
def test_remembered_maildrop_either_way_lists_delivers_and_deletes_alike(
    md: Path, monkeypatch: pytest.MonkeyPatch, packed_below: int
) -> None:
    """Logins, a delivery, a deletion and a size correction through the memory give what
    cold listings give, whichever way the memory keeps the maildrop."""
    monkeypatch.setattr(maildir_index, "_PACKED_BELOW", packed_below)
    for i in range(20):
        put(md, f"cur/{1000 + i}.M1P1.host,S=5,W=6:2,S", b"body\n")
    put(md, "cur/1500.M1P1.host:2,S", b"a\nb\n")
    age_directories(md)
    first = snap(md)
    assert snap(md) == first
    put(md, "new/2000.M1P1.host,S=5,W=6", b"body\n")
    listed = snap(md)
    assert listed[:-1] == first and listed[-1].key == "new/2000.M1P1.host,S=5,W=6"
    maildrop = MaildirMaildrop(md)
    maildrop.lock()
    messages = maildrop.snapshot()
    result = maildrop.commit(deleted=[messages[3], messages[-1]], retrieved=[])
    maildrop.unlock()
    assert (result.removed, result.remaining) == (2, 20)
    age_directories(md)
    remembered = snap(md)
    assert [m.key for m in remembered] == [
        m.key for m in listed if m not in (listed[3], listed[-1])
    ]
    maildir_index.forget_all()
    (md / INDEX_NAME).unlink()
    assert snap(md) == remembered


def test_the_collector_is_paused_while_a_snapshot_is_built_and_restored_after() -> None:
    """Enabled again after the snapshot, even one that failed; left off if it was off."""
    from postoffice.storage.maildir import _CollectorPaused

    assert gc.isenabled()
    with pytest.raises(OSError), _CollectorPaused():
        assert not gc.isenabled()
        raise OSError("listing failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with _CollectorPaused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


# -- the deferred index write -------------------------------------------------------------


@pytest.fixture
def defer_from_three(monkeypatch: pytest.MonkeyPatch) -> None:
    """Listings of 3 messages or more count as large enough to defer their index."""
    monkeypatch.setattr(maildir_module, "DEFER_INDEX_MESSAGES", 3)


def fill(md: Path, count: int) -> None:
    for i in range(count):
        put(md, f"cur/{1000 + i}.M1P1.host,S=5,W=6:2,S", b"body\n")


def locked_and_listed(md: Path) -> tuple[MaildirMaildrop, Sequence[StoredMessage]]:
    maildrop = MaildirMaildrop(md)
    maildrop.lock()
    return maildrop, maildrop.snapshot(defer_index_write=True)


def test_a_large_listing_leaves_its_index_to_write_deferred_index(
    md: Path, defer_from_three: None
) -> None:
    fill(md, 5)
    maildrop, listed = locked_and_listed(md)
    assert len(listed) == 5
    assert maildrop.index_write_deferred
    assert not (md / INDEX_NAME).exists()
    assert not maildir_index.remembers(md, maildrop.scheme_id)
    maildrop.write_deferred_index()
    assert not maildrop.index_write_deferred
    index = load_index(md)
    assert index is not None
    assert list(index.messages()) == list(listed)
    assert maildir_index.remembers(md, maildrop.scheme_id)  # for the next login here
    maildrop.write_deferred_index()  # nothing left: the file stays as it is
    assert load_index(md) is not None
    maildrop.unlock()


def test_a_small_listing_writes_its_index_at_once(md: Path) -> None:
    fill(md, 5)
    maildrop, _ = locked_and_listed(md)
    assert not maildrop.index_write_deferred
    assert load_index(md) is not None
    maildrop.unlock()


def test_a_pinned_index_is_never_deferred(md: Path, defer_from_three: None) -> None:
    """Its UIDLs could not be listed again the same way: durable before any is served."""
    fill(md, 5)
    put(md, "new/1001.M1P1.host,S=5,W=6,X=1", b"body\n")  # its natural UIDL is taken
    maildrop, _ = locked_and_listed(md)
    assert not maildrop.index_write_deferred
    index = load_index(md)
    assert index is not None
    assert index.pinned
    maildrop.unlock()


@pytest.mark.parametrize("step", ["unlock", "commit", "snapshot"])
def test_changing_the_index_or_unlocking_writes_a_deferred_index_first(
    md: Path, defer_from_three: None, step: str
) -> None:
    fill(md, 5)
    maildrop, _ = locked_and_listed(md)
    if step == "unlock":
        maildrop.unlock()
    elif step == "commit":
        maildrop.commit(deleted=(), retrieved=())
    else:
        maildrop.snapshot()
    assert not maildrop.index_write_deferred
    assert load_index(md) is not None
    maildrop.unlock()


def test_a_corrected_size_is_not_overwritten_by_the_deferred_index(
    md: Path, defer_from_three: None
) -> None:
    fill(md, 4)
    put(md, "cur/2000.M1P1.host,S=5,W=9:2,S", b"body\n")  # a believable tag that lies
    maildrop, listed = locked_and_listed(md)
    message = listed[-1]
    assert message.size == 9
    maildrop.correct_size(message, 6)
    assert not maildrop.index_write_deferred
    index = load_index(md)
    assert index is not None
    assert index.entries[message.key][1] == 6
    maildrop.unlock()
