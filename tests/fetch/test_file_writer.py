"""The file writer: a Maildir's files made, synced and named by a helper process."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest

from postoffice.fetch import file_writer, transfer
from postoffice.fetch.delivery import SPILL_OCTETS, MaildirDestination, MessageSink
from postoffice.fetch.errors import FetchError
from postoffice.fetch.file_writer import WriterStopped
from postoffice.fetch.journal import Journal, journal_path
from postoffice.fetch.session import run_session

from .fakeserver import FakePop3Server
from .helpers import (
    big_message,
    delivered_bodies,
    expected_bodies,
    five_messages,
    maildir_files,
    make_account,
    tmp_is_empty,
)


async def started(maildir: Path, *, fail_syncfs_at: int = 0) -> MaildirDestination:
    """A prepared Maildir whose files are made by a file writer."""
    destination = MaildirDestination(maildir, "test")
    destination.prepare()
    if not destination.nameless:
        pytest.skip("no nameless files (O_TMPFILE and syncfs) on this system")
    destination.fail_syncfs_at = fail_syncfs_at
    destination.start_writer(asyncio.get_running_loop())
    return destination


def received(destination: MaildirDestination, uidl: str, *pieces: bytes) -> MessageSink:
    """A message received whole, as the transfer hands it over."""
    sink = destination.begin(uidl)
    for piece in pieces:
        sink.write(piece)
    sink.end()
    return sink


async def commit(
    destination: MaildirDestination, sinks: Sequence[MessageSink]
) -> list[str | Exception]:
    return await asyncio.to_thread(destination.commit_group, sinks)


async def stopped(destination: MaildirDestination) -> int:
    wait = destination.stop_writer()
    assert wait is not None
    status = await asyncio.to_thread(wait)
    assert isinstance(status, int)
    return status


async def test_messages_are_named_with_their_content_and_tmp_is_left_empty(
    tmp_path: Path,
) -> None:
    maildir = tmp_path / "Maildir"
    destination = await started(maildir)
    line = b"y" * 78 + b"\r\n"
    big = [line * 800] * (3 * SPILL_OCTETS // len(line * 800) + 1)  # sent in pieces
    sinks = [
        received(destination, "empty"),
        received(destination, "small", b"Subject: a\r\n\r\nbody\r", b"\n.dot\r\n"),
        received(destination, "big", *big),
    ]
    names = await commit(destination, sinks)
    await asyncio.to_thread(destination.sync)
    assert await stopped(destination) == 0
    assert all(isinstance(name, str) for name in names)
    files = maildir_files(maildir)
    assert sorted(files) == sorted(f"new/{name}" for name in names)
    assert sorted(files.values()) == sorted(
        [b"", b"Subject: a\n\nbody\n.dot\n", b"".join(big).replace(b"\r\n", b"\n")]
    )
    small = next(name for name in names if isinstance(name, str) and files[f"new/{name}"][:1])
    assert ",S=" in small and ",W=" in small
    assert tmp_is_empty(maildir)


async def test_a_backlog_for_the_helper_is_bounded_and_nothing_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``UNSENT_OCTETS`` waiting, the loop waits for the helper to take it."""
    monkeypatch.setattr(file_writer, "UNSENT_OCTETS", 4096)
    maildir = tmp_path / "Maildir"
    destination = await started(maildir)
    pieces = [b"%07d " % number + b"z" * 90 + b"\r\n" for number in range(40_000)]
    sinks = [received(destination, "huge", *pieces), received(destination, "next", b"x\r\n")]
    writer = destination._writer
    assert writer is not None and len(writer._unsent) <= 4096 + 2 * SPILL_OCTETS
    await commit(destination, sinks)
    await asyncio.to_thread(destination.sync)
    await stopped(destination)
    assert sorted(maildir_files(maildir).values()) == sorted(
        [b"".join(pieces).replace(b"\r\n", b"\n"), b"x\n"]
    )


