"""RETR and DELE for one session, with the disk work overlapped with the network.

Theory of operation
-------------------
The session (``session``) plans; this module moves the messages, in the durability order of
the session's docstring: a message is fsynced and named in ``new/``, ``new/`` is
fsynced and the UIDL journaled, and only then is its DELE sent.

Commands go out in a window (``WINDOW`` in flight with RFC 2449 PIPELINING, else one),
refilled in bursts when half of it is answered, so one write carries many commands.

A message received whole (its terminating dot read) joins the *pending* list. Its disk
work is a *group commit*, run in a worker thread while the event loop keeps receiving:

1. every message of the group is written, fsynced and named in ``new/``
   (``Destination.commit_group``: a Maildir makes the whole group durable at once, by one
   ``syncfs`` or by fsyncs from parallel threads that share the filesystem's commits);
2. the names are made durable (``Destination.sync``);
3. the group is journaled in one transaction (``synchronous = FULL``);
4. back on the event loop, its DELEs are queued (delete mode).

For a Maildir, step 2 of a group is the first step of the next one (``commit_group`` first
makes the names committed before it durable, with the same ``syncfs`` as its own files),
so that group is journaled by the next group commit, after that ``syncfs``; the last group
(or one after which nothing is pending yet) has a step 2 of its own.

Only one group commits at a time, so the journal sees one caller at a time. A group starts
as soon as the previous one is done and something is pending, so groups grow by
themselves while the disk is slower than the network and shrink when it is faster (no
timer, no fixed size). Pending messages are held in memory (``delivery.SPILL_OCTETS``
bounds one message), so receiving stops, waiting for the disk, once ``BATCH`` messages or
``BATCH_OCTETS`` octets are pending.

A destination that cannot find afterwards what it already holds (``idempotent`` false:
mbox, MDA, LMTP) commits one message at a time, each journaled before the next commits,
so a crash can duplicate at most one message there.

If the server goes away, the messages already received whole are still committed and
journaled (without DELE); a message cut short is dropped. The group commit is an executor
future, not a task, so whatever it raises (a full disk, a simulated crash in the tests)
surfaces here, in the session's own coroutine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from postoffice.errors import RemoteProtocolError
from postoffice.fetch.config import Account, Mode
from postoffice.fetch.errors import FetchConnectionError, FetchError, FetchTimeoutError
from postoffice.fetch.fingerprint import Fingerprint, HeaderCollector
from postoffice.proto.client_events import (
    NEED_DATA,
    BodyData,
    ClientEvent,
    MultilineEnd,
    MultilineStart,
    Reply,
    Request,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from postoffice.fetch.delivery import Destination, MessageSink
    from postoffice.fetch.journal import Entry, Journal
    from postoffice.fetch.session import Plan, Progress, ServerMessage, SessionResult
    from postoffice.fetch.transport import Pop3Client

__all__ = ["BATCH", "BATCH_OCTETS", "WINDOW", "Transfer"]

WINDOW = 128
"""Commands in flight when pipelining: with half of them still queued at a refill, the
server has work while the event loop decodes a burst of replies (32 were too few)."""
BATCH = 256
"""At most this many messages pending (received whole, not yet durable) at once."""
BATCH_OCTETS = 16 << 20
"""At most about this many octets pending at once."""

_Received = tuple["ServerMessage", "MessageSink", int, Fingerprint | None]
"""A message received whole: its sink (not yet committed), octets and fingerprint."""
_Committed = list[tuple[_Received, str]]
"""Messages committed, with their local names."""


class Transfer:
    """RETR and DELE, pipelined in a window, in the durability order of the module doc."""

    def __init__(
        self,
        client: Pop3Client,
        account: Account,
        journal: Journal,
        destination: Destination,
        log: logging.LoggerAdapter,  # type: ignore[type-arg]
        *,
        clock: Callable[[], float],
        progress: Progress | None,
        pipelining: bool,
        journal_busy: asyncio.Future[Any] | None = None,
    ) -> None:
        """``journal_busy``: a journal call still running in a worker thread (the session's
        record of the listing); nothing else touches the journal until it is done."""
        self.client = client
        self.account = account
        self.journal = journal
        self.destination = destination
        self.log = log
        self.clock = clock
        self.progress = progress
        self.window = WINDOW if pipelining else 1
        # Only a destination that can find what a crash left unjournaled may group-commit.
        self.batch = BATCH if destination.idempotent else 1
        self.todo: deque[tuple[str, ServerMessage]] = deque()
        self.in_flight: deque[tuple[str, ServerMessage]] = deque()
        self.deleted: list[str] = []
        self.sink: MessageSink | None = None
        self.header = HeaderCollector()
        self.pending: list[_Received] = []
        """Received whole, not yet committed and journaled."""
        self.pending_octets = 0
        self.journal_busy = journal_busy
        self.committing: asyncio.Future[tuple[_Committed, _Committed]] | None = None
        """A group commit in a worker thread: what it journaled, and what it committed
        without journaling yet (``unjournaled``)."""
        self.unjournaled: _Committed = []
        """Committed, names perhaps not yet durable, not journaled: the next group commit
        (or a ``sync`` once nothing else is pending) makes them durable and journals them."""
        self._received = 0

    async def _pump(self) -> None:
        """Refill the window (once half of it is answered): one write, many commands."""
        batch: list[Request] = []
        while self.todo and len(self.in_flight) < self.window:
            keyword, message = self.todo.popleft()
            self.in_flight.append((keyword, message))
            batch.append(Request(keyword=keyword, arguments=(str(message.number),)))
        if batch:
            await self.client.send(*batch)

    async def run(self, plan: Plan, result: SessionResult, entries: Mapping[str, Entry]) -> None:
        """Carry out ``plan``; ``entries`` is the journal as the plan was made from it."""
        owed = [
            m.uidl
            for m in plan.delete
            if m.uidl not in entries or not entries[m.uidl].delete_pending
        ]
        if owed:
            # Journal the DELEs as owed before sending them: until QUIT +OK they may not
            # commit, and the next session then sends them again.
            await self._journal_free()
            await asyncio.to_thread(self.journal.mark_delete_pending, owed)
        self.todo.extend(("DELE", message) for message in plan.delete)
        self.todo.extend(("RETR", message) for message in plan.fetch)
        total = len(plan.fetch)
        if self.progress is not None:
            self.progress.start(self.account.name, total, sum(m.size for m in plan.fetch))
        try:
            # The first commands go out before waiting for the journal: the first replies
            # are received (not yet read) meanwhile.
            await self._pump()
            await self._journal_free()
            client = self.client
            half = self.window // 2
            while (
                self.todo
                or self.in_flight
                or self.pending
                or self.committing is not None
                or self.unjournaled
            ):
                self._settle(result)
                if self.todo and len(self.in_flight) <= half:
                    await self._pump()
                if self.in_flight:
                    # The events already parsed are handled without a task switch; the
                    # loop waits only for more octets or for the disk.
                    event = client.parsed_event()
                    if event is NEED_DATA:
                        await client.more_data()
                        continue
                    self._handle(event, result, total)
                    # Wait for the disk while too much is pending (or, for a destination
                    # that is not idempotent, while the one before is still being
                    # delivered).
                    while self.committing is not None and (
                        len(self.pending) >= self.batch or self.pending_octets >= BATCH_OCTETS
                    ):
                        await asyncio.wait((self.committing,))
                        self._settle(result)
                elif self.committing is not None:
                    await asyncio.wait((self.committing,))  # nothing on the wire: the disk
        except (FetchConnectionError, FetchTimeoutError, RemoteProtocolError):
            # The server went away: what arrived whole is still good, keep it (no DELE).
            while self.pending or self.committing is not None or self.unjournaled:
                if self.committing is not None:
                    await asyncio.wait((self.committing,))
                self._settle(result)
            raise
        finally:
            await self._wind_down()

    async def _journal_free(self) -> None:
        """Until the journal call the session left running is done (raising its error)."""
        busy, self.journal_busy = self.journal_busy, None
        if busy is not None:
            await busy

    async def _wind_down(self) -> None:
        """After an error: let a running group commit finish, drop what is not durable."""
        busy, self.journal_busy = self.journal_busy, None
        if busy is not None:
            await asyncio.wait((busy,))
            if not busy.cancelled():
                busy.exception()  # already raised, or about to be: seen here
        if self.committing is not None:
            await asyncio.wait((self.committing,))
            if not self.committing.cancelled():
                self.committing.exception()  # already raised, or about to be: seen here
            self.committing = None
        # Names committed but not journaled (after an error): made durable, to be found by
        # name next time, or taken back. Nothing left to do after a clean run.
        self.unjournaled = []
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.destination.sync)
        for _, sink, _, _ in self.pending:
            sink.abort()
        self.pending = []
        if self.sink is not None:
            self.sink.abort()  # never journaled: the next session fetches it again
            self.sink = None

    def _handle(self, event: ClientEvent, result: SessionResult, total: int) -> None:
        keyword, message = self.in_flight[0]
        if isinstance(event, BodyData):
            assert self.sink is not None
            self.sink.write(event.data)
            if self.progress is not None:
                self.progress.advance(self.account.name, len(event.data))
            self.header.feed(event.data)
        elif isinstance(event, MultilineEnd):
            self.in_flight.popleft()
            self._received_whole(message, event.octets, total)
        elif isinstance(event, MultilineStart):
            self.sink = self.destination.begin(message.uidl)
            self.header = HeaderCollector()
        elif isinstance(event, Reply):
            self.in_flight.popleft()
            if keyword == "DELE":
                if event.ok:
                    self.deleted.append(message.uidl)
                else:
                    self.log.warning("DELE of %s refused: %s", message.uidl, event.text)
            else:
                self.log.warning("RETR of %s refused: %s", message.uidl, event.text)
                result.failed += 1
        else:
            raise RemoteProtocolError(f"unexpected {type(event).__name__} during RETR/DELE")

    def _received_whole(self, message: ServerMessage, octets: int, total: int) -> None:
        sink, self.sink = self.sink, None
        assert sink is not None
        if octets != message.size:
            self.log.warning(
                "message %s: LIST said %d octets, RETR sent %d; kept (the end marker arrived)",
                message.uidl,
                message.size,
                octets,
            )
        self.pending.append((message, sink, octets, self.header.fingerprint()))
        self.pending_octets += octets
        self._received += 1
        if self.progress is not None:
            self.progress.message_done(self.account.name)
        # With a progress bar, a line per message would only push it around.
        self.log.log(
            logging.DEBUG if self.progress is not None else logging.INFO,
            "%d/%d: %s, %d octets",
            self._received,
            total,
            message.uidl,
            octets,
        )

    def _settle(self, result: SessionResult) -> None:
        """Account for a finished group commit (raising its error), start the next one."""
        committing = self.committing
        if committing is not None:
            if not committing.done():
                return
            self.committing = None
            # Raises what the group commit raised.
            journaled, self.unjournaled = committing.result()
            result.fetched += len(journaled)
            result.octets += sum(entry[2] for entry, _ in journaled)
            if self.account.mode is Mode.DELETE:
                self.todo.extendleft(("DELE", entry[0]) for entry, _ in reversed(journaled))
        loop = asyncio.get_running_loop()
        earlier, self.unjournaled = self.unjournaled, []
        if self.pending:
            batch = self.pending[: self.batch]
            del self.pending[: self.batch]
            self.pending_octets -= sum(entry[2] for entry in batch)
            self.committing = loop.run_in_executor(None, self._make_durable, batch, earlier)
        elif earlier:
            self.committing = loop.run_in_executor(None, self._journal_synced, earlier)

    def _make_durable(
        self, batch: list[_Received], earlier: _Committed
    ) -> tuple[_Committed, _Committed]:
        """In a worker thread: commit the group (making the ``earlier`` names durable),
        journal ``earlier``; for a destination that is not idempotent, also sync and
        journal the group. Returns what was journaled and what is left to journal."""
        try:
            outcomes = self.destination.commit_group([entry[1] for entry in batch])
        except OSError as error:
            raise FetchError(f"cannot deliver: {error}") from error
        if self.destination.idempotent:
            self._journal(earlier)  # durable now, even if this group failed
        for outcome in outcomes:
            if isinstance(outcome, FetchError):
                raise outcome
            if isinstance(outcome, Exception):
                raise FetchError(f"cannot deliver: {outcome}") from outcome
        names = [outcome for outcome in outcomes if isinstance(outcome, str)]
        committed = list(zip(batch, names, strict=True))
        if self.destination.idempotent:
            return earlier, committed
        # One at a time, journaled before the next is delivered: at most one duplicate.
        return self._journal_synced(earlier + committed)

    def _journal_synced(self, committed: _Committed) -> tuple[_Committed, _Committed]:
        """In a worker thread: make the names of ``committed`` durable, then journal them."""
        try:
            self.destination.sync()
        except OSError as error:
            raise FetchError(f"cannot deliver: {error}") from error
        self._journal(committed)
        return committed, []

    def _journal(self, committed: _Committed) -> None:
        if committed:
            self.journal.record_delivered_many(
                [
                    (message.uidl, name, octets, print_)
                    for (message, _, octets, print_), name in committed
                ],
                now=self.clock(),
                delete=self.account.mode is Mode.DELETE,
            )
