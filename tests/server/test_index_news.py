"""News of index files between worker processes (``server/index_news.py``): the worker
told of a file reads it into its memory of snapshots, so its next login costs what it
costs on the worker that wrote it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postoffice.auth.base import UserRecord
from postoffice.auth.verified_cache import VerifiedPasswords
from postoffice.secret import Secret
from postoffice.server import index_news
from postoffice.server.index_news import IndexNews
from postoffice.storage import maildir, maildir_index
from postoffice.storage.maildir import MaildirMaildrop, ensure_maildir


def _maildrop_with_index(tmp_path: Path, messages: int = 30) -> Path:
    path = tmp_path / "Maildir"
    ensure_maildir(path)
    for i in range(messages):
        (path / "cur" / f"{1000 + i}.M1P1.host,S=5,W=6:2,S").write_bytes(b"body\n")
    past = time.time_ns() - 100 * 1_000_000_000
    for sub in ("new", "cur"):
        os.utime(path / sub, ns=(past, past))
    MaildirMaildrop(path).snapshot()  # lists and writes the index
    return path


def _dirs(path: Path) -> maildir_index.DirState:
    new, cur = os.stat(path / "new"), os.stat(path / "cur")
    return (new.st_ino, new.st_mtime_ns, cur.st_ino, cur.st_mtime_ns)


async def _eventually(condition: Callable[[], bool]) -> None:
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in 3 s")


@contextlib.contextmanager
def _two_workers(
    caches: tuple[VerifiedPasswords | None, VerifiedPasswords | None] = (None, None),
) -> Iterator[list[IndexNews]]:
    """Two workers' ends, as ``workers.run`` makes them, closed afterwards."""
    channels = index_news.channels(2)
    ends = [
        IndexNews(
            channels[number][0],
            [channels[1 - number][1]],
            uidl_format="postoffice",
            verified=caches[number],
        )
        for number in (0, 1)
    ]
    try:
        yield ends
    finally:
        for end in ends:
            end.close()
        for sockets in channels:
            for sock in sockets:
                sock.close()


@pytest.fixture
def pair() -> Iterator[list[IndexNews]]:
    with _two_workers() as ends:
        yield ends


