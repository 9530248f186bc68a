"""The fetcher against postoffice's own server (the ``pop3_server`` fixture, loopback)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from postoffice.fetch.errors import LoginError
from postoffice.fetch.runner import fetch_account

# tests/conftest.py types its harness; imported for annotations only.
from ..conftest import ServerHarness
from .helpers import expected_bodies, five_messages, maildir_files, make_account


def fill(server: ServerHarness) -> None:
    for message in five_messages():
        server.deliver("alice", message.data)


async def test_keep_mode_twice_fetches_each_message_once(
    tmp_path: Path, pop3_server: ServerHarness
) -> None:
    fill(pop3_server)
    account = make_account(tmp_path, host=pop3_server.host, port=pop3_server.port, tls="none")
    first = await fetch_account(account)
    second = await fetch_account(account)
    assert (first.fetched, second.fetched) == (5, 0)
    assert sorted(maildir_files(account.maildir).values()) == expected_bodies(five_messages())
    server_maildir = pop3_server.maildir("alice")
    assert sum(len(os.listdir(server_maildir / sub)) for sub in ("new", "cur")) == 5


async def test_delete_mode_empties_the_server(tmp_path: Path, pop3_server: ServerHarness) -> None:
    fill(pop3_server)
    account = make_account(
        tmp_path, host=pop3_server.host, port=pop3_server.port, tls="none", mode="delete"
    )
    result = await fetch_account(account)
    assert (result.fetched, result.deleted) == (5, 5)
    server_maildir = pop3_server.maildir("alice")
    assert sum(len(os.listdir(server_maildir / sub)) for sub in ("new", "cur")) == 0
    assert sorted(maildir_files(account.maildir).values()) == expected_bodies(five_messages())


async def test_wrong_password(tmp_path: Path, pop3_server: ServerHarness) -> None:
    account = make_account(tmp_path, host=pop3_server.host, port=pop3_server.port, tls="none")
    (tmp_path / "pw").write_text("wrong\n")
    with pytest.raises(LoginError):
        await fetch_account(account)
