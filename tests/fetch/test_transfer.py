"""Group commits: overlapped with receiving, sized by the disk's pace, bounded, and safe."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from postoffice.fetch import delivery, transfer
from postoffice.fetch.config import Account
from postoffice.fetch.delivery import MaildirDestination, MessageSink, commit_each, message_key
from postoffice.fetch.errors import FetchError
from postoffice.fetch.journal import Delivery, Journal, journal_path
from postoffice.fetch.runner import fetch_account
from postoffice.fetch.session import Options, SessionResult, run_session

from .fakeserver import FakePop3Server
from .helpers import (
    delivered_bodies,
    expected_bodies,
    five_messages,
    make_account,
    tmp_is_empty,
)


class GroupJournal(Journal):
    """Remembers the UIDLs of each journal transaction of deliveries, and what happened
    before it in ``events``."""

    def __init__(self, path: Path, events: list[str]) -> None:
        super().__init__(path)
        self.groups: list[list[str]] = []
        self.events = events

    def record_delivered_many(
        self, deliveries: Iterable[Delivery], *, now: float, delete: bool
    ) -> None:
        deliveries = list(deliveries)
        self.groups.append([uidl for uidl, _, _, _ in deliveries])
        self.events.append("journal " + " ".join(uidl for uidl, _, _, _ in deliveries))
        super().record_delivered_many(deliveries, now=now, delete=delete)


class HeldDestination(MaildirDestination):
    """A Maildir whose first group commit waits until ``release`` is set (or ``patience``
    runs out): the disk is slow while the first group commits."""

    def __init__(self, path: Path, account: str, *, patience: float) -> None:
        super().__init__(path, account)
        self.release = threading.Event()
        self.patience = patience
        self.released: bool | None = None

    def commit_group(self, sinks: Sequence[MessageSink]) -> list[str | Exception]:
        outcomes = super().commit_group(sinks)
        if self.released is None:
            self.released = self.release.wait(self.patience)
        return outcomes


class CountingProgress:
    """Sets ``event`` once ``count`` messages have been received whole."""

    def __init__(self, count: int, event: threading.Event) -> None:
        self.count = count
        self.event = event
        self.done = 0

    def start(self, account: str, messages: int, octets: int) -> None:
        pass

    def advance(self, account: str, octets: int) -> None:
        pass

    def message_done(self, account: str) -> None:
        self.done += 1
        if self.done >= self.count:
            self.event.set()

    def finish(self, account: str) -> None:
        pass


async def held_session(
    account: Account, events: list[str], *, patience: float
) -> tuple[SessionResult, GroupJournal, HeldDestination]:
    """A session whose first group commit waits (up to ``patience``) until all five
    messages have been received whole; the journal records its groups into ``events``."""
    journal = GroupJournal(journal_path(account.state_dir, account.name), events)
    destination = HeldDestination(account.maildir, account.name, patience=patience)
    progress = CountingProgress(5, destination.release)
    try:
        result = await run_session(
            account, journal=journal, destination=destination, options=Options(progress=progress)
        )
    finally:
        journal.close()
    return result, journal, destination


async def test_messages_keep_arriving_while_a_group_commits(
    tmp_path: Path, server: FakePop3Server
) -> None:
    account = make_account(tmp_path, server, mode="delete")
    result, journal, destination = await held_session(account, [], patience=10)
    assert destination.released, "receiving stopped while the first group was committing"
    # The first message commits alone; the other four arrive meanwhile and form one group.
    assert journal.groups == [["uid-1"], ["uid-2", "uid-3", "uid-4", "uid-5"]]
    assert (result.fetched, result.deleted) == (5, 5)
    assert delivered_bodies(account.maildir) == expected_bodies(five_messages())


async def test_a_group_is_journaled_only_after_a_syncfs_made_its_names_durable(
    tmp_path: Path, server: FakePop3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second group's syncfs makes the first group's names durable (then the first
    group is journaled), and one more after the last group: two for two groups."""
    real = delivery._syncfs()
    if real is None:
        pytest.skip("no syncfs here")
    account = make_account(tmp_path, server, mode="delete")
    events: list[str] = []

    def syncfs(fd: int) -> None:
        events.append("syncfs " + " ".join(sorted(os.listdir(account.maildir / "new"))))
        real(fd)

    monkeypatch.setattr(delivery, "_syncfs", lambda: syncfs)
    _, journal, _ = await held_session(account, events, patience=10)
    assert [event.split()[0] for event in events] == ["syncfs", "journal", "syncfs", "journal"]
    for synced, journaled in ((events[0], events[1]), (events[2], events[3])):
        for uidl in journaled.split()[1:]:
            assert message_key(account.name, uidl) in synced
    assert journal.groups == [["uid-1"], ["uid-2", "uid-3", "uid-4", "uid-5"]]
    assert delivered_bodies(account.maildir) == expected_bodies(five_messages())
    assert server.messages == []


