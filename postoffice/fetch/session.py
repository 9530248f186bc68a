"""One fetch session for one account: list, download, journal, delete, quit.

Theory of operation
-------------------
RFC 1939 §6 deletes nothing until QUIT is answered ``+OK``, and a UIDL names a message
for good (§7). So a DELE is cheap to repeat and all the risk is local. The order, for
every message, is:

1. RETR streamed into the destination's ``tmp/``; accepted only after the terminating
   dot (a dropped connection aborts it and leaves nothing); a size different from LIST
   is logged but the message is kept, since the dot proves it is complete;
2. fsync the file, name it in ``new/``, fsync ``new/`` (``delivery``);
3. journal the UIDL as delivered, durably (``journal``, SQLite ``synchronous = FULL``);
4. only then DELE it (delete mode, or keep mode past ``delete_after_days``);
5. at the end QUIT, and only a ``+OK`` marks the DELEs as committed in the journal.

Steps 2 and 3 are group commits, run in worker threads while the next messages arrive
(``transfer``): the messages received whole so far are made durable at once and named,
then their names are made durable (in a Maildir by the next group's ``syncfs``), then one
journal transaction; the order within each message is unchanged. If the server goes
away, the messages already received whole are still committed and journaled (without
DELE).

A crash or a dropped connection anywhere leaves one of: a tmp file (removed at the next
start), a file in ``new/`` not yet journaled (found by its name, derived from (account,
UIDL), and journaled at the next start instead of downloaded), or DELEs not committed
(re-sent at the next session, without downloading). None of them loses or duplicates.

At start the session reconciles before planning: every listed UIDL is recorded with its
first-seen time, delivered copies found on disk are adopted, and DELEs the server did
commit (their UIDL is gone) are settled. With PIPELINING (RFC 2449 §6.6) UIDL and LIST go
out together and RETR/DELE go out in a window; without it, one command at a time.

What needs no server overlaps the waits for it: while the password command runs and the
server greets, answers CAPA, the login and the listing, worker threads read the journal,
prepare the destination and import the SASL machines; the listing is recorded while the
first RETRs are under way (the transfer journals nothing before that record is done).
The journal is still used by one thread at a time, each call awaited before the next.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from postoffice.errors import RemoteProtocolError
from postoffice.fetch.auth import login, preload_sasl, read_password
from postoffice.fetch.config import Account, Mode, Oversize
from postoffice.fetch.delivery import Destination
from postoffice.fetch.errors import (
    ServerRefusedError,
)
from postoffice.fetch.fingerprint import (
    fingerprint_ids,
    recover_renumbered,
    renumbered,
)
from postoffice.fetch.journal import Entry, Journal
from postoffice.fetch.transfer import WINDOW, Transfer
from postoffice.fetch.transport import Pop3Client, connect
from postoffice.proto.client_events import (
    Reply,
    Request,
)
from postoffice.proto.listings import (
    Capabilities,
    parse_capabilities,
    parse_scan_listing,
    parse_uidl_listing,
)

__all__ = [
    "Options",
    "Plan",
    "Progress",
    "ServerMessage",
    "SessionResult",
    "make_plan",
    "run_session",
]

logger = logging.getLogger(__name__)

ADOPTED = "(adopted)"  # the local name journaled for an adopted message
DAY = 86400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerMessage:
    number: int
    uidl: str
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    dry_run: bool = False
    list_only: bool = False
    adopt: bool = False
    """Record every new message as already fetched, without downloading it (after a
    server migration changed the unique ids, or when switching from another fetcher)."""
    clock: Callable[[], float] = time.time
    progress: Progress | None = None
    """Told of every message and octet received (the CLI's progress bar)."""


class Progress(Protocol):
    """What a progress display is told; calls come from the event loop, in order."""

    def start(self, account: str, messages: int, octets: int) -> None: ...

    def advance(self, account: str, octets: int) -> None: ...

    def message_done(self, account: str) -> None: ...

    def finish(self, account: str) -> None: ...


@dataclass(slots=True, kw_only=True)
class Plan:
    fetch: list[ServerMessage] = field(default_factory=list)
    delete: list[ServerMessage] = field(default_factory=list)
    """DELE without downloading: already delivered, expired, or oversize to delete."""
    skip: list[ServerMessage] = field(default_factory=list)
    """Oversize, left on the server."""
    later: list[ServerMessage] = field(default_factory=list)
    """New messages left for a later session (``max_messages_per_session``)."""

    def statuses(self) -> dict[int, str]:
        """Message number to "new", "too big" or "to delete"; others were fetched before."""
        status: dict[int, str] = {}
        for messages, word in (
            (self.fetch, "new"),
            (self.later, "new"),
            (self.skip, "too big"),
            (self.delete, "to delete"),
        ):
            status.update((message.number, word) for message in messages)
        return status


@dataclass(slots=True, kw_only=True)
class SessionResult:
    account: str
    listed: int = 0
    fetched: int = 0
    octets: int = 0
    deleted: int = 0
    skipped: int = 0
    failed: int = 0
    deferred: int = 0
    adopted: int = 0
    login_delay: float = 0.0
    """RFC 2449 §6.5 LOGIN-DELAY: the server's minimum seconds between logins."""
    # Out of the repr: one message each. asyncio.run formats the repr of the task that
    # returns this (restoring its SIGINT handler), which took tens of milliseconds.
    listing: list[ServerMessage] = field(default_factory=list, repr=False)
    plan: Plan | None = field(default=None, repr=False)


class _AccountLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: object, kwargs: object) -> tuple[str, object]:  # type: ignore[override]
        assert self.extra is not None
        return f"{self.extra['account']}: {msg}", kwargs


