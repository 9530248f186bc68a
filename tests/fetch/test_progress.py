"""Progress reporting: what the session tells a display, and the rich bar when installed."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from postoffice.fetch.progress import RichProgress, rich_progress
from postoffice.fetch.runner import fetch_account
from postoffice.fetch.session import Options

from .fakeserver import FakePop3Server
from .helpers import five_messages, make_account


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.octets = 0

    def start(self, account: str, messages: int, octets: int) -> None:
        self.calls.append(("start", account, str(messages), str(octets)))

    def advance(self, account: str, octets: int) -> None:
        self.octets += octets

    def message_done(self, account: str) -> None:
        self.calls.append(("done", account))

    def finish(self, account: str) -> None:
        self.calls.append(("finish", account))


async def test_session_reports_messages_and_octets(tmp_path: Path, server: FakePop3Server) -> None:
    recorder = Recorder()
    result = await fetch_account(make_account(tmp_path, server), Options(progress=recorder))
    total = sum(message.size for message in five_messages())
    assert recorder.calls[0] == ("start", "test", "5", str(total))
    assert recorder.calls[1:] == [("done", "test")] * 5 + [("finish", "test")]
    assert recorder.octets == result.octets == total


def test_no_bar_when_not_a_terminal() -> None:
    assert rich_progress(io.StringIO()) is None


async def test_rich_bar(tmp_path: Path, server: FakePop3Server) -> None:
    console_module = pytest.importorskip("rich.console")
    output = io.StringIO()
    console = console_module.Console(file=output, force_terminal=True, width=100)
    bar = RichProgress(console)
    with bar:
        await fetch_account(make_account(tmp_path, server), Options(progress=bar))
    text = output.getvalue()
    assert "test" in text and "5/5" in text
