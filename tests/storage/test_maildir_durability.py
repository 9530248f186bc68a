"""What is fsynced and what is created: only what a crash or a missing maildir needs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from postoffice.errors import StorageError
from postoffice.storage import maildir, maildir_index, maildir_listing
from postoffice.storage.maildir import INDEX_NAME, MaildirMaildrop, ensure_maildir


@pytest.fixture
def md(tmp_path: Path) -> Path:
    path = tmp_path / "Maildir"
    ensure_maildir(path)
    return path


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records what is fsynced: "dir:<name>" for a directory, "file" for a file."""
    calls: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls.append("file")
        real_fsync(fd)

    def fsync_directory(path: Path) -> None:
        calls.append(f"dir:{path.name}")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(maildir, "fsync_directory", fsync_directory)
    return calls


def put(md: Path, key: str, data: bytes = b"Subject: x\n\nbody\n") -> None:
    (md / key).write_bytes(data)


def test_index_of_natural_uidls_is_not_fsynced(md: Path, synced: list[str]) -> None:
    """A cache whose UIDLs a rebuild gives back is written without fsync."""
    put(md, "new/1.a")
    put(md, "cur/2.b:2,S")
    MaildirMaildrop(md).snapshot()
    assert (md / INDEX_NAME).is_file()
    assert synced == []


def test_index_holding_a_digest_for_a_taken_uidl_is_fsynced(md: Path, synced: list[str]) -> None:
    """Which of two names got the digest depends on history: that index is made durable."""
    put(md, "new/1.a,XX=1")
    MaildirMaildrop(md).snapshot()
    assert synced == []
    put(md, "new/1.a,XX=0")  # same natural UIDL "1.a", sorts first
    messages = MaildirMaildrop(md).snapshot()
    assert synced == ["file"]
    assert {m.key: m.uid for m in messages}["new/1.a,XX=1"] == "1.a"
    loaded = maildir_index.load_index(md / INDEX_NAME)
    assert loaded is not None and loaded[0].pinned
    # Stays pinned in later listings, which keep that digest.
    put(md, "new/2.c")
    MaildirMaildrop(md).snapshot()
    assert synced == ["file", "file"]


def test_index_under_a_migration_scheme_is_fsynced(md: Path, synced: list[str]) -> None:
    """UIDLs read from another server's files may not come back: always durable."""
    put(md, "new/1.a")
    MaildirMaildrop(md, uidl_format="courier").snapshot()
    assert synced == ["file"]


def test_seen_renames_alone_are_not_fsynced(md: Path, synced: list[str]) -> None:
    """Marking mail seen needs no durability: a lost rename leaves the same UIDL in new/."""
    put(md, "new/1.a")
    put(md, "new/2.b")
    maildrop = MaildirMaildrop(md)
    messages = maildrop.snapshot()
    result = maildrop.commit(deleted=[], retrieved=messages)
    assert result.remaining == 2
    assert sorted(os.listdir(md / "cur")) == ["1.a:2,S", "2.b:2,S"]
    assert synced == []


def test_removals_are_fsynced_before_commit_returns(md: Path, synced: list[str]) -> None:
    """A deletion is made durable in both directories before QUIT is answered."""
    put(md, "new/1.a")
    put(md, "new/2.b")
    maildrop = MaildirMaildrop(md)
    messages = maildrop.snapshot()
    maildrop.commit(deleted=[messages[0]], retrieved=messages[1:])
    assert sorted(synced) == ["dir:cur", "dir:new"]


