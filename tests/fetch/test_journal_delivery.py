"""The UIDL journal and the Maildir destination, each on its own."""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.fetch import delivery
from postoffice.fetch.delivery import SPILL_OCTETS, MaildirDestination, MessageSink, message_key
from postoffice.fetch.fingerprint import Fingerprint
from postoffice.fetch.journal import FORGET_AFTER, Journal, journal_path
from postoffice.storage.wire import wire_size

from .conftest import BUSY_DIRTY_KIB, fake_meminfo


def test_journal_is_wal_with_full_sync(tmp_path: Path) -> None:
    path = journal_path(tmp_path / "state", "office")
    with Journal(path) as journal:
        assert not path.parent.exists(), "opened by the first call, not the constructor"
        assert journal.entries() == {}
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_journal_records_survive_reopening(tmp_path: Path) -> None:
    path = journal_path(tmp_path, "a")
    with Journal(path) as journal:
        journal.record_listing(["u1", "u2"], 100.0, complete=True)
        journal.record_delivered("u1", local_name="n1", size=10, now=110.0, delete=True)
    with Journal(path) as journal:
        entries = journal.entries()
    assert entries["u1"].delivered and entries["u1"].delete_pending
    assert entries["u1"].first_seen == 100.0
    assert not entries["u2"].delivered


def test_first_seen_is_kept_across_listings(tmp_path: Path) -> None:
    with Journal(journal_path(tmp_path, "a")) as journal:
        journal.record_listing(["u1"], 100.0, complete=True)
        journal.record_listing(["u1", "u2"], 200.0, complete=True)
        entries = journal.entries()
    assert entries["u1"].first_seen == 100.0
    assert entries["u2"].first_seen == 200.0


def test_pending_delete_absent_from_listing_is_settled(tmp_path: Path) -> None:
    with Journal(journal_path(tmp_path, "a")) as journal:
        journal.record_listing(["u1"], 1.0, complete=True)
        journal.record_delivered("u1", local_name="n", size=1, now=2.0, delete=True)
        journal.record_listing([], 3.0, complete=True)
        entry = journal.entries()["u1"]
    assert not entry.delete_pending and entry.deleted_at == 3.0


def test_absent_rows_are_forgotten_after_the_grace_period(tmp_path: Path) -> None:
    with Journal(journal_path(tmp_path, "a")) as journal:
        journal.record_listing(["u1", "u2"], 1.0, complete=True)
        journal.record_listing(["u2"], 2.0, complete=True)
        journal.record_listing(["u2"], 2.0 + FORGET_AFTER / 2, complete=True)
        assert "u1" in journal.entries()
        journal.record_listing(["u2"], 3.0 + FORGET_AFTER, complete=True)
        assert set(journal.entries()) == {"u2"}


def test_record_deleted_and_adopt(tmp_path: Path) -> None:
    with Journal(journal_path(tmp_path, "a")) as journal:
        journal.record_listing(["u1", "u2"], 1.0, complete=True)
        journal.mark_delete_pending(["u1"])
        assert journal.entries()["u1"].delete_pending
        journal.record_deleted(["u1"], 5.0)
        journal.adopt({"u2": "new/x"}, 6.0)
        entries = journal.entries()
    assert entries["u1"].deleted_at == 5.0 and not entries["u1"].delete_pending
    assert entries["u2"].local_name == "new/x" and entries["u2"].delivered