def make_plan(
    account: Account, listing: list[ServerMessage], entries: Mapping[str, Entry], now: float
) -> Plan:
    """What this session should do with each listed message."""
    plan = Plan()
    expiry = None
    if account.mode is Mode.KEEP and account.delete_after_days is not None:
        expiry = now - account.delete_after_days * DAY
    for message in listing:
        entry = entries.get(message.uidl)
        if entry is not None and entry.delivered:
            expired = expiry is not None and entry.first_seen <= expiry
            if entry.delete_pending or account.mode is Mode.DELETE or expired:
                plan.delete.append(message)
        elif entry is not None and entry.delete_pending:
            plan.delete.append(message)  # oversize, deleted unread
        elif account.max_message_size is not None and message.size > account.max_message_size:
            if account.oversize is Oversize.DELETE:
                plan.delete.append(message)
            else:
                plan.skip.append(message)
        elif (
            account.max_messages_per_session is not None
            and len(plan.fetch) >= account.max_messages_per_session
        ):
            plan.later.append(message)
        else:
            plan.fetch.append(message)
    return plan


async def _capabilities(client: Pop3Client) -> Capabilities:
    await client.send(Request(keyword="CAPA"))
    body = await client.collect()
    return Capabilities() if isinstance(body, Reply) else parse_capabilities(body)


async def _listing(client: Pop3Client, pipelining: bool, account: Account) -> list[ServerMessage]:
    uidl, scan = Request(keyword="UIDL"), Request(keyword="LIST")
    if pipelining:
        await client.send(uidl, scan)
        uidl_body, scan_body = await client.collect(), await client.collect()
    else:
        await client.send(uidl)
        uidl_body = await client.collect()
        await client.send(scan)
        scan_body = await client.collect()
    if isinstance(scan_body, Reply):
        raise ServerRefusedError(f"LIST failed: {scan_body.text}")
    sizes = parse_scan_listing(scan_body)
    if isinstance(uidl_body, Reply):
        if not account.fingerprint_without_uidl:
            raise ServerRefusedError(
                f"the server does not support UIDL ({uidl_body.text}); without unique ids "
                f"postoffice cannot tell fetched messages from new ones (set "
                f'without_uidl = "fingerprint" to tell them apart by their headers)'
            )
        window = WINDOW if pipelining else 1
        uids = await fingerprint_ids(client, sorted(sizes), window=window)
    else:
        uids = parse_uidl_listing(uidl_body)
    if set(uids) != set(sizes):
        raise RemoteProtocolError("UIDL and LIST list different message numbers")
    return [ServerMessage(number=n, uidl=uids[n], size=sizes[n]) for n in sorted(uids)]


