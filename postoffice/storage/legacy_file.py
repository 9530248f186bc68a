"""Reading another server's UIDL state file (Dovecot's, Courier's) from a Maildir."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from postoffice.errors import StorageError

T = TypeVar("T")


def read_state_file(path: Path, parse: Callable[[bytes], T]) -> T | None:
    """``parse`` of the file's bytes; None if there is no such file.

    An unreadable or malformed file raises ``StorageError``: serving other UIDLs instead
    would make every client download everything again.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc
    try:
        return parse(data)
    except ValueError as exc:
        raise StorageError(f"{path}: {exc}") from exc