@pytest.fixture(params=["nameless", "named"])
def files(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Each Maildir test runs with nameless files in tmp/ (O_TMPFILE) where the system has
    them, and with named ones, as where it has not (here: no /proc to link them through)."""
    if request.param == "named":
        monkeypatch.setattr(delivery, "_PROC_FD", str(tmp_path / "no-proc") + "/")
    else:
        probe = MaildirDestination(tmp_path / "probe", "probe")
        probe.prepare()
        if not probe.nameless:
            pytest.skip("no O_TMPFILE (or syncfs) here")
    return str(request.param)


def test_nameless_files_are_used_on_linux(tmp_path: Path) -> None:
    if sys.platform != "linux":
        pytest.skip("O_TMPFILE is Linux's")
    destination = MaildirDestination(tmp_path / "Maildir", "office")
    destination.prepare()
    assert destination.nameless
    assert os.listdir(tmp_path / "Maildir" / "tmp") == []  # the probe left nothing


def test_without_o_tmpfile_files_in_tmp_have_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    destination = MaildirDestination(tmp_path / "Maildir", "office")
    destination.prepare()
    assert not destination.nameless
    sink = destination.begin("uid-1")
    sink.write(b"y" * (SPILL_OCTETS + 1))
    assert len(os.listdir(tmp_path / "Maildir" / "tmp")) == 1
    name = sink.commit()
    assert os.listdir(tmp_path / "Maildir" / "new") == [name]


def test_maildir_delivery_converts_line_ends_and_tags_sizes(tmp_path: Path, files: str) -> None:
    destination = MaildirDestination(tmp_path / "Maildir", "office")
    destination.prepare()
    sink = destination.begin("uid-1")
    for chunk in (b"Subject: x\r", b"\n\r\nbody\r", b"\nend\r\n"):
        sink.write(chunk)
    name = sink.commit()
    assert name.startswith(message_key("office", "uid-1") + ",")
    data = (tmp_path / "Maildir" / "new" / name).read_bytes()
    assert data == b"Subject: x\n\nbody\nend\n"
    assert name.endswith(f",S={len(data)},W={len(data) + 4}")
    assert os.listdir(tmp_path / "Maildir" / "tmp") == []


def test_aborted_message_leaves_nothing(tmp_path: Path, files: str) -> None:
    destination = MaildirDestination(tmp_path / "Maildir", "office")
    destination.prepare()
    sink = destination.begin("uid-1")
    sink.write(b"partial")
    sink.abort()
    _assert_empty(tmp_path / "Maildir")


def test_a_small_message_reaches_the_disk_only_when_committed(tmp_path: Path, files: str) -> None:
    destination = MaildirDestination(tmp_path / "Maildir", "office")
    destination.prepare()
    sink = destination.begin("uid-1")
    sink.write(b"Subject: small\r\n\r\nbody\r\n")
    assert os.listdir(tmp_path / "Maildir" / "tmp") == []
    name = sink.commit()
    assert (tmp_path / "Maildir" / "new" / name).read_bytes() == b"Subject: small\n\nbody\n"
    assert os.listdir(tmp_path / "Maildir" / "tmp") == []


def test_a_large_message_streams_into_tmp_and_commits_whole(tmp_path: Path, files: str) -> None:
    destination = MaildirDestination(tmp_path / "Maildir", "office")
    destination.prepare()
    sink = destination.begin("uid-1")
    line = b"x" * 1022 + b"\r\n"
    chunks = [line * 64] * (2 * SPILL_OCTETS // (64 * 1024) + 1)
    descriptors = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
    for chunk in chunks[:-1]:
        sink.write(chunk)
    if files == "named":
        (spilled,) = os.listdir(tmp_path / "Maildir" / "tmp")
        assert os.path.getsize(tmp_path / "Maildir" / "tmp" / spilled) > SPILL_OCTETS
    else:  # streamed into a file that has no name yet
        assert os.listdir(tmp_path / "Maildir" / "tmp") == []
        assert len(os.listdir("/proc/self/fd")) == descriptors + 1
    sink.write(chunks[-1])
    name = sink.commit()
    data = (tmp_path / "Maildir" / "new" / name).read_bytes()
    assert data == b"".join(chunks).replace(b"\r\n", b"\n")
    lines = data.count(b"\n")
    assert name.endswith(f",S={len(data)},W={len(data) + lines}")
    assert os.listdir(tmp_path / "Maildir" / "tmp") == []


def test_an_aborted_large_message_leaves_nothing_in_tmp(tmp_path: Path, files: str) -> None:
    destination = MaildirDestination(tmp_path / "Maildir", "office")
    destination.prepare()
    sink = destination.begin("uid-1")
    sink.write(b"y" * (SPILL_OCTETS + 1))
    assert (os.listdir(tmp_path / "Maildir" / "tmp") != []) is (files == "named")
    sink.abort()
    _assert_empty(tmp_path / "Maildir")


def test_prepare_removes_only_our_leftovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "_nameless_files_work", lambda tmp, probe: False)
    destination = MaildirDestination(tmp_path / "Maildir", "office")
    destination.prepare()
    # A message larger than SPILL_OCTETS streams into tmp/; this one was never committed.
    destination.begin("uid-1").write(b"crashed before rename\n" * (SPILL_OCTETS // 20))
    assert len(os.listdir(tmp_path / "Maildir" / "tmp")) == 1
    (tmp_path / "Maildir" / "tmp" / "123.other.host").write_bytes(b"someone else's")
    destination.prepare()
    assert os.listdir(tmp_path / "Maildir" / "tmp") == ["123.other.host"]


def test_find_delivered_sees_new_and_cur_with_flags(tmp_path: Path, files: str) -> None:
    maildir, destination = _prepared(tmp_path)
    for uidl in ("u1", "u2"):
        sink = destination.begin(uidl)
        sink.write(b"m\r\n")
        sink.commit()
    (name,) = [n for n in os.listdir(maildir / "new") if n.startswith(message_key("office", "u2"))]
    os.rename(maildir / "new" / name, maildir / "cur" / (name + ":2,S"))
    found = destination.find_delivered(["u1", "u2", "u3"])
    assert set(found) == {"u1", "u2"}
    assert found["u2"].startswith("cur/")
    assert MaildirDestination(maildir, "home").find_delivered(["u1"]) == {}


@pytest.mark.parametrize("syncfs", [True, False])
def test_a_group_commit_delivers_every_message_durably_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs: bool, files: str
) -> None:
    if not syncfs:  # the way without syncfs(2): fsyncs from parallel threads
        monkeypatch.setattr(delivery, "_syncfs", lambda: None)
    destination = MaildirDestination(tmp_path / "Maildir", "office")
    destination.prepare()
    sinks = []
    for number in range(40):
        sink = destination.begin(f"uid-{number}")
        sink.write(b"Subject: %d\r\n\r\nbody\r\n" % number)
        sinks.append(sink)
    names = destination.commit_group(sinks)
    assert all(isinstance(name, str) for name in names)
    assert sorted(os.listdir(tmp_path / "Maildir" / "new")) == sorted(str(n) for n in names)
    assert os.listdir(tmp_path / "Maildir" / "tmp") == []
    found = destination.find_delivered(f"uid-{number}" for number in range(40))
    assert len(found) == 40


def test_a_failed_syncfs_fails_the_whole_group_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: str
) -> None:
    def failing_syncfs(fd: int) -> None:
        raise OSError(5, "syncfs: Input/output error")

    monkeypatch.setattr(delivery, "_syncfs", lambda: failing_syncfs)
    destination = MaildirDestination(tmp_path / "Maildir", "office")
    destination.prepare()
    sinks = []
    for number in range(3):
        sink = destination.begin(f"uid-{number}")
        sink.write(b"m\r\n")
        sinks.append(sink)
    outcomes = destination.commit_group(sinks)
    assert all(isinstance(outcome, OSError) for outcome in outcomes)
    _assert_empty(tmp_path / "Maildir")


def _recording_syncfs(
    monkeypatch: pytest.MonkeyPatch, new: Path, fail_at: int | None = None
) -> list[list[str]]:
    """Replaces syncfs by the real one that also notes what new/ holds at each call."""
    real = delivery._syncfs()
    if real is None:
        pytest.skip("no syncfs here")
    seen: list[list[str]] = []

    def syncfs(fd: int) -> None:
        seen.append(sorted(os.listdir(new)))
        if len(seen) == fail_at:
            raise OSError(5, "syncfs: Input/output error")
        real(fd)

    monkeypatch.setattr(delivery, "_syncfs", lambda: syncfs)
    return seen


def _prepared(tmp_path: Path, *, nameless: bool = False) -> tuple[Path, MaildirDestination]:
    """``tmp_path/Maildir`` and its prepared destination; ``nameless``: skip the test where
    files in tmp/ cannot be nameless."""
    maildir = tmp_path / "Maildir"
    destination = MaildirDestination(maildir, "office")
    destination.prepare()
    if nameless and not destination.nameless:
        pytest.skip("no O_TMPFILE (or syncfs) here")
    return maildir, destination


def _assert_empty(maildir: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        assert os.listdir(maildir / sub) == []


def _second_syncfs_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, MaildirDestination]:
    """A prepared Maildir destination of nameless files whose second ``syncfs`` fails."""
    maildir, destination = _prepared(tmp_path, nameless=True)
    _recording_syncfs(monkeypatch, maildir / "new", fail_at=2)
    return maildir, destination


def _group(destination: MaildirDestination, first: int, count: int) -> list[MessageSink]:
    sinks = [destination.begin(f"uid-{number}") for number in range(first, first + count)]
    for sink in sinks:
        sink.write(b"Subject: x\r\n\r\nbody\r\n")
    return sinks


@pytest.mark.parametrize("count", [1, 5])
def test_nameless_files_are_durable_before_their_names_and_again_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: str, count: int
) -> None:
    """Content first (no name in new/ yet), then the names, then (``sync``) the files once
    more for their link counts and names."""
    maildir, destination = _prepared(tmp_path)
    seen = _recording_syncfs(monkeypatch, maildir / "new")
    names = destination.commit_group(_group(destination, 0, count))
    assert all(isinstance(name, str) for name in names)
    first: list[list[str]] = [[]] if count > 1 else []  # one message: fsynced instead
    assert seen == first
    destination.sync()
    if files == "nameless":
        assert seen == [*first, sorted(str(name) for name in names)]
    else:
        assert seen == first  # renamed: sync() fsyncs new/
    assert os.listdir(maildir / "tmp") == []


def test_one_syncfs_makes_a_group_and_the_names_before_it_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: str
) -> None:
    """The second group's syncfs, made after the first group's names and before its own
    names, serves both: three syncfs for two groups, each file's content durable before
    its name."""
    maildir, destination = _prepared(tmp_path)
    seen = _recording_syncfs(monkeypatch, maildir / "new")
    first = sorted(str(name) for name in destination.commit_group(_group(destination, 0, 3)))
    second = sorted(str(name) for name in destination.commit_group(_group(destination, 3, 4)))
    destination.sync()
    if files == "nameless":
        assert seen == [[], first, sorted(first + second)]
    else:  # renamed: the same, but the last names need only an fsync of new/
        assert seen == [[], first]
    assert sorted(os.listdir(maildir / "new")) == sorted(first + second)


def test_names_whose_second_sync_failed_are_taken_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the link counts cannot be made durable, nothing stays visible in new/: the
    messages are not delivered, and a later session cannot adopt them from there."""
    maildir, destination = _second_syncfs_fails(tmp_path, monkeypatch)
    names = destination.commit_group(_group(destination, 0, 3))
    assert all(isinstance(name, str) for name in names)
    with pytest.raises(OSError, match="Input/output"):
        destination.sync()
    _assert_empty(maildir)


def test_a_failed_syncfs_takes_back_the_names_before_it_and_fails_its_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the syncfs that was to make the first group's names durable fails, in the
    second group's commit, neither group stays visible and the commit raises."""
    maildir, destination = _second_syncfs_fails(tmp_path, monkeypatch)
    destination.commit_group(_group(destination, 0, 3))
    assert len(os.listdir(maildir / "new")) == 3
    with pytest.raises(OSError, match="Input/output"):
        destination.commit_group(_group(destination, 3, 2))
    _assert_empty(maildir)
    destination.sync()  # nothing left to make durable


def _recording_fsync(monkeypatch: pytest.MonkeyPatch, new: Path) -> list[tuple[str, list[str]]]:
    """Replaces os.fsync by the real one that also notes, at each call, what was synced
    (``new`` itself, or a file: its name in new/ if it has one, else "unnamed") and what
    new/ then holds."""
    real = os.fsync
    seen: list[tuple[str, list[str]]] = []
    new_inode = os.stat(new).st_ino

    def fsync(fd: int) -> None:
        names = sorted(os.listdir(new))
        inode = os.fstat(fd).st_ino
        if inode == new_inode:
            what = "new/"
        else:
            named = [name for name in names if os.stat(new / name).st_ino == inode]
            what = named[0] if named else "unnamed"
        seen.append((what, names))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_dirty_octets_are_read_from_meminfo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        "MemTotal:       24576000 kB\nDirty:            1536 kB\n"
        "Writeback:          512 kB\nWritebackTmp:     9999 kB\n"
    )
    monkeypatch.setattr(delivery, "_MEMINFO", str(meminfo))
    assert delivery._dirty_octets() == 2048 * 1024
    for text in ("MemTotal: 1 kB\nDirty: 5 kB\n", "MemTotal: 1 kB\nDirty: x kB\nWriteback: 0 kB\n"):
        meminfo.write_text(text)
        assert delivery._dirty_octets() is None
    monkeypatch.setattr(delivery, "_MEMINFO", str(tmp_path / "absent"))
    assert delivery._dirty_octets() is None
    assert not delivery._others_dirty(0)  # unknown: syncfs as usual


