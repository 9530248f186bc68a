"""Nothing lost, nothing duplicated: keep and delete mode, and faults at every step."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pytest

from postoffice.errors import RemoteProtocolError
from postoffice.fetch import transfer
from postoffice.fetch.config import Account
from postoffice.fetch.delivery import MaildirDestination, message_key
from postoffice.fetch.errors import FetchConnectionError, FetchError, FetchTimeoutError
from postoffice.fetch.journal import Delivery, Journal, journal_path
from postoffice.fetch.runner import fetch_account
from postoffice.fetch.session import run_session

from .fakeserver import FakePop3Server, Faults
from .helpers import (
    delivered_bodies,
    expected_bodies,
    five_messages,
    maildir_files,
    make_account,
    tmp_is_empty,
)

DROPS = (FetchConnectionError, RemoteProtocolError)


def assert_exactly_once(account: Account, server_messages: int = 5) -> None:
    bodies = delivered_bodies(account.maildir)
    assert bodies == expected_bodies(five_messages()), "lost or duplicated"
    assert tmp_is_empty(account.maildir)


async def test_keep_mode_fetches_each_message_once_across_runs(
    tmp_path: Path, server: FakePop3Server
) -> None:
    account = make_account(tmp_path, server, mode="keep")
    first = await fetch_account(account)
    second = await fetch_account(account)
    assert (first.fetched, second.fetched) == (5, 0)
    assert_exactly_once(account)
    assert set(server.retrieved.values()) == {1}
    assert server.uids == [m.uid for m in five_messages()]
    assert server.deleted == []


async def test_pipelining_off_gives_the_same_result(tmp_path: Path) -> None:
    fake = FakePop3Server(messages=five_messages(), pipelining=False)
    await fake.start()
    try:
        account = make_account(tmp_path, fake, mode="delete")
        result = await fetch_account(account)
    finally:
        await fake.stop()
    assert (result.fetched, result.deleted) == (5, 5)
    assert fake.messages == []
    assert_exactly_once(account)


async def test_delete_mode_deletes_only_after_the_copy_is_durable(
    tmp_path: Path, server: FakePop3Server
) -> None:
    account = make_account(tmp_path, server, mode="delete")
    checked: list[str] = []

    def at_dele(uidl: str) -> None:
        # The moment the server sees DELE: the file is in new/ and the journal says so,
        # read through a separate connection (so it is committed, not just buffered).
        key = message_key(account.name, uidl)
        assert any(name.startswith(f"new/{key},") for name in maildir_files(account.maildir))
        db = sqlite3.connect(journal_path(account.state_dir, account.name))
        row = db.execute("SELECT delivered_at FROM messages WHERE uidl = ?", (uidl,)).fetchone()
        db.close()
        assert row is not None and row[0] is not None
        checked.append(uidl)

    server.on_dele = at_dele
    result = await fetch_account(account)
    assert sorted(checked) == sorted(m.uid for m in five_messages())
    assert (result.fetched, result.deleted) == (5, 5)
    assert server.messages == [] and sorted(server.deleted) == sorted(checked)
    assert_exactly_once(account)
    with Journal(journal_path(account.state_dir, account.name)) as journal:
        entries = journal.entries()
    assert all(e.deleted_at is not None and not e.delete_pending for e in entries.values())


@pytest.mark.parametrize("mode", ["keep", "delete"])
@pytest.mark.parametrize("fault", ["drop_before_retr", "drop_inside_retr", "drop_after_retr"])
@pytest.mark.parametrize("at", [1, 2, 3, 4, 5])
async def test_connection_dropped_around_retr(
    tmp_path: Path, server: FakePop3Server, mode: str, fault: str, at: int
) -> None:
    account = make_account(tmp_path, server, mode=mode)
    server.faults = Faults(**{fault: at})  # type: ignore[arg-type]
    with pytest.raises(DROPS):
        await fetch_account(account)
    assert tmp_is_empty(account.maildir), "a partial message was left in tmp/"
    delivered = len(maildir_files(account.maildir))
    # After the at-th body the server closed: the client may or may not have read it all.
    assert delivered in ((at - 1, at) if fault == "drop_after_retr" else (at - 1,))
    assert server.uids == [m.uid for m in five_messages()], "deleted without QUIT"
    server.faults = Faults()
    result = await fetch_account(account)
    assert result.fetched == 5 - delivered
    assert_exactly_once(account)
    # Each message crossed the wire completely once; the cut one at most one more time.
    completed = dict(server.retrieved)
    assert all(count == 1 for uid, count in completed.items() if uid != f"uid-{at}")
    if mode == "delete":
        assert server.messages == [] and result.deleted == 5
    else:
        assert len(server.messages) == 5


class CrashingJournal(Journal):
    """Dies, like a power cut, when the n-th batch of deliveries is to be journaled (the
    messages are already renamed into new/)."""

    def __init__(self, path: Path, crash_at: int) -> None:
        super().__init__(path)
        self.crash_at = crash_at
        self.calls = 0

    def record_delivered_many(
        self, deliveries: Iterable[Delivery], *, now: float, delete: bool
    ) -> None:
        self.calls += 1
        if self.calls >= self.crash_at:
            raise SystemExit("simulated crash between rename and journal")
        super().record_delivered_many(deliveries, now=now, delete=delete)


@pytest.mark.parametrize("mode", ["keep", "delete"])
@pytest.mark.parametrize("batch", [1, 2, 16])
async def test_crash_between_rename_and_journal_does_not_duplicate(
    tmp_path: Path,
    server: FakePop3Server,
    mode: str,
    batch: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transfer, "BATCH", batch)
    account = make_account(tmp_path, server, mode=mode)
    crash_at = 2 if batch < 5 else 1  # five messages: with 16 a batch there is only one
    journal = CrashingJournal(journal_path(account.state_dir, account.name), crash_at)
    destination = MaildirDestination(account.maildir, account.name)
    with pytest.raises(SystemExit):
        await run_session(account, journal=journal, destination=destination)
    journaled = len([e for e in journal.entries().values() if e.delivered])
    journal.close()
    names = list(maildir_files(account.maildir))
    on_disk = [
        m.uid for m in five_messages() if any(message_key("test", m.uid) in n for n in names)
    ]
    assert journaled < len(on_disk), "some messages are in new/ but not in the journal"
    result = await fetch_account(account)
    assert result.fetched == 5 - len(on_disk)
    assert_exactly_once(account)
    # Pipelined RETRs may have crossed the wire before the crash; the ones found on disk
    # were not downloaded again.
    assert all(server.retrieved[uid] == 1 for uid in on_disk)
    if mode == "delete":
        assert server.messages == []


async def test_dele_not_committed_is_resent_without_downloading(
    tmp_path: Path, server: FakePop3Server
) -> None:
    account = make_account(tmp_path, server, mode="delete")
    server.faults = Faults(drop_before_quit_ok=True)
    with pytest.raises(DROPS):
        await fetch_account(account)
    assert len(server.messages) == 5, "nothing may be deleted without QUIT +OK"
    with Journal(journal_path(account.state_dir, account.name)) as journal:
        assert all(entry.delete_pending for entry in journal.entries().values())
    server.faults = Faults()
    result = await fetch_account(account)
    assert (result.fetched, result.deleted) == (0, 5)
    assert set(server.retrieved.values()) == {1}
    assert server.messages == []
    assert_exactly_once(account)


async def test_deletion_committed_but_ok_lost_is_settled(
    tmp_path: Path, server: FakePop3Server
) -> None:
    account = make_account(tmp_path, server, mode="delete")
    server.faults = Faults(commit_then_drop=True)
    with pytest.raises(DROPS):
        await fetch_account(account)
    assert server.messages == []
    server.faults = Faults()
    result = await fetch_account(account)
    assert (result.fetched, result.deleted) == (0, 0)
    with Journal(journal_path(account.state_dir, account.name)) as journal:
        entries = journal.entries()
    assert all(not e.delete_pending and e.deleted_at is not None for e in entries.values())
    assert_exactly_once(account)


@pytest.mark.parametrize("command", ["UIDL", "RETR", "DELE", "QUIT"])
async def test_stalled_server_times_out_and_loses_nothing(
    tmp_path: Path, server: FakePop3Server, command: str
) -> None:
    impatient = make_account(tmp_path, server, mode="delete", timeout=0.5)
    server.faults = Faults(stall_on=command)
    with pytest.raises(FetchTimeoutError):
        await fetch_account(impatient)
    assert len(server.messages) == 5
    server.faults = Faults()
    account = make_account(tmp_path, server, mode="delete")  # same state, patient again
    await fetch_account(account)
    assert server.messages == []
    assert_exactly_once(account)


async def test_local_delivery_failure_aborts_and_keeps_the_server_copy(
    tmp_path: Path, server: FakePop3Server
) -> None:
    account = make_account(tmp_path, server, mode="delete")
    (tmp_path / "Maildir").write_text("not a folder")
    with pytest.raises((FetchError, OSError)):
        await fetch_account(account)
    assert len(server.messages) == 5


@pytest.mark.parametrize("page_cache", ["quiet", "busy"])
async def test_many_faults_in_a_row_then_one_clean_run(
    tmp_path: Path,
    server: FakePop3Server,
    trial_report: list[str],
    page_cache: str,
    request: pytest.FixtureRequest,
) -> None:
    """Every fault, one after the other, then a clean run: lost = 0, duplicated = 0; with
    a quiet page cache (one syncfs a group) and a busy one (fsyncs file by file)."""
    if page_cache == "busy":
        request.getfixturevalue("busy_page_cache")
    account = make_account(tmp_path, server, mode="delete")
    trials = [
        Faults(drop_inside_retr=1),
        Faults(drop_after_retr=2),
        Faults(drop_before_quit_ok=True),
        Faults(drop_before_retr=1),
        Faults(commit_then_drop=True),
    ]
    for faults in trials:
        server.faults = faults
        with contextlib.suppress(*DROPS):
            await fetch_account(account)
    server.faults = Faults()
    await fetch_account(account)
    bodies = delivered_bodies(account.maildir)
    expected = expected_bodies(five_messages())
    lost = len(set(expected) - set(bodies))
    duplicated = len(bodies) - len(set(bodies))
    trial_report.append(
        f"connection faults in a row, delete mode, {page_cache} page cache: "
        f"trials={len(trials)} lost={lost} "
        f"duplicated={duplicated}"
    )
    assert (lost, duplicated) == (0, 0)
    assert server.messages == []
