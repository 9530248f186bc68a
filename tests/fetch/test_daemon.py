"""``--daemon``: schedules with jitter, backoff and LOGIN-DELAY; stopping; SIGTERM."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from postoffice.fetch.daemon import MAX_BACKOFF, Schedule, run_daemon
from postoffice.fetch.runner import Outcome
from postoffice.fetch.session import Options, SessionResult

from .fakeserver import FakeMessage, FakePop3Server
from .helpers import five_messages, maildir_files, make_account

OK = Outcome(account="a", result=SessionResult(account="a"), error=None)
FAILED = Outcome(account="a", result=None, error=OSError("down"))


def test_schedule_jitters_around_every() -> None:
    rng = random.Random(1)
    pauses = [Schedule(every=300).next_pause(OK, rng) for _ in range(200)]
    assert 270 <= min(pauses) < 285 and 315 < max(pauses) <= 330


def test_schedule_backs_off_and_resets() -> None:
    rng = random.Random(1)
    schedule = Schedule(every=60)
    pauses = [schedule.next_pause(FAILED, rng) for _ in range(8)]
    for pause, factor in zip(pauses, [2, 4, 8, 16], strict=False):
        assert 0.9 * factor * 60 <= pause <= 1.1 * factor * 60
    assert max(pauses) <= MAX_BACKOFF * 1.1
    assert 54 <= schedule.next_pause(OK, rng) <= 66


def test_schedule_respects_login_delay() -> None:
    slow = Outcome(account="a", result=SessionResult(account="a", login_delay=900), error=None)
    assert Schedule(every=60).next_pause(slow, random.Random(1)) == 900


@pytest.fixture
async def server() -> FakePop3Server:
    fake = FakePop3Server(messages=five_messages(), login_delay=120)
    await fake.start()
    return fake


async def test_daemon_polls_until_stopped(tmp_path: Path, server: FakePop3Server) -> None:
    account = make_account(tmp_path, server, every="1m")
    stop = asyncio.Event()
    pauses: list[float] = []

    async def pause(delay: float) -> None:
        pauses.append(delay)
        server.messages.append(FakeMessage(f"late-{len(pauses)}", b"Subject: late\r\n\r\nx\r\n"))
        if len(pauses) == 3:
            stop.set()

    try:
        await run_daemon([account], Options(), stop=stop, pause=pause, rng=random.Random(2))
    finally:
        await server.stop()
    assert server.sessions == 3
    assert all(delay >= 120 for delay in pauses), "LOGIN-DELAY 120 beats every = 1m"
    assert len(maildir_files(account.maildir)) == 7  # five, then one per later session


async def test_daemon_backs_off_on_failure(tmp_path: Path) -> None:
    account = make_account(tmp_path, every="1m")  # port 1: connection refused
    stop = asyncio.Event()
    pauses: list[float] = []

    async def pause(delay: float) -> None:
        pauses.append(delay)
        if len(pauses) == 3:
            stop.set()

    await run_daemon([account], Options(), stop=stop, pause=pause, rng=random.Random(3))
    for delay, factor in zip(pauses, [2, 4, 8], strict=True):
        assert 0.9 * factor * 60 <= delay <= 1.1 * factor * 60


def test_sigterm_stops_the_daemon(tmp_path: Path, threaded_server: FakePop3Server) -> None:
    (tmp_path / "pw").write_text("secret\n")
    config = tmp_path / "fetch.toml"
    config.write_text(
        f'[accounts.a]\nhost = "127.0.0.1"\nport = {threaded_server.port}\ntls = "none"\n'
        f'user = "alice"\npassword_command = "cat pw"\nmaildir = "Maildir"\n'
        f'state_dir = "state"\nevery = "1h"\n'
    )
    code = "import sys; from postoffice.cli import main; sys.exit(main())"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "fetch", "--daemon", "--config", str(config)],
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120  # a loaded CI machine starts Python slowly
        while len(maildir_files(tmp_path / "Maildir")) < 5:  # the first session's work
            assert time.monotonic() < deadline, "the daemon fetched nothing"
            assert process.poll() is None
            time.sleep(0.05)  # waiting on another process; nothing to await
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
