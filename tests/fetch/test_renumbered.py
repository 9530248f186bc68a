"""A server migration that renumbers every UIDL: messages are matched, not fetched again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from postoffice.fetch.fingerprint import HeaderCollector, fingerprint_of
from postoffice.fetch.journal import Journal, journal_path
from postoffice.fetch.runner import fetch_account

from .fakeserver import FakeMessage, FakePop3Server
from .helpers import five_messages, maildir_files, make_account


def with_headers(n: int) -> FakeMessage:
    return FakeMessage(
        f"old-{n}",
        b"Message-ID: <%d@example>\r\nDate: Mon, 2 Mar 2026 10:00:0%d +0000\r\n"
        b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n, n, n),
    )


def renumber(messages: list[FakeMessage]) -> list[FakeMessage]:
    return [FakeMessage("new-" + m.uid, m.data) for m in messages]


@pytest.fixture
async def server() -> AsyncIterator[FakePop3Server]:
    fake = FakePop3Server(messages=[with_headers(n) for n in range(1, 6)])
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def test_renumbered_messages_are_matched_not_fetched(
    tmp_path: Path, server: FakePop3Server
) -> None:
    account = make_account(tmp_path, server, mode="keep")
    assert (await fetch_account(account)).fetched == 5
    server.messages = renumber(server.messages)
    server.retrieved.clear()
    assert (await fetch_account(account)).fetched == 0
    assert sum(server.retrieved.values()) == 0
    assert len(maildir_files(account.maildir)) == 5
    with Journal(journal_path(account.state_dir, account.name)) as journal:
        entries = journal.entries()
    assert all(entries[f"new-old-{n}"].delivered for n in range(1, 6))
    assert (await fetch_account(account)).fetched == 0


async def test_only_unmatched_messages_are_fetched(tmp_path: Path, server: FakePop3Server) -> None:
    account = make_account(tmp_path, server, mode="keep")
    server.messages = server.messages[:3]
    assert (await fetch_account(account)).fetched == 3
    # The migration renumbers the three; two really new messages arrive at the same time.
    fresh = [FakeMessage(f"fresh-{m.uid}", m.data) for m in five_messages()[:2]]
    server.messages = [*renumber(server.messages), *fresh]
    server.retrieved.clear()
    assert (await fetch_account(account)).fetched == 2
    assert sorted(server.retrieved) == ["fresh-uid-1", "fresh-uid-2"]
    assert len(maildir_files(account.maildir)) == 5


async def test_delete_mode_deletes_matched_messages_unread(
    tmp_path: Path, server: FakePop3Server
) -> None:
    keep = make_account(tmp_path, server, mode="keep")
    await fetch_account(keep)
    server.messages = renumber(server.messages)
    server.retrieved.clear()
    result = await fetch_account(make_account(tmp_path, server, mode="delete"))
    assert (result.fetched, result.deleted) == (0, 5)
    assert server.messages == [] and sum(server.retrieved.values()) == 0


async def test_false_alarm_costs_only_top(tmp_path: Path, server: FakePop3Server) -> None:
    account = make_account(tmp_path, server, mode="keep")
    await fetch_account(account)
    server.messages = five_messages()  # another client deleted all; new mail arrived
    result = await fetch_account(account)
    assert result.fetched == 5
    assert len(maildir_files(account.maildir)) == 10


def test_header_collector_across_chunks() -> None:
    data = b"Message-ID: <a@b>\r\nDate: x\r\n\r\nbody\r\n\r\nmore\r\n"
    for size in (1, 2, 3, 7, 100):
        collector = HeaderCollector()
        for start in range(0, len(data), size):
            collector.feed(data[start : start + size])
        found = collector.fingerprint()
        assert found == fingerprint_of(b"Message-ID: <a@b>\r\nDate: x\r\n")
        assert found is not None and found.message_id == "<a@b>" and found.date == "x"