async def run_session(
    account: Account,
    *,
    journal: Journal | None,
    destination: Destination,
    options: Options | None = None,
) -> SessionResult:
    """Fetch ``account`` once. ``journal`` may be None only for a dry run or a listing."""
    options = options or Options()
    log = _AccountLog(logger, {"account": account.name})
    result = SessionResult(account=account.name)
    readonly = options.dry_run or options.list_only
    if journal is None and not readonly:
        raise ValueError("a journal is needed unless nothing is changed")
    loop = asyncio.get_running_loop()
    # What needs no server is done in worker threads while the password command runs and
    # the server answers: reading the journal, preparing the destination, importing the
    # SASL machines. The journal is used by one thread at a time: ``journal_busy`` is the
    # call in progress, awaited before the next one starts.
    local_view = loop.run_in_executor(None, _local_view, journal, destination, readonly)
    journal_busy: asyncio.Future[Any] | None = local_view
    sasl_ready = preload_sasl(account)
    client: Pop3Client | None = None
    try:
        password = await read_password(account)
        log.debug("connecting to %s:%d (%s)", account.host, account.port, account.tls.value)
        client = await connect(account)
        capabilities = await _capabilities(client)
        assert client.greeted_with is not None
        if sasl_ready is not None:
            await sasl_ready
        method = await login(client, account, password, capabilities, client.greeted_with)
        log.debug("logged in as %r with %s", account.user, method)
        if account.mode is Mode.KEEP and capabilities.arguments("EXPIRE")[:1] == ("0",):
            log.warning("the server announces EXPIRE 0: it deletes messages once retrieved")
        pipelining = "PIPELINING" in capabilities
        result.login_delay = _login_delay(capabilities)
        listing = await _listing(client, pipelining, account)
        result.listing = listing
        result.listed = len(listing)
        now = options.clock()
        entries, prepared = await local_view
        journal_busy = None
        if journal is not None:
            suspect = renumbered(listing, entries)  # before this listing ages the old ids
            if not readonly:
                journal_busy = loop.run_in_executor(
                    None,
                    functools.partial(
                        journal.record_listing, [m.uidl for m in listing], now, complete=True
                    ),
                )
                if suspect:
                    await journal_busy
                    journal_busy = None
                    window = WINDOW if pipelining else 1
                    await recover_renumbered(
                        client, listing, journal, window=window, now=now, log=log
                    )
                    entries = await asyncio.to_thread(journal.entries)
            elif suspect:
                log.warning("none of the server's unique ids is known: were they renumbered?")
        undelivered = [m.uidl for m in listing if not _delivered(entries, m.uidl)]
        if undelivered and not readonly:
            if prepared is not None:
                raise prepared
            # The folder is read while the journal records the listing.
            found = await asyncio.to_thread(destination.find_delivered, undelivered)
            if found and journal is not None:
                log.warning("%d delivered in an interrupted session; journaling them", len(found))
                if journal_busy is not None:
                    await journal_busy
                    journal_busy = None
                await asyncio.to_thread(journal.adopt, found, options.clock())
                entries = await asyncio.to_thread(journal.entries)
        plan = make_plan(account, listing, entries, now)
        result.plan = plan
        result.skipped = len(plan.skip)
        result.deferred = len(plan.later)
        for message in plan.skip:
            log.warning(
                "message %s is %d octets, over max_message_size; left on the server",
                message.uidl,
                message.size,
            )
        deleted: list[str] = []
        if readonly:
            log.info(
                "%d messages: %d new, %d to delete, %d too big%s",
                len(listing),
                len(plan.fetch) + len(plan.later),
                len(plan.delete),
                len(plan.skip),
                " (dry run)" if options.dry_run else "",
            )
        elif options.adopt:
            assert journal is not None
            if journal_busy is not None:
                await journal_busy
                journal_busy = None
            adopted = plan.fetch + plan.later + plan.skip
            await asyncio.to_thread(
                journal.record_delivered_many,
                [(message.uidl, ADOPTED, message.size, None) for message in adopted],
                now=options.clock(),
                delete=False,
            )
            result.adopted = len(adopted)
            log.info("%d messages adopted as already fetched", len(adopted))
            if account.mode is Mode.DELETE and adopted:
                log.warning("delete mode: the next run deletes them from the server unread")
        else:
            assert journal is not None
            transfer = Transfer(
                client,
                account,
                journal,
                destination,
                log,
                clock=options.clock,
                progress=options.progress,
                pipelining=pipelining,
                journal_busy=journal_busy,  # the transfer waits for it before journaling
            )
            journal_busy = None
            await transfer.run(plan, result, entries)
            deleted = transfer.deleted
        log.debug("sending QUIT")
        reply = await client.command(Request(keyword="QUIT"))
        log.debug("QUIT answered %s", "+OK" if reply.ok else "-ERR")
        if not readonly:
            assert journal is not None
            if reply.ok:
                # RFC 1939 §6: +OK to QUIT means the deletions are done.
                await asyncio.to_thread(journal.record_deleted, deleted, options.clock())
                result.deleted = len(deleted)
            elif deleted:
                log.warning("QUIT answered -ERR (%s); deletions will be retried", reply.text)
                result.failed += 1
    finally:
        # No worker thread may still use the journal when the caller closes it.
        for pending in (journal_busy, sasl_ready):
            if pending is not None:
                await asyncio.wait((pending,))
                if not pending.cancelled():
                    pending.exception()  # seen here: the session's own error is raised
        if client is not None:
            await client.close()
        if options.progress is not None:
            options.progress.finish(account.name)
    log.info(
        "%d fetched (%d octets), %d deleted, %d left new, %d skipped",
        result.fetched,
        result.octets,
        result.deleted,
        result.deferred,
        result.skipped,
    )
    return result


def _local_view(
    journal: Journal | None, destination: Destination, readonly: bool
) -> tuple[dict[str, Entry], OSError | None]:
    """In a worker thread, before the server is asked: the journal's entries, and the
    destination prepared (or why it could not be: raised only if something is to be
    delivered)."""
    entries = journal.entries() if journal is not None else {}
    if readonly:
        return entries, None
    try:
        destination.prepare()
    except OSError as error:
        return entries, error
    return entries, None


def _login_delay(capabilities: Capabilities) -> float:
    arguments = capabilities.arguments("LOGIN-DELAY")
    return float(arguments[0]) if arguments and arguments[0].isdigit() else 0.0


def _delivered(entries: Mapping[str, Entry], uidl: str) -> bool:
    entry = entries.get(uidl)
    return entry is not None and entry.delivered
