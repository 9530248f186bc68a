"""``kill -9`` of a real ``postoffice fetch`` process at many points, then one clean run.

The fake server kills the fetcher with SIGKILL when it receives the n-th command of a
session (n varies per trial, plus a few milliseconds of seeded jitter, so the kill lands
while the fetcher streams, fsyncs, renames, journals or waits). Two new messages arrive
before each trial. After every trial a clean run must leave exactly one local copy of each
message, and the server in the state the mode promises.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import fake_meminfo
from .fakeserver import FakeMessage, FakePop3Server
from .helpers import maildir_files

TRIALS = 12


@pytest.fixture
def server_and_loop() -> Iterator[tuple[FakePop3Server, asyncio.AbstractEventLoop]]:
    fake = FakePop3Server(messages=[])
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
    try:
        yield fake, loop
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def message(number: int) -> FakeMessage:
    body = b"".join(b"line %d of message %d\r\n" % (i, number) for i in range(400))
    return FakeMessage(f"m{number}", b"Subject: %d\r\n\r\n" % number + body)


def fetch_command(config: Path, meminfo: Path | None = None) -> list[str]:
    """``postoffice fetch``; with ``meminfo``, reading that file for ``/proc/meminfo``."""
    code = "import sys; from postoffice.cli import main; sys.exit(main())"
    if meminfo is not None:
        code = (
            f"from postoffice.fetch import delivery; delivery._MEMINFO = {str(meminfo)!r}; {code}"
        )
    return [sys.executable, "-c", code, "fetch", "-q", "--config", str(config)]


@pytest.mark.parametrize("page_cache", ["quiet", "busy"])
@pytest.mark.parametrize("mode", ["delete", "keep"])
def test_kill_9_at_many_points(
    tmp_path: Path,
    server_and_loop: tuple[FakePop3Server, asyncio.AbstractEventLoop],
    mode: str,
    page_cache: str,
    trial_report: list[str],
    request: pytest.FixtureRequest,
) -> None:
    """``busy``: other programs have gigabytes waiting to be written back, so every group
    is fsynced file by file instead of by one syncfs."""
    server, loop = server_and_loop
    meminfo = (
        request.getfixturevalue("busy_page_cache")
        if page_cache == "busy"
        else fake_meminfo(tmp_path, dirty_kib=0)
    )
    (tmp_path / "pw").write_text("secret\n")
    config = tmp_path / "fetch.toml"
    config.write_text(
        f"""
[accounts.a]
host = "127.0.0.1"
port = {server.port}
tls = "none"
user = "alice"
password_command = "cat pw"
mode = "{mode}"
maildir = "Maildir"
state_dir = "state"
timeout = 60
"""
    )
    rng = random.Random(5)
    running: dict[str, subprocess.Popen[bytes]] = {}  # the fetcher, seen by the server thread
    killed = 0
    next_number = 0

    def add_messages() -> None:
        nonlocal next_number
        for _ in range(2):
            next_number += 1
            server.messages.append(message(next_number))

    for trial in range(TRIALS):
        asyncio.run_coroutine_threadsafe(_call(add_messages), loop).result(10)
        kill_at = 1 + trial % 9  # UIDL, LIST, RETRs, DELEs, QUIT: each reached in turn
        jitter = rng.uniform(0, 0.004)
        seen = 0

        def on_line(_line: bytes, kill_at: int = kill_at, jitter: float = jitter) -> None:
            nonlocal seen, killed
            seen += 1
            fetcher = running.get("fetcher")
            if seen == kill_at and fetcher is not None:
                time.sleep(jitter)  # let the fetcher run on a little: vary the kill point
                fetcher.send_signal(signal.SIGKILL)  # a no-op once it has been reaped
                killed += 1

        server.on_line = on_line
        process = subprocess.Popen(fetch_command(config, meminfo), cwd=tmp_path)
        running["fetcher"] = process
        process.wait(180)
        running.clear()
        server.on_line = None
    clean = subprocess.run(fetch_command(config, meminfo), cwd=tmp_path, timeout=180, check=False)
    assert clean.returncode in (0, 1)
    expected = sorted(message(n).data.replace(b"\r\n", b"\n") for n in range(1, next_number + 1))
    bodies = sorted(maildir_files(tmp_path / "Maildir").values())
    lost = len(set(expected) - set(bodies))
    duplicated = len(bodies) - len(set(bodies))
    trial_report.append(
        f"kill -9, {mode} mode, {page_cache} page cache: trials={TRIALS} killed={killed} "
        f"lost={lost} duplicated={duplicated}"
    )
    assert (lost, duplicated) == (0, 0)
    assert bodies == expected
    assert killed >= TRIALS // 2, "most trials should have killed the fetcher mid-session"
    assert os.listdir(tmp_path / "Maildir" / "tmp") == []
    if mode == "delete":
        assert server.messages == []
    else:
        assert len(server.messages) == next_number


async def _call(function: object) -> None:
    assert callable(function)
    function()
