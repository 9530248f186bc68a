"""``postoffice fetch --daemon``: every account polled on its own schedule until stopped.

Each account runs a loop: one session (under the account lock, like a single run), then a
pause, then the next. The pause is ``every`` with ±10 % jitter, so that many fetchers
started together do not hit a server in step; never shorter than the server's RFC 2449
LOGIN-DELAY; after a failure it doubles with each failure in a row (2, 4, 8 times ``every``,
at most an hour, or ``every`` if that is longer), and the first success resets it.

Stopping (SIGTERM or Ctrl-C in the CLI sets ``stop``) ends the pauses at once; a session in
progress is allowed to finish, since every step of it is bounded by the account's
``timeout``, and a session cut short would lose nothing anyway (see ``session``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from postoffice.fetch.config import Account
from postoffice.fetch.runner import Outcome, guarded_fetch
from postoffice.fetch.session import Options

__all__ = ["MAX_BACKOFF", "Schedule", "run_daemon"]

logger = logging.getLogger(__name__)

MAX_BACKOFF = 3600.0
JITTER = 0.1

Pause = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class Schedule:
    """When the next session of one account is due."""

    every: float
    failures: int = 0

    def next_pause(self, outcome: Outcome, rng: random.Random) -> float:
        if outcome.error is None:
            self.failures = 0
            pause = self.every
        else:
            self.failures += 1
            pause = min(self.every * 2**self.failures, max(MAX_BACKOFF, self.every))
        pause *= 1 + rng.uniform(-JITTER, JITTER)
        login_delay = outcome.result.login_delay if outcome.result is not None else 0.0
        return max(pause, login_delay)


async def run_daemon(
    accounts: Iterable[Account],
    options: Options,
    *,
    stop: asyncio.Event,
    pause: Pause | None = None,
    rng: random.Random | None = None,
) -> None:
    """Poll every account until ``stop`` is set. ``pause`` waits between sessions (tests
    pass their own); by default it waits for the delay or for ``stop``."""
    chance = rng or random.Random()

    async def wait(delay: float) -> None:
        try:
            async with asyncio.timeout(delay):
                await stop.wait()
        except TimeoutError:
            pass

    async def poll(account: Account) -> None:
        schedule = Schedule(every=account.every)
        while not stop.is_set():
            outcome = await guarded_fetch(account, options)
            delay = schedule.next_pause(outcome, chance)
            if stop.is_set():
                return
            logger.info("%s: next session in %.0fs", account.name, delay)
            await (pause or wait)(delay)

    async with asyncio.TaskGroup() as group:
        for account in accounts:
            group.create_task(poll(account))