def test_dirty_octets_of_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    if not Path("/proc/meminfo").exists():
        pytest.skip("no /proc/meminfo here")
    monkeypatch.setattr(delivery, "_MEMINFO", "/proc/meminfo")
    octets = delivery._dirty_octets()
    assert octets is not None and octets >= 0


def test_only_others_data_counts_against_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meminfo = fake_meminfo(tmp_path, (delivery.OTHERS_DIRTY_OCTETS >> 10) + 1024)
    monkeypatch.setattr(delivery, "_MEMINFO", str(meminfo))
    assert delivery._others_dirty(0)
    assert not delivery._others_dirty(2 << 20)  # 2 MiB of it is our own group's


def test_with_others_data_waiting_a_group_is_fsynced_file_by_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busy_page_cache: Path, files: str
) -> None:
    """No syncfs: each file fsynced while it has no name in new/, then renamed, then new/
    fsynced; nothing left for ``sync`` to do."""
    maildir, destination = _prepared(tmp_path)
    syncfs_calls = _recording_syncfs(monkeypatch, maildir / "new")
    seen = _recording_fsync(monkeypatch, maildir / "new")
    names = destination.commit_group(_group(destination, 0, 5))
    assert all(isinstance(name, str) for name in names)
    assert seen[:5] == [("unnamed", [])] * 5
    assert seen[5:] == [("new/", sorted(str(name) for name in names))]
    destination.sync()
    assert len(seen) == 6 and syncfs_calls == []
    assert os.listdir(maildir / "tmp") == []
    assert len(destination.find_delivered(f"uid-{number}" for number in range(5))) == 5