async def test_a_dropped_message_leaves_nothing(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    destination = await started(maildir)
    dropped = received(destination, "dropped", b"never named\r\n")
    kept = received(destination, "kept", b"kept\r\n")
    dropped.abort()
    await commit(destination, [kept])
    await asyncio.to_thread(destination.sync)
    await stopped(destination)
    assert list(maildir_files(maildir).values()) == [b"kept\n"]
    assert tmp_is_empty(maildir)


async def test_a_failed_syncfs_fails_its_group_and_names_nothing(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    destination = await started(maildir, fail_syncfs_at=1)
    sinks = [received(destination, f"m{n}", b"body\r\n") for n in range(3)]
    with pytest.raises(OSError) as raised:
        await commit(destination, sinks)
    assert raised.value.errno == errno.EIO
    await stopped(destination)
    assert maildir_files(maildir) == {}


async def test_a_failed_syncfs_takes_back_the_names_of_the_group_before(tmp_path: Path) -> None:
    """Those names were not yet durable: they must not be found after a crash."""
    maildir = tmp_path / "Maildir"
    destination = await started(maildir, fail_syncfs_at=2)
    first = await commit(destination, [received(destination, "first", b"one\r\n")])
    assert len(maildir_files(maildir)) == 1 and isinstance(first[0], str)
    with pytest.raises(OSError):
        await commit(destination, [received(destination, "second", b"two\r\n")])
    await stopped(destination)
    assert maildir_files(maildir) == {}


async def test_a_failed_sync_takes_back_the_last_names(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    destination = await started(maildir, fail_syncfs_at=2)
    await commit(destination, [received(destination, "only", b"one\r\n")])
    with pytest.raises(OSError):
        await asyncio.to_thread(destination.sync)
    await stopped(destination)
    assert maildir_files(maildir) == {}


async def test_a_failed_sync_takes_back_only_the_names_it_was_to_make_durable(
    tmp_path: Path,
) -> None:
    """The names of the first group were made durable by the second group's syncfs (and
    may be journaled): a later failure must not touch them."""
    maildir = tmp_path / "Maildir"
    destination = await started(maildir, fail_syncfs_at=3)
    await commit(destination, [received(destination, "first", b"one\r\n")])
    await commit(destination, [received(destination, "second", b"two\r\n")])
    with pytest.raises(OSError):
        await asyncio.to_thread(destination.sync)
    await stopped(destination)
    assert list(maildir_files(maildir).values()) == [b"one\n"]


async def test_a_writer_that_dies_takes_back_only_the_names_not_yet_durable(
    tmp_path: Path,
) -> None:
    maildir = tmp_path / "Maildir"
    destination = await started(maildir)
    await commit(destination, [received(destination, "first", b"one\r\n")])
    await commit(destination, [received(destination, "second", b"two\r\n")])
    writer = destination._writer
    assert writer is not None
    os.kill(writer.pid, signal.SIGKILL)
    with pytest.raises(WriterStopped):
        await asyncio.to_thread(destination.sync)
    await stopped(destination)
    assert list(maildir_files(maildir).values()) == [b"one\n"]


async def test_files_written_before_a_failed_syncfs_fail_too(tmp_path: Path) -> None:
    """That syncfs reported the write-back error; the next one would not report it again,
    so a file written before it cannot be known durable."""
    maildir = tmp_path / "Maildir"
    destination = await started(maildir, fail_syncfs_at=1)
    early = received(destination, "early", b"one\r\n")
    later = received(destination, "later", b"two\r\n")
    with pytest.raises(OSError):
        await commit(destination, [early])
    (outcome,) = await commit(destination, [later])
    assert isinstance(outcome, OSError) and outcome.errno == errno.EIO
    await stopped(destination)
    assert maildir_files(maildir) == {}


async def test_a_writer_that_dies_fails_the_commit_and_its_names_are_taken_back(
    tmp_path: Path,
) -> None:
    maildir = tmp_path / "Maildir"
    destination = await started(maildir)
    await commit(destination, [received(destination, "first", b"one\r\n")])
    assert len(maildir_files(maildir)) == 1
    writer = destination._writer
    assert writer is not None
    os.kill(writer.pid, signal.SIGKILL)
    with pytest.raises(WriterStopped):
        await commit(destination, [received(destination, "second", b"two\r\n")])
    assert await stopped(destination) == -signal.SIGKILL
    assert maildir_files(maildir) == {}  # the first name was never made durable
    assert tmp_is_empty(maildir)


# -- whole sessions ------------------------------------------------------------------------


@pytest.fixture
def writer_for_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every transfer starts a file writer, however few its messages."""
    monkeypatch.setattr(transfer, "WRITER_MESSAGES", 1)


@pytest.mark.usefixtures("writer_for_all")
async def test_a_session_through_the_writer_delivers_each_message_once(tmp_path: Path) -> None:
    messages = [*five_messages(), big_message("uid-big", 3 * SPILL_OCTETS)]
    fake = FakePop3Server(messages=list(messages))
    await fake.start()
    try:
        account = make_account(tmp_path, fake, mode="delete")
        journal = Journal(journal_path(account.state_dir, account.name))
        destination = MaildirDestination(account.maildir, account.name)
        try:
            result = await run_session(account, journal=journal, destination=destination)
        finally:
            journal.close()
    finally:
        await fake.stop()
    assert result.fetched == len(messages)
    assert delivered_bodies(account.maildir) == expected_bodies(messages)
    assert fake.messages == []
    assert tmp_is_empty(account.maildir)
    assert destination.stop_writer() is None  # the session stopped it


class _DyingWriterDestination(MaildirDestination):
    """Kills its file writer before its second group commit."""

    def __init__(self, path: Path, account: str) -> None:
        super().__init__(path, account)
        self.groups = 0

    def commit_group(self, sinks: Sequence[MessageSink]) -> list[str | Exception]:
        self.groups += 1
        if self.groups == 2 and self._writer is not None:
            os.kill(self._writer.pid, signal.SIGKILL)
        return super().commit_group(sinks)


@pytest.mark.usefixtures("writer_for_all")
@pytest.mark.parametrize("fault", ["syncfs", "writer dies"])
async def test_a_fault_in_the_writer_loses_nothing_and_the_next_run_completes(
    tmp_path: Path, server: FakePop3Server, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    monkeypatch.setattr(transfer, "BATCH", 2)  # several groups
    account = make_account(tmp_path, server, mode="delete")
    destination: MaildirDestination
    if fault == "syncfs":
        destination = MaildirDestination(account.maildir, account.name)
        destination.fail_syncfs_at = 2
    else:
        destination = _DyingWriterDestination(account.maildir, account.name)
    journal = Journal(journal_path(account.state_dir, account.name))
    try:
        with pytest.raises(FetchError):
            await run_session(account, journal=journal, destination=destination)
        again = MaildirDestination(account.maildir, account.name)
        await run_session(account, journal=journal, destination=again)
    finally:
        journal.close()
    assert delivered_bodies(account.maildir) == expected_bodies(five_messages())
    assert server.messages == []
    assert tmp_is_empty(account.maildir)


@pytest.mark.usefixtures("writer_for_all")
async def test_without_a_writer_the_thread_makes_the_files_and_a_warning_says_so(
    tmp_path: Path,
    server: FakePop3Server,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def cannot_start(*arguments: object, **keywords: object) -> file_writer.FileWriter:
        raise OSError(errno.EAGAIN, "no more processes")

    monkeypatch.setattr(file_writer.FileWriter, "start", cannot_start)
    account = make_account(tmp_path, server, mode="delete")
    journal = Journal(journal_path(account.state_dir, account.name))
    try:
        result = await run_session(
            account,
            journal=journal,
            destination=MaildirDestination(account.maildir, account.name),
        )
    finally:
        journal.close()
    assert result.fetched == 5
    assert delivered_bodies(account.maildir) == expected_bodies(five_messages())
    assert "file writer not started" in caplog.text
