"""``postoffice migrate``: commands for moving users from Dovecot or Courier."""

from __future__ import annotations

from pathlib import Path

import click

from postoffice.auth import passwd_file
from postoffice.auth.base import UserRecord
from postoffice.auth.usernames import validate_username
from postoffice.config import Config, load_config
from postoffice.errors import ConfigError, InvalidUsernameError, PasswdFileError
from postoffice.migrate.check import SOURCES, UserReport, check_user
from postoffice.storage.uidl import parse_uidl_format
from postoffice.storage.uidl_dovecot import DEFAULT_POP3_UIDL_FORMAT, DovecotFormat

__all__ = ["migrate"]

EXIT_CHANGES = 1
EXIT_UNCHECKED = 2


@click.group()
def migrate() -> None:
    """Move users from Dovecot or Courier without clients downloading everything again."""


@migrate.command("check")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML configuration file (default: the embedded default, data under ./var).",
)
@click.option(
    "--from",
    "source",
    type=click.Choice(SOURCES),
    required=True,
    help="The server the maildirs come from.",
)
@click.option(
    "--pop3-uidl-format",
    default=None,
    help="Dovecot's pop3_uidl_format (`doveconf -h pop3_uidl_format`); default: the one in "
    f'mail.uidl_format = "dovecot:..." or Dovecot\'s default {DEFAULT_POP3_UIDL_FORMAT}.',
)
@click.option("-v", "--verbose", is_flag=True, help="Also list users whose UIDLs all stay.")
@click.argument("users", nargs=-1)
def check(
    config_path: Path | None,
    source: str,
    pop3_uidl_format: str | None,
    verbose: bool,
    users: tuple[str, ...],
) -> None:
    """List, per user, every message whose UIDL would change.

    Exit status: 0 if no UIDL would change, 1 if some would, 2 if a user could not be
    checked. Without USERs, every user of the passwd-file is checked.
    """
    try:
        config = load_config(config_path)
    except ConfigError as error:
        raise click.ClickException(f"configuration error: {error}") from error
    try:
        dovecot_format = DovecotFormat.compile(pop3_uidl_format or _configured_format(config))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--pop3-uidl-format") from error
    records = _records(config, users)
    changed = unchecked = messages = 0
    for record in records:
        report = check_user(config, record, source, dovecot_format)
        messages += report.messages
        if report.problem:
            unchecked += 1
        changed += len(report.changes)
        _print_report(report, source, verbose=verbose)
    click.echo(
        f"{len(records)} users, {messages} messages: "
        + (f"{changed} UIDLs would change" if changed else "no UIDL would change")
        + (f", {unchecked} users not checked" if unchecked else "")
    )
    if unchecked:
        raise SystemExit(EXIT_UNCHECKED)
    if changed:
        raise SystemExit(EXIT_CHANGES)


def _configured_format(config: Config) -> str:
    scheme = parse_uidl_format(config.mail.uidl_format)
    if scheme.dovecot_format is not None:
        return scheme.dovecot_format.text
    return DEFAULT_POP3_UIDL_FORMAT


def _records(config: Config, users: tuple[str, ...]) -> list[UserRecord]:
    try:
        if not users:
            return passwd_file.list_users(config.auth.passwd_file)
        database = passwd_file.PasswdFile(
            config.auth.passwd_file, lowercase_names=config.auth.lowercase_names
        )
        records = []
        for name in users:
            try:
                record = database.lookup(validate_username(name))
            except InvalidUsernameError:
                record = None
            if record is None:
                raise click.ClickException(f"{name!r}: no such user")
            records.append(record)
        return records
    except PasswdFileError as error:
        raise click.ClickException(str(error)) from error


def _print_report(report: UserReport, source: str, *, verbose: bool) -> None:
    if report.problem:
        click.echo(f"{report.user}: NOT CHECKED: {report.problem}")
        return
    unseen = (
        f"; {report.unseen} {source} never listed (new UIDLs, no client has them)"
        if report.unseen
        else ""
    )
    if report.changes:
        click.echo(
            f"{report.user}: {report.messages} messages, "
            f"{len(report.changes)} UIDLs would change{unseen}"
        )
        for change in report.changes:
            click.echo(f"  {change.key}: {change.old} -> {change.new} ({change.reason})")
    elif verbose or report.unseen:
        click.echo(f"{report.user}: {report.messages} messages, every UIDL stays{unseen}")
