"""A ``rich`` progress bar per account (messages, bytes, rate, ETA) when on a terminal.

``rich`` is optional until it is a declared dependency: ``rich_progress`` returns None when
it is missing (or stderr is not a terminal), and the fetcher then logs a plain line per
message. It is imported by name at run time so that type checks pass without it.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any, TextIO

__all__ = ["RichProgress", "rich_progress"]


def _rich(module: str) -> Any:
    return importlib.import_module(f"rich.{module}")


class RichProgress:
    """One bar per account; log records are printed above the bars."""

    def __init__(self, console: Any) -> None:
        progress = _rich("progress")
        self.console = console
        self._progress = progress.Progress(
            progress.TextColumn("{task.description}"),
            progress.BarColumn(),
            progress.TextColumn("{task.fields[messages]}"),
            progress.DownloadColumn(),
            progress.TransferSpeedColumn(),
            progress.TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._done: dict[str, tuple[int, int]] = {}

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._progress.stop()

    def log_handler(self) -> logging.Handler:
        handler: logging.Handler = _rich("logging").RichHandler(
            console=self.console, show_path=False, markup=False
        )
        return handler

    def start(self, account: str, messages: int, octets: int) -> None:
        self._done[account] = (0, messages)
        self._tasks[account] = self._progress.add_task(
            account, total=max(octets, 1), messages=f"0/{messages}"
        )

    def advance(self, account: str, octets: int) -> None:
        self._progress.advance(self._tasks[account], octets)

    def message_done(self, account: str) -> None:
        done, total = self._done[account]
        self._done[account] = (done + 1, total)
        self._progress.update(self._tasks[account], messages=f"{done + 1}/{total}")

    def finish(self, account: str) -> None:
        task = self._tasks.get(account)
        if task is not None:
            # LIST sizes are estimates; end the bar where the octets really ended.
            completed = self._progress.tasks[task].completed
            self._progress.update(task, total=max(completed, 1), completed=max(completed, 1))


def rich_progress(stream: TextIO | None = None) -> RichProgress | None:
    """A progress display on ``stream`` (stderr) if it is a terminal and rich is there."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return None
    try:
        console = _rich("console").Console(file=stream)
    except ImportError:
        return None
    return RichProgress(console)
