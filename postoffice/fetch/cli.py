"""``postoffice fetch``: the command line of the fetcher.

Progress is a ``rich`` bar per account on a terminal (when rich is installed), plain log
lines otherwise (one per message, a summary per account); ``--list`` prints a table on
stdout.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import click

from postoffice.errors import ConfigError, PostofficeError
from postoffice.fetch.config import Account, default_config_path, load_fetch_config
from postoffice.fetch.progress import rich_progress
from postoffice.fetch.runner import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_NOTHING_NEW,
    Outcome,
    exit_code,
    fetch_all,
    import_state,
)
from postoffice.fetch.session import Options

__all__ = ["fetch"]

_GC_THRESHOLD = 50_000
"""Container allocations between collections of the youngest generation (default 700)."""


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _print_listing(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        result = outcome.result
        if result is None:
            click.echo(f"{outcome.account}: failed: {outcome.error}")
            continue
        statuses = result.plan.statuses() if result.plan is not None else {}
        click.echo(f"{outcome.account}: {result.listed} messages on the server")
        for message in result.listing:
            status = statuses.get(message.number, "fetched")
            click.echo(f"  {message.number:>6} {message.size:>10}  {status:<9}  {message.uidl}")


def _import(selected: list[Account], path: Path) -> int:
    if len(selected) != 1:
        click.echo("postoffice fetch: --import-state needs exactly one ACCOUNT", err=True)
        return EXIT_CONFIG
    (account,) = selected
    try:
        state = import_state(account, path, time.time())
    except ConfigError as error:
        click.echo(f"postoffice fetch: {error}", err=True)
        return EXIT_CONFIG
    except (PostofficeError, OSError) as error:
        click.echo(f"postoffice fetch: {account.name}: {error}", err=True)
        return EXIT_FAILURE
    click.echo(f"{account.name}: {len(state.uids)} unique ids imported from {state.format} state")
    return EXIT_NOTHING_NEW


async def _daemon(selected: list[Account], options: Options) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    logging.getLogger(__name__).info("polling %d accounts", len(selected))
    from postoffice.fetch.daemon import run_daemon  # only here: it brings random along

    await run_daemon(selected, options, stop=stop)


@click.command("fetch")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Account file (default: ~/.config/postoffice/fetch.toml).",
)
@click.option("--dry-run", is_flag=True, help="Log in and show what would be done; change nothing.")
@click.option(
    "--list", "list_only", is_flag=True, help="List the server's messages and which are new."
)
@click.option(
    "--adopt",
    is_flag=True,
    help="Record every message now on the server as already fetched, without downloading.",
)
@click.option(
    "--import-state",
    "import_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Mark as fetched what a fetchmail, getmail or mpop state file lists (one ACCOUNT).",
)
@click.option(
    "--daemon",
    is_flag=True,
    help="Keep polling each account every `every` (default 5m) until SIGTERM or Ctrl-C.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option("-v", "--verbose", is_flag=True, help="Debugging detail (never passwords).")
@click.argument("accounts", nargs=-1)
def fetch(
    config_path: Path | None,
    dry_run: bool,
    list_only: bool,
    adopt: bool,
    import_path: Path | None,
    daemon: bool,
    quiet: bool,
    verbose: bool,
    accounts: tuple[str, ...],
) -> None:
    """Fetch mail from the POP3 ACCOUNTS (default: every account in the file).

    With --daemon the accounts are polled until SIGTERM or Ctrl-C (exit code 0).

    Exit codes: 0 fetched something; 1 nothing new; 2 an account or a message failed
    (others may have been fetched; also when another fetcher holds an account's lock);
    3 the account file (or the choice of options) is wrong.
    """
    # What is imported now lives until the exit (freeze: no collection visits it again),
    # and a fetch makes many short-lived containers but little cyclic garbage: a
    # collection every 700 of them cost 7-10 ms CPU in a fetch of 2,000 messages.
    gc.freeze()
    gc.set_threshold(_GC_THRESHOLD)
    _setup_logging(quiet, verbose)
    path = config_path or default_config_path()
    try:
        config = load_fetch_config(path)
        unknown = [name for name in accounts if name not in config.accounts]
        if unknown:
            known = ", ".join(config.accounts)
            raise ConfigError(f"{path}: no account {', '.join(unknown)} (accounts: {known})")
    except ConfigError as error:
        click.echo(f"postoffice fetch: configuration error: {error}", err=True)
        sys.exit(EXIT_CONFIG)
    selected = [config.accounts[name] for name in accounts or config.accounts]
    if import_path is not None:
        sys.exit(_import(selected, import_path))
    if (adopt or daemon) and (dry_run or list_only or (adopt and daemon)):
        click.echo(
            "postoffice fetch: --adopt and --daemon go alone, not with each other, "
            "--dry-run or --list",
            err=True,
        )
        sys.exit(EXIT_CONFIG)
    options = Options(dry_run=dry_run, list_only=list_only, adopt=adopt)
    if daemon:
        asyncio.run(_daemon(selected, options))
        sys.exit(0)
    bar = None if quiet or dry_run or list_only else rich_progress()
    if bar is None:
        outcomes = asyncio.run(fetch_all(selected, options))
    else:
        logging.getLogger().handlers[:] = [bar.log_handler()]
        with bar:
            outcomes = asyncio.run(fetch_all(selected, replace(options, progress=bar)))
    if list_only:
        _print_listing(outcomes)
    _quick_exit(exit_code(outcomes))


def _quick_exit(code: int) -> None:
    """``sys.exit(code)``, with every object alive now left out of the collections the
    interpreter runs while it shuts down: they would find no garbage among the modules
    and their objects, yet visiting them all took some 25 ms, a tenth of a small fetch."""
    gc.freeze()
    sys.exit(code)