def test_a_large_nameless_file_is_fsynced_again_after_its_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busy_page_cache: Path
) -> None:
    """A message streamed into tmp/ while it arrived is nameless already: without syncfs
    its link count is made durable by a second fsync, before new/ is."""
    maildir, destination = _prepared(tmp_path, nameless=True)
    seen = _recording_fsync(monkeypatch, maildir / "new")
    large = destination.begin("uid-large")
    large.write(b"y" * (SPILL_OCTETS + 1))
    small = _group(destination, 0, 1)
    names = destination.commit_group([large, *small])
    assert all(isinstance(name, str) for name in names)
    large_name = str(names[0])
    assert sorted(what for what, _ in seen[:2]) == ["unnamed", "unnamed"]
    assert seen[2][0] == large_name  # its link count, once it has its name
    assert seen[3] == ("new/", sorted(str(name) for name in names))
    assert len(seen) == 4


def test_turning_from_syncfs_to_fsyncs_syncs_the_names_before_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: str
) -> None:
    maildir, destination = _prepared(tmp_path)
    syncfs_calls = _recording_syncfs(monkeypatch, maildir / "new")
    first = sorted(str(name) for name in destination.commit_group(_group(destination, 0, 3)))
    assert syncfs_calls == [[]]
    monkeypatch.setattr(delivery, "_MEMINFO", str(fake_meminfo(tmp_path, BUSY_DIRTY_KIB)))
    destination.commit_group(_group(destination, 3, 3))
    destination.commit_group(_group(destination, 6, 3))
    destination.sync()
    if files == "nameless":  # the first group's link counts: one more syncfs, then none
        assert syncfs_calls == [[], first]
    else:  # renamed: an fsync of new/ is enough
        assert syncfs_calls == [[]]
    assert len(os.listdir(maildir / "new")) == 9


