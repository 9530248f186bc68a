"""Fetching several accounts at once, one lock per account, and the exit code.

Exit codes of ``postoffice fetch`` (also in its ``--help``):

* 0 ``EXIT_FETCHED``: every account worked and at least one message was fetched;
* 1 ``EXIT_NOTHING_NEW``: every account worked and nothing new was there;
* 2 ``EXIT_FAILURE``: at least one account (or one message) failed; others may have
  fetched; also when another fetcher holds an account's lock;
* 3 ``EXIT_CONFIG``: the account file, or the choice of options, is wrong (nothing was
  fetched).

Accounts run concurrently; one failing does not stop the others. The lock is ``flock`` on
``state_dir/ACCOUNT.lock``: two fetchers never run one account at once (the server would
refuse the second with ``[IN-USE]`` anyway, but the journal must not be shared either).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from postoffice.errors import PostofficeError
from postoffice.fetch.config import Account
from postoffice.fetch.delivery import Destination, MaildirDestination
from postoffice.fetch.errors import AccountLockedError
from postoffice.fetch.journal import Journal, journal_path
from postoffice.fetch.session import Options, SessionResult, run_session

if TYPE_CHECKING:
    from postoffice.fetch.importers import ImportedState

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_FETCHED",
    "EXIT_NOTHING_NEW",
    "Outcome",
    "account_lock",
    "exit_code",
    "fetch_account",
    "fetch_all",
    "guarded_fetch",
    "import_state",
    "make_destination",
]

logger = logging.getLogger(__name__)

EXIT_FETCHED = 0
EXIT_NOTHING_NEW = 1
EXIT_FAILURE = 2
EXIT_CONFIG = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    account: str
    result: SessionResult | None
    error: BaseException | None


@contextlib.contextmanager
def account_lock(state_dir: Path, account: str) -> Iterator[None]:
    """Hold ``state_dir/ACCOUNT.lock`` exclusively, or raise ``AccountLockedError``."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / f"{account}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AccountLockedError(
                f"another fetcher is running this account (lock {path})"
            ) from None
        yield
    finally:
        os.close(fd)  # closing releases the flock


def make_destination(account: Account) -> Destination:
    if account.mbox is None and account.forward is None and account.mda is None:
        return MaildirDestination(account.maildir, account.name)
    # Imported here: smtplib, subprocess and tempfile cost start-up time a Maildir never needs.
    from postoffice.fetch.spooled import ForwardDestination, MboxDestination, MdaDestination

    if account.mbox is not None:
        return MboxDestination(account.mbox)
    if account.forward is not None:
        return ForwardDestination(
            account.forward, recipient=account.recipient, timeout=account.timeout
        )
    if account.mda is not None:
        return MdaDestination(account.mda, account=account.name, workdir=account.workdir)
    return MaildirDestination(account.maildir, account.name)


async def fetch_account(account: Account, options: Options | None = None) -> SessionResult:
    """One session for ``account`` under its lock, with its journal and Maildir."""
    options = options or Options()
    readonly = options.dry_run or options.list_only
    with account_lock(account.state_dir, account.name):
        path = journal_path(account.state_dir, account.name)
        journal = None if readonly and not path.exists() else Journal(path)
        try:
            destination = make_destination(account)
            return await run_session(
                account, journal=journal, destination=destination, options=options
            )
        finally:
            if journal is not None:
                journal.close()


def import_state(account: Account, path: Path, now: float) -> ImportedState:
    """Mark the ids another fetcher's state file lists as fetched, under the account lock."""
    from postoffice.fetch.importers import read_state  # only for this rare command

    state = read_state(path, user=account.user, host=account.host)
    with (
        account_lock(account.state_dir, account.name),
        Journal(journal_path(account.state_dir, account.name)) as journal,
    ):
        journal.import_delivered(state.uids, now)
    return state


async def guarded_fetch(account: Account, options: Options) -> Outcome:
    """``fetch_account``, with every error logged and returned instead of raised."""
    try:
        result = await fetch_account(account, options)
    except (PostofficeError, OSError) as error:
        logger.error("%s: %s", account.name, error)
        return Outcome(account=account.name, result=None, error=error)
    except sqlite3.Error as error:
        path = journal_path(account.state_dir, account.name)
        logger.error("%s: the journal %s cannot be used: %s", account.name, path, error)
        return Outcome(account=account.name, result=None, error=error)
    except Exception as error:  # a bug: say so, but let the other accounts finish
        logger.exception("%s: unexpected error", account.name)
        return Outcome(account=account.name, result=None, error=error)
    return Outcome(account=account.name, result=result, error=None)


async def fetch_all(accounts: Iterable[Account], options: Options | None = None) -> list[Outcome]:
    """Fetch every account concurrently; errors are reported per account, not raised."""
    options = options or Options()
    return list(await asyncio.gather(*(guarded_fetch(account, options) for account in accounts)))


def exit_code(outcomes: Iterable[Outcome]) -> int:
    fetched = False
    for outcome in outcomes:
        if outcome.error is not None or outcome.result is None or outcome.result.failed:
            return EXIT_FAILURE
        fetched = fetched or outcome.result.fetched > 0
    return EXIT_FETCHED if fetched else EXIT_NOTHING_NEW
