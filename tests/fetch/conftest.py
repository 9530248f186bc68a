"""Fixtures of the fetcher tests."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from postoffice.fetch import delivery

from .fakeserver import FakePop3Server
from .helpers import five_messages


@pytest.fixture
async def server() -> AsyncIterator[FakePop3Server]:
    """The fake server with five messages, on the test's event loop."""
    fake = FakePop3Server(messages=five_messages())
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def threaded_server() -> Iterator[FakePop3Server]:
    """The fake server on its own event loop, for code that calls ``asyncio.run`` or for
    other programs (fetchmail, getmail, mpop) to talk to."""
    fake = FakePop3Server(messages=five_messages())
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    """The ``fetch`` command tunes the collector for a process of its own; a test that
    runs it in this one gets the collector back as it was."""
    threshold = gc.get_threshold()
    yield
    gc.set_threshold(*threshold)
    gc.unfreeze()


def fake_meminfo(folder: Path, dirty_kib: int) -> Path:
    """A ``/proc/meminfo`` whose Dirty and Writeback add up to ``dirty_kib``."""
    path = folder / f"meminfo-{dirty_kib}"
    path.write_text(
        f"MemTotal:       24576000 kB\nDirty:          {dirty_kib} kB\n"
        "Writeback:             0 kB\nWritebackTmp:          0 kB\n"
    )
    return path


BUSY_DIRTY_KIB = 2 << 20
"""2 GiB of other programs' data waiting to be written back."""


@pytest.fixture(autouse=True)
def quiet_page_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Maildir group commit uses one syncfs unless other programs have much data waiting
    to be written (``delivery._others_dirty``): so that the tests do not depend on what
    else the machine writes, they see a quiet page cache unless they ask for a busy one
    (``busy_page_cache``)."""
    monkeypatch.setattr(delivery, "_MEMINFO", str(fake_meminfo(tmp_path_factory.getbasetemp(), 0)))


@pytest.fixture
def busy_page_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Other programs' gigabytes wait to be written back: group commits fsync file by file.
    Returns the fake ``/proc/meminfo`` (for a fetcher run in another process)."""
    path = fake_meminfo(tmp_path_factory.getbasetemp(), BUSY_DIRTY_KIB)
    monkeypatch.setattr(delivery, "_MEMINFO", str(path))
    return path


TRIAL_REPORTS: list[str] = []


@pytest.fixture
def trial_report() -> list[str]:
    """Lines for the fault-injection summary printed at the end of the test run."""
    return TRIAL_REPORTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TRIAL_REPORTS:
        terminalreporter.section("fetch fault-injection trials")
        for line in TRIAL_REPORTS:
            terminalreporter.write_line(line)
