"""``postoffice fetch`` end to end (the fake server in its own thread), locks, exit codes."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from click.testing import CliRunner

from postoffice.fetch.cli import fetch
from postoffice.fetch.errors import AccountLockedError
from postoffice.fetch.runner import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_FETCHED,
    EXIT_NOTHING_NEW,
    Outcome,
    account_lock,
    exit_code,
    fetch_account,
)
from postoffice.fetch.session import Plan, ServerMessage, SessionResult

from .fakeserver import FakeMessage, FakePop3Server
from .helpers import maildir_files, make_account


def write_config(root: Path, port: int, extra: str = "") -> Path:
    (root / "alice.secret").write_text("secret\n")
    path = root / "fetch.toml"
    path.write_text(
        f"""
[defaults]
mode = "keep"
state_dir = "state"

[accounts.office]
host = "127.0.0.1"
port = {port}
tls = "none"
user = "alice"
password_command = "cat alice.secret"
maildir = "mail/office"
{extra}
"""
    )
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(fetch, list(args))
    return result.exit_code, result.output


def test_the_command_collects_rarely_and_never_visits_what_was_imported(
    tmp_path: Path, threaded_server: FakePop3Server
) -> None:
    config = write_config(tmp_path, threaded_server.port)
    before = gc.get_freeze_count()
    assert run("--config", str(config), "-q")[0] == EXIT_FETCHED
    assert gc.get_threshold()[0] == 50_000
    assert gc.get_freeze_count() > before


def test_fetch_then_nothing_new(tmp_path: Path, threaded_server: FakePop3Server) -> None:
    config = write_config(tmp_path, threaded_server.port)
    assert run("--config", str(config), "office")[0] == EXIT_FETCHED
    assert len(maildir_files(tmp_path / "mail" / "office")) == 5
    assert run("--config", str(config), "-q")[0] == EXIT_NOTHING_NEW


def test_list_shows_new_and_fetched(tmp_path: Path, threaded_server: FakePop3Server) -> None:
    config = write_config(tmp_path, threaded_server.port, "max_messages_per_session = 2\n")
    code, output = run("--config", str(config), "--list")
    assert code == EXIT_NOTHING_NEW
    assert output.count(" new ") == 5
    assert not (tmp_path / "mail").exists(), "--list changes nothing"
    run("--config", str(config))
    code, output = run("--config", str(config), "--list")
    table = [line.split()[2] for line in output.splitlines() if line.endswith(("uid-1", "uid-5"))]
    assert table == ["fetched", "new"]
    assert "uid-1" in output


def test_dry_run_changes_nothing(tmp_path: Path, threaded_server: FakePop3Server) -> None:
    config = write_config(tmp_path, threaded_server.port, 'mode = "delete"\n')
    assert run("--config", str(config), "--dry-run")[0] == EXIT_NOTHING_NEW
    assert not (tmp_path / "mail").exists()
    assert len(threaded_server.messages) == 5
    assert sum(threaded_server.retrieved.values()) == 0


def test_configuration_errors_exit_3(tmp_path: Path) -> None:
    config = write_config(tmp_path, 1, "colour = 1\n")
    code, output = run("--config", str(config))
    assert code == EXIT_CONFIG
    assert "accounts.office.colour: unknown key" in output
    config = write_config(tmp_path, 1)
    code, output = run("--config", str(config), "home")
    assert code == EXIT_CONFIG and "no account home" in output
    assert run("--config", str(tmp_path / "missing.toml"))[0] == EXIT_CONFIG


def test_unreachable_server_is_a_failure(tmp_path: Path) -> None:
    config = write_config(tmp_path, 1)  # nothing listens on port 1
    code, output = run("--config", str(config))
    assert code == EXIT_FAILURE
    assert "cannot connect to 127.0.0.1:1" in output


async def test_two_fetchers_never_run_one_account(tmp_path: Path) -> None:
    account = make_account(tmp_path)
    with (
        account_lock(account.state_dir, account.name),
        pytest.raises(AccountLockedError, match="another fetcher"),
    ):
        await fetch_account(account)
    with pytest.raises(OSError):  # the lock is free again; port 1 refuses
        await fetch_account(account)


def test_exit_codes() -> None:
    fetched = SessionResult(account="a", fetched=1)
    nothing = SessionResult(account="b")
    failed_message = SessionResult(account="c", fetched=3, failed=1)
    assert exit_code([Outcome(account="a", result=fetched, error=None)]) == EXIT_FETCHED
    assert exit_code([Outcome(account="b", result=nothing, error=None)]) == EXIT_NOTHING_NEW
    assert exit_code([Outcome(account="c", result=failed_message, error=None)]) == EXIT_FAILURE
    broken = Outcome(account="d", result=None, error=OSError("x"))
    assert exit_code([Outcome(account="a", result=fetched, error=None), broken]) == EXIT_FAILURE


def test_adopt_marks_everything_fetched(tmp_path: Path, threaded_server: FakePop3Server) -> None:
    config = write_config(tmp_path, threaded_server.port)
    assert run("--config", str(config), "--adopt")[0] == EXIT_NOTHING_NEW
    assert sum(threaded_server.retrieved.values()) == 0
    assert run("--config", str(config))[0] == EXIT_NOTHING_NEW
    assert not maildir_files(tmp_path / "mail" / "office")
    threaded_server.messages.append(FakeMessage("later", b"Subject: later\r\n\r\nx\r\n"))
    assert run("--config", str(config))[0] == EXIT_FETCHED
    assert dict(threaded_server.retrieved) == {"later": 1}
    code, output = run("--config", str(config), "--adopt", "--dry-run")
    assert code == EXIT_CONFIG and "go alone" in output


def test_a_broken_journal_is_a_failure_not_a_crash(
    tmp_path: Path, threaded_server: FakePop3Server
) -> None:
    config = write_config(tmp_path, threaded_server.port)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "office.journal.sqlite3").write_bytes(b"not a database" * 100)
    code, output = run("--config", str(config))
    assert code == EXIT_FAILURE
    assert "the journal" in output and "cannot be used" in output
    assert sum(threaded_server.retrieved.values()) == 0


def test_the_repr_of_a_session_result_does_not_grow_with_the_listing() -> None:
    """asyncio.run formats the repr of the task returning the results when it finishes."""
    listing = [ServerMessage(number=n, uidl=f"uid-{n}", size=1000) for n in range(1, 10_001)]
    result = SessionResult(account="a", listed=len(listing), listing=listing)
    result.plan = Plan(fetch=listing)
    assert len(repr(result)) < 500
    assert "listed=10000" in repr(result)