async def test_a_worker_that_served_the_maildrop_rereads_a_small_index_it_is_told_of(
    tmp_path: Path, pair: list[IndexNews], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _maildrop_with_index(tmp_path)
    older = maildir_index._memo[(str(path), "postoffice")]  # what this worker saw last time
    (path / "new" / "2000.M1P1.host").write_bytes(b"body\n")  # no tags: the file changes
    past = time.time_ns() - 50 * 1_000_000_000
    os.utime(path / "new", ns=(past, past))
    listed = MaildirMaildrop(path).snapshot()  # another worker lists and writes the file
    maildir_index._memo[(str(path), "postoffice")] = older
    assert maildir_index.recall(path, "postoffice", _dirs(path)) is None  # stale
    pair[1].start(asyncio.get_running_loop())
    pair[0].announce(path, "postoffice")
    await _eventually(lambda: maildir_index.recall(path, "postoffice", _dirs(path)) is not None)

    def no_file(*_args: object) -> None:
        raise AssertionError("the index file was read again")

    monkeypatch.setattr(maildir, "load_index", no_file)
    assert MaildirMaildrop(path).snapshot() == listed


async def test_a_large_index_is_read_in_a_thread_by_any_worker(
    tmp_path: Path, pair: list[IndexNews], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_news, "THREAD_FROM_OCTETS", 0)  # every file counts as large
    path = _maildrop_with_index(tmp_path)
    listed = MaildirMaildrop(path).snapshot()
    maildir_index.forget_all()  # this worker never served it
    pair[1].start(asyncio.get_running_loop())
    pair[0].announce(path, "postoffice")
    await _eventually(lambda: maildir_index.recall(path, "postoffice", _dirs(path)) is not None)
    assert pair[1]._reading == set()
    maildir_index.forget_all()
    pair[0].announce(path, "postoffice")  # read again: news is never skipped for good
    await _eventually(lambda: maildir_index.recall(path, "postoffice", _dirs(path)) is not None)
    assert MaildirMaildrop(path).snapshot() == listed


async def test_a_worker_reading_a_large_index_holds_accepting_meanwhile(
    tmp_path: Path, pair: list[IndexNews], monkeypatch: pytest.MonkeyPatch
) -> None:
    """So a login that would land there at once goes to the worker that has the snapshot
    (a client logging in again right after QUIT)."""
    monkeypatch.setattr(index_news, "THREAD_FROM_OCTETS", 0)  # every file counts as large
    path = _maildrop_with_index(tmp_path)
    maildir_index.forget_all()
    holds: list[bool] = []
    pair[1].start(asyncio.get_running_loop(), hold_accepting=holds.append)
    pair[0].announce(path, "postoffice")
    await _eventually(lambda: maildir_index.recall(path, "postoffice", _dirs(path)) is not None)
    await _eventually(lambda: holds == [True, False])
    maildir_index.forget_all()
    pair[0].announce(path, "postoffice")  # read again, but no second hold this soon
    await _eventually(lambda: maildir_index.recall(path, "postoffice", _dirs(path)) is not None)
    await asyncio.sleep(0.05)
    assert holds == [True, False]


async def test_accepting_resumes_after_the_deadline_even_if_a_read_hangs(
    tmp_path: Path, pair: list[IndexNews], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_news, "THREAD_FROM_OCTETS", 0)
    monkeypatch.setattr(index_news, "HOLD_ACCEPTING_SECONDS", 0.05)
    release = threading.Event()
    monkeypatch.setattr(IndexNews, "_remember", staticmethod(lambda _maildrop: release.wait(5)))
    path = _maildrop_with_index(tmp_path)
    holds: list[bool] = []
    pair[1].start(asyncio.get_running_loop(), hold_accepting=holds.append)
    pair[0].announce(path, "postoffice")
    await _eventually(lambda: holds == [True, False])  # the read still hangs
    assert pair[1]._reading
    release.set()
    await _eventually(lambda: not pair[1]._reading)
    assert holds == [True, False]  # the read's end does not release twice


async def test_a_small_index_of_a_maildrop_never_served_here_is_left_alone(
    tmp_path: Path, pair: list[IndexNews]
) -> None:
    path = _maildrop_with_index(tmp_path)
    maildir_index.forget_all()
    pair[1].start(asyncio.get_running_loop())
    pair[0].announce(path, "postoffice")
    await asyncio.sleep(0.1)
    assert not maildir_index.remembers(path, "postoffice")


async def test_writing_an_index_tells_the_other_workers(
    tmp_path: Path, pair: list[IndexNews]
) -> None:
    loop = asyncio.get_running_loop()
    pair[0].start(loop)  # this "worker" writes; the hook is now pair[0].announce
    path = _maildrop_with_index(tmp_path)
    news = pair[1]._inbox.recv(65536)
    assert news == b"postoffice\0" + os.fsencode(path)


async def test_news_under_another_uidl_scheme_or_of_no_file_is_ignored(
    tmp_path: Path, pair: list[IndexNews], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_news, "THREAD_FROM_OCTETS", 0)  # read by any worker
    path = _maildrop_with_index(tmp_path)
    maildir_index.forget_all()
    pair[1].start(asyncio.get_running_loop())
    pair[0].announce(path, "courier")  # this worker serves "postoffice" UIDLs
    pair[0].announce(tmp_path / "nowhere", "postoffice")
    pair[0]._others[0].send(b"garbage without a separator")
    await asyncio.sleep(0.1)
    assert maildir_index.recall(path, "postoffice", _dirs(path)) is None
    pair[0].announce(path, "postoffice")  # still listening
    await _eventually(lambda: maildir_index.recall(path, "postoffice", _dirs(path)) is not None)


def test_a_failing_hook_does_not_fail_the_index_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[Path, str]] = []

    def hook(path: Path, scheme: str) -> None:
        seen.append((path, scheme))
        raise RuntimeError("no news today")

    maildir_index.on_index_written(hook)
    try:
        path = _maildrop_with_index(tmp_path)
    finally:
        maildir_index.on_index_written(None)
    assert seen == [(path, "postoffice")]
    assert (path / maildir_index.INDEX_NAME).exists()
    assert "index-written hook failed" in caplog.text


def test_remember_index_file_without_a_file(tmp_path: Path) -> None:
    path = tmp_path / "Maildir"
    ensure_maildir(path)
    assert MaildirMaildrop(path).remember_index_file() is False


async def test_a_password_verified_by_one_worker_is_known_by_the_other() -> None:
    """What one worker verified against an expensive hash, the other is told of: the
    same key (made before the fork), so the digest matches there too."""
    caches = (VerifiedPasswords(60, 10), VerifiedPasswords(60, 10))
    caches[1]._key = caches[0]._key  # both inherited one object in the real server
    record = UserRecord(name="carol", password_hash="{ARGON2ID}$argon2id$v=19$m=8,t=1,p=1$s$h")
    with _two_workers(caches) as ends:
        for end in ends:
            end.start(asyncio.get_running_loop())
        caches[0].remember(record, Secret("right"))
        await _eventually(lambda: caches[1].knows(record, Secret("right")))
        assert not caches[1].knows(record, Secret("wrong"))
        ends[0]._others[0].send(b"\x01too short")  # ignored, and the inbox still works
        caches[0].remember(UserRecord(name="dan", password_hash=record.password_hash), Secret("x"))
        await _eventually(lambda: len(caches[1]) == 2)
    assert caches[0].on_remember is None  # close() unhooks
