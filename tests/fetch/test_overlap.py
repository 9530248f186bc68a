"""The work a session does while the server answers: never two journal calls at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from postoffice.fetch.delivery import MaildirDestination
from postoffice.fetch.journal import Journal, journal_path
from postoffice.fetch.session import run_session

from .fakeserver import FakePop3Server
from .helpers import delivered_bodies, expected_bodies, five_messages, make_account


class OneAtATimeJournal(Journal):
    """A journal whose every call is slow and fails the test if another call overlaps it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._busy = threading.Lock()
        self.overlaps = 0
        self.calls: list[str] = []

    def _guarded(self, name: str, call: Callable[[], Any]) -> Any:
        if not self._busy.acquire(blocking=False):
            self.overlaps += 1
            self._busy.acquire()
        try:
            self.calls.append(name)
            time.sleep(0.02)  # long enough for a concurrent call to show
            return call()
        finally:
            self._busy.release()

    def entries(self) -> Any:
        return self._guarded("entries", super().entries)

    def record_listing(self, *args: Any, **keys: Any) -> None:
        self._guarded(
            "record_listing", lambda: super(OneAtATimeJournal, self).record_listing(*args, **keys)
        )

    def record_delivered_many(self, *args: Any, **keys: Any) -> None:
        self._guarded(
            "record_delivered_many",
            lambda: super(OneAtATimeJournal, self).record_delivered_many(*args, **keys),
        )

    def mark_delete_pending(self, *args: Any, **keys: Any) -> None:
        self._guarded(
            "mark_delete_pending",
            lambda: super(OneAtATimeJournal, self).mark_delete_pending(*args, **keys),
        )

    def record_deleted(self, *args: Any, **keys: Any) -> None:
        self._guarded(
            "record_deleted", lambda: super(OneAtATimeJournal, self).record_deleted(*args, **keys)
        )

    def adopt(self, *args: Any, **keys: Any) -> None:
        self._guarded("adopt", lambda: super(OneAtATimeJournal, self).adopt(*args, **keys))


async def test_the_journal_is_used_by_one_thread_at_a_time(
    tmp_path: Path, server: FakePop3Server
) -> None:
    # Keep mode, delete_after_days 0: the first session delivers, the second owes DELEs for
    # all of them (journaled before they are sent) and finds two new messages.
    account = make_account(tmp_path, server, mode="keep", delete_after_days=0)
    path = journal_path(account.state_dir, account.name)
    for messages in (five_messages()[:3], five_messages()):
        server.messages = list(messages)
        journal = OneAtATimeJournal(path)
        try:
            await run_session(
                account, journal=journal, destination=MaildirDestination(account.maildir, "test")
            )
        finally:
            journal.close()
        assert journal.overlaps == 0, journal.calls
    assert "mark_delete_pending" in journal.calls
    assert delivered_bodies(account.maildir) == expected_bodies(five_messages())


class UnpreparedDestination(MaildirDestination):
    def prepare(self) -> None:
        raise PermissionError(13, "Permission denied", str(self.path))


async def test_an_unusable_destination_fails_only_a_session_with_mail_to_deliver(
    tmp_path: Path, server: FakePop3Server
) -> None:
    account = make_account(tmp_path, server, mode="delete")
    path = journal_path(account.state_dir, account.name)
    with Journal(path) as journal:
        with pytest.raises(PermissionError):
            await run_session(
                account, journal=journal, destination=UnpreparedDestination(account.maildir, "t")
            )
        assert len(server.messages) == 5, "nothing deleted"
        journal.record_delivered_many(
            [(message.uid, "elsewhere", 10, None) for message in five_messages()[:4]],
            now=time.time(),
            delete=True,
        )
    server.messages = [m for m in server.messages if m.uid != "uid-5"]
    with Journal(path) as journal:
        result = await run_session(
            account, journal=journal, destination=UnpreparedDestination(account.maildir, "t")
        )
    assert (result.fetched, result.deleted) == (0, 4)
    assert server.messages == []