def _fsync_fails_when(monkeypatch: pytest.MonkeyPatch, fails: Callable[[int], bool]) -> None:
    """Replaces os.fsync by the real one, except that it raises EIO where ``fails(fd)``."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if fails(fd):
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_file_that_fails_its_fsync_is_not_delivered_and_the_rest_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busy_page_cache: Path, files: str
) -> None:
    maildir, destination = _prepared(tmp_path)
    failed: list[int] = []
    lock = threading.Lock()

    def first_file(fd: int) -> bool:  # the group's files are fsynced from parallel threads
        with lock:
            if failed:
                return False
            failed.append(fd)
            return True

    _fsync_fails_when(monkeypatch, first_file)
    outcomes = destination.commit_group(_group(destination, 0, 3))
    assert sorted(type(outcome).__name__ for outcome in outcomes) == ["OSError", "str", "str"]
    assert sorted(os.listdir(maildir / "new")) == sorted(
        str(o) for o in outcomes if isinstance(o, str)
    )
    assert os.listdir(maildir / "tmp") == []


def test_a_failed_fsync_of_new_takes_the_group_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busy_page_cache: Path, files: str
) -> None:
    maildir, destination = _prepared(tmp_path)
    new_inode = os.stat(maildir / "new").st_ino
    _fsync_fails_when(monkeypatch, lambda fd: os.fstat(fd).st_ino == new_inode)
    outcomes = destination.commit_group(_group(destination, 0, 3))
    assert all(isinstance(outcome, OSError) for outcome in outcomes)
    _assert_empty(maildir)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.binary(max_size=12).map(lambda raw: bytes(b"a\r\n.\r\n\x0b\x85"[b % 8] for b in raw))
    )
)
def test_size_tags_match_the_wire_size_of_what_is_stored(chunks: list[bytes]) -> None:
    """Stored with CRLF made LF and nothing else changed (VT and NEL are no line ends in
    bytes), in chunks cut anywhere, lone CRs and LFs included."""
    with tempfile.TemporaryDirectory() as folder:
        destination = MaildirDestination(Path(folder) / "Maildir", "office")
        destination.prepare()
        sink = destination.begin("uid-1")
        for chunk in chunks:
            sink.write(chunk)
        name = sink.commit()
        stored = (Path(folder) / "Maildir" / "new" / name).read_bytes()
    assert stored == b"".join(chunks).replace(b"\r\n", b"\n")
    assert name.endswith(f",S={len(stored)},W={wire_size(stored)}")


def test_a_large_group_is_journaled_whole_in_one_transaction(tmp_path: Path) -> None:
    """Rows go in by the hundred per statement: every one of 250 lands, listed or not."""
    path = journal_path(tmp_path, "a")
    uidls = [f"uid-{number}" for number in range(250)]
    with Journal(path) as journal:
        journal.record_listing(uidls[:120], 1.0, complete=True)
        journal.record_delivered_many(
            [
                (
                    uidl,
                    f"new/{uidl}",
                    number,
                    Fingerprint(header_hash=f"h{number}", message_id=None, date=None),
                )
                for number, uidl in enumerate(uidls)
            ],
            now=5.0,
            delete=True,
        )
        entries = journal.entries()
        by_hash, _ = journal.fingerprints()
    assert sorted(entries) == sorted(uidls)
    assert all(e.delivered_at == 5.0 and e.delete_pending for e in entries.values())
    assert entries["uid-0"].first_seen == 1.0 and entries["uid-249"].first_seen == 5.0
    assert {uidl: entries[uidl].local_name for uidl in uidls} == {u: f"new/{u}" for u in uidls}
    assert by_hash["h249"] == "new/uid-249"


def test_deletions_are_recorded_in_statements_of_many_rows(tmp_path: Path) -> None:
    uidls = [f"u{number}" for number in range(250)]
    with Journal(journal_path(tmp_path, "a")) as journal:
        journal.record_listing(uidls, 100.0, complete=True)
        journal.record_delivered_many(
            [(uidl, f"n-{uidl}", 10, None) for uidl in uidls], now=110.0, delete=True
        )
        journal.record_deleted(uidls[:201], 120.0)
        entries = journal.entries()
    assert [entries[uidl].deleted_at for uidl in uidls] == [120.0] * 201 + [None] * 49
    assert [entries[uidl].delete_pending for uidl in uidls] == [False] * 201 + [True] * 49
