"""``password_keyring``: the password from the system keyring, through the optional ``keyring``
package. The backend here is a small in-memory one defined below; the tests that need the
package are skipped when it is not installed, those of its absence run always (the package
is hidden from the import system)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from postoffice.errors import ConfigError
from postoffice.fetch.auth import read_password
from postoffice.fetch.cli import fetch
from postoffice.fetch.config import Account, parse_fetch_config
from postoffice.fetch.errors import KeyringError
from postoffice.fetch.runner import EXIT_CONFIG, EXIT_FAILURE, EXIT_FETCHED, fetch_account

from .fakeserver import FakePop3Server
from .helpers import five_messages, maildir_files

SERVICE = "postoffice-test"


def keyring_account(root: Path, port: int = 1, **keys: object) -> Account:
    table: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "user": "alice",
        "password_keyring": SERVICE,
        "maildir": "Maildir",
        "state_dir": "state",
        "timeout": 20,
    }
    table.update(keys)
    return parse_fetch_config({"accounts": {"test": table}}, root / "fetch.toml").accounts["test"]


@pytest.fixture
def without_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``keyring`` unimportable, as if it were not installed."""
    monkeypatch.setitem(sys.modules, "keyring", None)


@pytest.fixture
def memory_keyring() -> Iterator[dict[tuple[str, str], str]]:
    """An in-memory keyring backend, installed for the test; its dict is the store."""
    keyring = pytest.importorskip("keyring")
    backend = pytest.importorskip("keyring.backend")
    store: dict[tuple[str, str], str] = {}

    base: type[Any] = backend.KeyringBackend

    class MemoryKeyring(base):  # type: ignore[misc]
        priority = 1

        def get_password(self, service: str, username: str) -> str | None:
            return store.get((service, username))

        def set_password(self, service: str, username: str, password: str) -> None:
            store[(service, username)] = password

        def delete_password(self, service: str, username: str) -> None:
            store.pop((service, username), None)

    previous = keyring.get_keyring()
    keyring.set_keyring(MemoryKeyring())
    try:
        yield store
    finally:
        keyring.set_keyring(previous)


@pytest.fixture
async def server() -> AsyncIterator[FakePop3Server]:
    fake = FakePop3Server(messages=five_messages(), password="from-the-keyring")
    await fake.start()
    yield fake
    await fake.stop()


def test_config_takes_the_keyring_instead_of_a_command(
    tmp_path: Path, memory_keyring: dict[tuple[str, str], str]
) -> None:
    account = keyring_account(tmp_path)
    assert account.password_keyring == SERVICE
    assert account.password_command is None


def test_own_choice_overrides_the_default(
    tmp_path: Path, memory_keyring: dict[tuple[str, str], str]
) -> None:
    data: dict[str, Any] = {
        "defaults": {"password_command": "cat pw"},
        "accounts": {
            "a": {"host": "h", "user": "u", "password_keyring": SERVICE},
            "b": {"host": "h", "user": "u"},
        },
    }
    accounts = parse_fetch_config(data, tmp_path / "f.toml").accounts
    assert (accounts["a"].password_command, accounts["a"].password_keyring) == (None, SERVICE)
    assert (accounts["b"].password_command, accounts["b"].password_keyring) == ("cat pw", None)


def test_both_in_one_table_is_an_error(
    tmp_path: Path, memory_keyring: dict[tuple[str, str], str]
) -> None:
    with pytest.raises(ConfigError, match=r"accounts\.test\.password_command, .*either"):
        keyring_account(tmp_path, password_command="cat pw")
    with pytest.raises(ConfigError, match=r"accounts\.test\.password_keyring: expected"):
        keyring_account(tmp_path, password_keyring="")


def test_neither_is_an_error_naming_both(tmp_path: Path) -> None:
    data = {"accounts": {"a": {"host": "h", "user": "u"}}}
    with pytest.raises(ConfigError, match=r"password_command: required .*password_keyring"):
        parse_fetch_config(data, tmp_path / "f.toml")


def test_missing_package_is_a_config_error(tmp_path: Path, without_keyring: None) -> None:
    with pytest.raises(
        ConfigError, match=r"accounts\.test\.password_keyring: .*pip install keyring"
    ):
        keyring_account(tmp_path)


def test_missing_package_cli_exit_code(tmp_path: Path, without_keyring: None) -> None:
    config = tmp_path / "fetch.toml"
    config.write_text(
        '[accounts.office]\nhost = "127.0.0.1"\ntls = "none"\nuser = "alice"\n'
        f'password_keyring = "{SERVICE}"\n'
    )
    result = CliRunner().invoke(fetch, ["--config", str(config)])
    assert result.exit_code == EXIT_CONFIG
    assert "configuration error" in result.output
    assert "pip install keyring" in result.output


async def test_fetch_with_the_keyring_password(
    tmp_path: Path, server: FakePop3Server, memory_keyring: dict[tuple[str, str], str]
) -> None:
    memory_keyring[(SERVICE, "alice")] = "from-the-keyring"
    memory_keyring[(SERVICE, "bob")] = "not this one"
    result = await fetch_account(keyring_account(tmp_path, server.port))
    assert result.fetched == 5
    assert len(maildir_files(tmp_path / "Maildir")) == 5
    assert server.logins


async def test_no_entry_says_how_to_store_one(
    tmp_path: Path, memory_keyring: dict[tuple[str, str], str]
) -> None:
    memory_keyring[("another-service", "alice")] = "x"
    with pytest.raises(KeyringError, match=f"no password for .*keyring set {SERVICE} alice"):
        await read_password(keyring_account(tmp_path))


async def test_a_failing_backend_is_reported(
    tmp_path: Path, memory_keyring: dict[tuple[str, str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring = pytest.importorskip("keyring")

    def locked(service: str, username: str) -> str:
        raise RuntimeError("the collection is locked")

    monkeypatch.setattr(keyring.get_keyring(), "get_password", locked)
    with pytest.raises(KeyringError, match=r"cannot be read .*RuntimeError: the collection is"):
        await read_password(keyring_account(tmp_path))


async def test_package_gone_at_fetch_time(
    tmp_path: Path, memory_keyring: dict[tuple[str, str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    account = keyring_account(tmp_path)
    monkeypatch.setitem(sys.modules, "keyring", None)
    with pytest.raises(KeyringError, match="pip install keyring"):
        await read_password(account)


def test_cli_fetches_with_the_keyring(
    tmp_path: Path,
    threaded_server: FakePop3Server,
    memory_keyring: dict[tuple[str, str], str],
) -> None:
    memory_keyring[(SERVICE, threaded_server.user)] = threaded_server.password
    config = tmp_path / "fetch.toml"
    config.write_text(
        f'[accounts.office]\nhost = "127.0.0.1"\nport = {threaded_server.port}\n'
        f'tls = "none"\nuser = "{threaded_server.user}"\npassword_keyring = "{SERVICE}"\n'
        'maildir = "mail"\nstate_dir = "state"\n'
    )
    result = CliRunner().invoke(fetch, ["--config", str(config), "-q"])
    assert result.exit_code == EXIT_FETCHED, result.output
    assert len(maildir_files(tmp_path / "mail")) == 5
    memory_keyring.clear()
    (tmp_path / "state").rename(tmp_path / "old-state")
    result = CliRunner().invoke(fetch, ["--config", str(config), "-q"])
    assert result.exit_code == EXIT_FAILURE