def test_existing_maildir_is_not_created_again(md: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session on an existing maildir makes no mkdir call (and needs no tmp/)."""
    put(md, "new/1.a")
    os.rmdir(md / "tmp")

    def no_mkdir(*args: object, **kwargs: object) -> None:
        raise AssertionError("mkdir on an existing maildir")

    monkeypatch.setattr(os, "mkdir", no_mkdir)
    monkeypatch.setattr(os, "makedirs", no_mkdir)
    maildrop = MaildirMaildrop(md)
    maildrop.lock()
    assert [m.key for m in maildrop.snapshot()] == ["new/1.a"]
    maildrop.unlock()


@pytest.mark.parametrize("first", ["lock", "snapshot"])
def test_missing_maildir_is_created_when_first_needed(tmp_path: Path, first: str) -> None:
    """lock() or snapshot() on a missing maildir (or one missing cur/) creates it."""
    path = tmp_path / "user" / "Maildir"
    maildrop = MaildirMaildrop(path)
    getattr(maildrop, first)()
    assert maildrop.snapshot() == []
    lock = ["postoffice.lock"] if first == "lock" else []
    assert sorted(os.listdir(path)) == sorted(["cur", "new", "tmp", INDEX_NAME, *lock])
    maildrop.unlock()
    os.rmdir(path / "cur")
    assert MaildirMaildrop(path).snapshot() == []
    assert (path / "cur").is_dir()


def test_missing_part_without_create_is_refused(md: Path) -> None:
    """create=False: a maildir without cur/ is not a maildir, and nothing is created."""
    os.rmdir(md / "cur")
    with pytest.raises(StorageError, match="not a maildir"):
        MaildirMaildrop(md, create=False).snapshot()
    with pytest.raises(StorageError, match="not a maildir"):
        MaildirMaildrop(md.parent / "nothing", create=False).lock()
    assert not (md / "cur").exists()
    assert not (md.parent / "nothing").exists()


def test_update_of_a_few_names_leaves_the_index_and_loses_nothing(md: Path) -> None:
    """A few Seen renames and removals are re-derived by the next listing, identically."""
    for n in range(1, 6):
        put(md, f"new/{n}.m{n},S=17,W=20")
    maildrop = MaildirMaildrop(md)
    messages = maildrop.snapshot()
    before = (md / INDEX_NAME).read_bytes()
    maildrop.commit(deleted=[messages[0]], retrieved=messages[1:3])
    assert (md / INDEX_NAME).read_bytes() == before
    maildir_index.forget_all()
    after = MaildirMaildrop(md).snapshot()
    assert [(m.uid, m.size) for m in after] == [(m.uid, m.size) for m in messages[1:]]
    assert [m.key for m in after[:2]] == ["cur/2.m2,S=17,W=20:2,S", "cur/3.m3,S=17,W=20:2,S"]


def test_update_after_a_size_correction_keeps_it(md: Path) -> None:
    """A size RETR corrected survives the Seen rename of that message."""
    put(md, "new/1.a,S=17,W=20")
    maildrop = MaildirMaildrop(md)
    message = maildrop.snapshot()[0]
    maildrop.correct_size(message, 18)
    maildrop.commit(deleted=[], retrieved=[message])
    maildir_index.forget_all()
    assert [(m.key, m.size) for m in MaildirMaildrop(md).snapshot()] == [
        ("cur/1.a,S=17,W=20:2,S", 18)
    ]


@pytest.mark.parametrize("in_new", [[], ["new/2.b"]])
def test_delivery_into_new_does_not_read_an_unchanged_cur(
    md: Path, monkeypatch: pytest.MonkeyPatch, in_new: list[str]
) -> None:
    """Only the directory that changed is listed; mail in both is still all there."""
    put(md, "cur/1.a:2,S")
    for key in in_new:
        put(md, key)
    past = time.time_ns() - 100 * 1_000_000_000
    for sub in ("new", "cur"):
        os.utime(md / sub, ns=(past, past))
    MaildirMaildrop(md).snapshot()
    put(md, "new/3.c")
    listed: list[str] = []
    real_names = maildir_listing._names

    def names(directory: Path) -> list[str]:
        listed.append(directory.name)
        return real_names(directory)

    monkeypatch.setattr(maildir_listing, "_names", names)
    maildir_index.forget_all()
    keys = [m.key for m in MaildirMaildrop(md).snapshot()]
    assert keys == ["cur/1.a:2,S", *in_new, "new/3.c"]
    assert listed == ["new"]


def test_change_in_cur_within_the_same_tick_is_not_hidden(md: Path) -> None:
    """cur/ listed less than 2 s after its last change is listed again, even if its
    mtime did not move."""
    put(md, "cur/1.a:2,S")
    MaildirMaildrop(md).snapshot()
    mtime = os.stat(md / "cur").st_mtime_ns
    put(md, "cur/2.b:2,S")
    os.utime(md / "cur", ns=(mtime, mtime))
    maildir_index.forget_all()
    assert [m.key for m in MaildirMaildrop(md).snapshot()] == ["cur/1.a:2,S", "cur/2.b:2,S"]