async def test_receiving_waits_for_the_disk_when_a_batch_is_pending(
    tmp_path: Path, server: FakePop3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "BATCH", 2)
    account = make_account(tmp_path, server, mode="keep")
    _, journal, destination = await held_session(account, [], patience=0.5)
    assert destination.released is False, "more than BATCH messages were pending at once"
    assert max(len(group) for group in journal.groups) <= 2
    assert sorted(uidl for group in journal.groups for uidl in group) == [
        m.uid for m in five_messages()
    ]
    assert delivered_bodies(account.maildir) == expected_bodies(five_messages())


class OrderedDestination:
    """Not idempotent (like an MDA): records each commit in ``events``."""

    idempotent = False

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.bodies: dict[str, bytes] = {}

    def prepare(self) -> None:
        pass

    def find_delivered(self, uidls: Iterable[str]) -> dict[str, str]:
        return {}

    def sync(self) -> None:
        pass

    def begin(self, uidl: str) -> MessageSink:
        return _OrderedSink(self, uidl)

    def commit_group(self, sinks: Sequence[MessageSink]) -> list[str | Exception]:
        self.events.append(f"group of {len(sinks)}")
        return commit_each(sinks)


class _OrderedSink:
    def __init__(self, destination: OrderedDestination, uidl: str) -> None:
        self.destination = destination
        self.uidl = uidl
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def commit(self) -> str:
        self.destination.events.append(f"commit {self.uidl}")
        self.destination.bodies[self.uidl] = self.data
        return f"ordered:{self.uidl}"

    def abort(self) -> None:
        pass


async def test_a_destination_that_is_not_idempotent_commits_one_message_at_a_time(
    tmp_path: Path, server: FakePop3Server
) -> None:
    account = make_account(tmp_path, server, mode="delete")
    events: list[str] = []
    journal = GroupJournal(journal_path(account.state_dir, account.name), events)
    destination = OrderedDestination(events)
    try:
        await run_session(account, journal=journal, destination=destination)
    finally:
        journal.close()
    expected: list[str] = []
    for message in five_messages():
        expected += ["group of 1", f"commit {message.uid}", f"journal {message.uid}"]
    assert events == expected
    assert server.messages == []


class FailingDestination(MaildirDestination):
    """A Maildir where committing ``uidl`` fails, as with a full disk."""

    def __init__(self, path: Path, account: str, uidl: str) -> None:
        super().__init__(path, account)
        self.failing = uidl

    def begin(self, uidl: str) -> MessageSink:
        sink = super().begin(uidl)
        if uidl != self.failing:
            return sink
        return _FailingSink(sink)


class _FailingSink:
    def __init__(self, sink: MessageSink) -> None:
        self.sink = sink

    def write(self, data: bytes) -> None:
        self.sink.write(data)

    def commit(self) -> str:
        raise OSError(28, "No space left on device")

    def abort(self) -> None:
        self.sink.abort()


class HeldFailingDestination(HeldDestination):
    """``HeldDestination`` where committing ``uidl`` fails, as with a full disk."""

    def __init__(self, path: Path, account: str, uidl: str) -> None:
        super().__init__(path, account, patience=10)
        self.failing = uidl

    def begin(self, uidl: str) -> MessageSink:
        sink = super().begin(uidl)
        return _FailingSink(sink) if uidl == self.failing else sink


async def test_a_failed_group_still_journals_the_group_its_syncfs_made_durable(
    tmp_path: Path, server: FakePop3Server
) -> None:
    """The first group's names are made durable by the second group's commit, which then
    fails on one message: the first group is journaled all the same, the rest of the
    second is found on disk by the next session, and nothing is deleted before that."""
    account = make_account(tmp_path, server, mode="delete")
    journal = GroupJournal(journal_path(account.state_dir, account.name), [])
    destination = HeldFailingDestination(account.maildir, account.name, "uid-4")
    progress = CountingProgress(5, destination.release)
    try:
        with pytest.raises(FetchError, match="No space left"):
            await run_session(
                account,
                journal=journal,
                destination=destination,
                options=Options(progress=progress),
            )
        assert journal.groups == [["uid-1"]]
    finally:
        journal.close()
    assert len(server.messages) == 5
    result = await fetch_account(account)
    assert result.fetched == 1  # uid-4; uid-2, 3 and 5 were found on disk
    assert delivered_bodies(account.maildir) == expected_bodies(five_messages())
    assert server.messages == []


async def test_a_failed_commit_in_a_group_loses_and_duplicates_nothing(
    tmp_path: Path, server: FakePop3Server
) -> None:
    account = make_account(tmp_path, server, mode="delete")
    journal = Journal(journal_path(account.state_dir, account.name))
    destination = FailingDestination(account.maildir, account.name, "uid-4")
    try:
        with pytest.raises(FetchError, match="No space left"):
            await run_session(account, journal=journal, destination=destination)
    finally:
        journal.close()
    assert len(server.messages) == 5, "nothing may be deleted after a failed delivery"
    assert tmp_is_empty(account.maildir)
    result = await fetch_account(account)
    assert result.deleted == 5
    assert delivered_bodies(account.maildir) == expected_bodies(five_messages())
    assert server.messages == []
    # What the failed group committed before the error was found on disk, not downloaded.
    assert server.retrieved["uid-4"] == 2
    assert sum(server.retrieved.values()) == 5 + result.fetched
