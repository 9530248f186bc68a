"""The fetcher against postoffice's own server (the ``pop3_server`` fixture, loopback)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner

from postoffice.cli import main
from postoffice.fetch.errors import LoginError
from postoffice.fetch.runner import fetch_account

# tests/conftest.py types its harness; imported for annotations only.
from ..conftest import ServerHarness
from .helpers import expected_bodies, five_messages, maildir_files, make_account
from .test_config import EXAMPLE


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


@pytest.fixture
def tls_server(harness: ServerHarness, tmp_path: Path) -> ServerHarness:
    """postoffice's server with a trustme certificate, refusing plaintext logins."""
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost", "127.0.0.1")
    tls_dir = harness.root / "tls"
    tls_dir.mkdir()
    certificate.private_key_pem.write_to_path(str(tls_dir / "key.pem"))
    certificate.cert_chain_pems[0].write_to_path(str(tls_dir / "fullchain.pem"))
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    harness.add_user("alice", "secret")
    fill(harness)
    harness.start(
        tls={"certificate": "tls/fullchain.pem", "private_key": "tls/key.pem"},
        auth={"plaintext": "never"},
    )
    return harness


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_verified_tls_to_postoffice(
    tmp_path: Path, tls_server: ServerHarness, tls: str
) -> None:
    port = tls_server.port if tls == "starttls" else tls_server.tls_port
    account = make_account(
        tmp_path,
        host="127.0.0.1",
        port=port,
        tls=tls,
        ca_file=str(tmp_path / "ca.pem"),
        mode="delete",
    )
    result = await fetch_account(account)
    assert (result.fetched, result.deleted) == (5, 5)
    assert sorted(maildir_files(account.maildir).values()) == expected_bodies(five_messages())


def test_the_issue_example_works_as_written(tmp_path: Path, tls_server: ServerHarness) -> None:
    """Issue 5's account file, only the port changed, run through ``postoffice fetch``."""
    (tmp_path / "alice.secret").write_text("secret\n")
    config = tmp_path / "fetch.toml"
    config.write_text(EXAMPLE.replace("port = 1995", f"port = {tls_server.tls_port}"))
    result = CliRunner().invoke(main, ["fetch", "--config", str(config), "office"])
    assert result.exit_code == 0, result.output
    office = tmp_path / "mail" / "office"
    assert sorted(maildir_files(office).values()) == expected_bodies(five_messages())
    assert (tmp_path / "state" / "office.journal.sqlite3").exists()
    again = CliRunner().invoke(main, ["fetch", "--config", str(config), "office"])
    assert again.exit_code == 1, again.output  # delete mode: nothing left, nothing new
