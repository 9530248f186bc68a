"""Building accounts for a fake server, and reading what landed in the Maildir."""

from __future__ import annotations

import os
from pathlib import Path

from postoffice.fetch.config import Account, parse_fetch_config

from .fakeserver import FakeMessage, FakePop3Server


def five_messages() -> list[FakeMessage]:
    return [
        FakeMessage(f"uid-{n}", f"Subject: message {n}\r\n\r\nbody {n}\r\n.dot line\r\n".encode())
        for n in range(1, 6)
    ]


def big_message(uid: str, octets: int) -> FakeMessage:
    line = b"x" * 998 + b"\r\n"
    return FakeMessage(uid, b"Subject: big\r\n\r\n" + line * (octets // len(line)))


def make_account(root: Path, server: FakePop3Server | None = None, **keys: object) -> Account:
    """An account in ``root`` for ``server`` (cleartext on loopback unless keys say else)."""
    (root / "pw").write_text((server.password if server else "secret") + "\n")
    table: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.port if server else 1,
        "tls": "none",
        "user": server.user if server else "alice",
        "password_command": "cat pw",
        "maildir": "Maildir",
        "state_dir": "state",
        "timeout": 20,  # generous: CI machines can be heavily loaded
    }
    if {"mbox", "mda", "lmtp", "smtp"} & keys.keys():
        del table["maildir"]
    table.update(keys)
    return parse_fetch_config({"accounts": {"test": table}}, root / "fetch.toml").accounts["test"]


def maildir_files(maildir: Path) -> dict[str, bytes]:
    """Every delivered message (new/ and cur/), by file name."""
    files: dict[str, bytes] = {}
    for sub in ("new", "cur"):
        folder = maildir / sub
        if folder.is_dir():
            for name in os.listdir(folder):
                files[f"{sub}/{name}"] = (folder / name).read_bytes()
    return files


def delivered_bodies(maildir: Path) -> list[bytes]:
    return sorted(maildir_files(maildir).values())


def expected_bodies(messages: list[FakeMessage]) -> list[bytes]:
    """What a Maildir should hold for ``messages``: LF line ends."""
    return sorted(message.data.replace(b"\r\n", b"\n") for message in messages)


def tmp_is_empty(maildir: Path) -> bool:
    return not (maildir / "tmp").is_dir() or os.listdir(maildir / "tmp") == []
