"""The ``postoffice`` command: serve, user, deliver, check-config, fetch, migrate.

Each command imports what it needs when it runs, and ``fetch`` and ``migrate`` are
imported only when named (``_Commands``): ``postoffice fetch`` starts without loading the
server, the password schemes or the migration tools (about 0.1 s of a fetch's start-up).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import click

from postoffice import __version__
from postoffice.errors import (
    ConfigError,
    InvalidUsernameError,
    PasswdFileError,
)

if TYPE_CHECKING:
    from postoffice.config import Config
    from postoffice.secret import Secret

EX_USAGE = 64
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML configuration file (default: the embedded default, data under ./var).",
)


def _load(config_path: Path | None) -> Config:
    from postoffice.config import load_config

    try:
        return load_config(config_path)
    except ConfigError as error:
        raise click.ClickException(f"configuration error: {error}") from error


class _LogFormatter(logging.Formatter):
    """The standard format; the date and time are formatted once a second, not per line."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._text = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return f"{self._text},{int(record.msecs):03d}"


def _setup_logging(config: Config, *, verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else getattr(logging, config.log_level.upper())
    handler: logging.Handler
    if config.log_file is not None:
        config.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(config.log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # The format uses none of these; collecting them costs a stack walk and several calls
    # for every line (the logging module's documented optimisations).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class _Commands(click.Group):
    """A group whose ``fetch`` and ``migrate`` commands are imported when named."""

    _lazy: ClassVar[dict[str, str]] = {
        "fetch": "postoffice.fetch.cli",
        "migrate": "postoffice.migrate.cli",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = self._lazy.get(cmd_name)
        if module is None:
            return super().get_command(ctx, cmd_name)
        command = getattr(importlib.import_module(module), cmd_name)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="postoffice")
def main() -> None:
    """postoffice: a POP3 server (serve) and its tools."""


@main.command()
@config_option
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
def serve(config_path: Path | None, verbose: bool) -> None:
    """Run the POP3 server in the foreground until SIGTERM or Ctrl-C."""
    from postoffice.auth import passwd_file
    from postoffice.server.app import serve as serve_forever

    config = _load(config_path)
    _setup_logging(config, verbose=verbose)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    users = (  # quietly: the server reports the file's problems as it reads it
        passwd_file.list_users(config.auth.passwd_file, report=False)
        if config.auth.passwd_file.exists()
        else []
    )
    config_hint = f" --config {config_path}" if config_path else ""
    listen = config.pop3.listen[0]
    if not users:
        click.echo(
            "postoffice: no users yet. In another terminal:\n"
            f"  postoffice user add alice{config_hint}          # asks for a password\n"
            f"  postoffice deliver alice{config_hint} < message.eml\n"
            f"  curl pop3://{listen.host}:{listen.port}/1 --user alice   # read message 1\n",
            err=True,
        )
    from postoffice.server import workers as worker_processes

    count = config.process.workers or os.cpu_count() or 1
    try:
        if count > 1:
            sys.exit(worker_processes.run(config, count))
        loop = worker_processes.new_event_loop()
        try:
            loop.run_until_complete(serve_forever(config))
        finally:
            loop.close()
    except (OSError, ConfigError) as error:
        raise click.ClickException(f"cannot start: {error}") from error
    except KeyboardInterrupt:
        pass


@main.command("check-config")
@config_option
def check_config(config_path: Path | None) -> None:
    """Validate the configuration and print what it would serve."""
    from postoffice.auth import passwd_file

    config = _load(config_path)
    click.echo(f"configuration: {config.source or 'embedded default'}")
    click.echo(f"data_dir: {config.data_dir}")
    for address in config.pop3.listen:
        click.echo(f"POP3 listener: {address}" + (" (STLS)" if config.pop3.stls else ""))
    for address in config.pop3s.listen:
        click.echo(f"POP3S listener: {address}")
    for lmtp_address in config.lmtp.listen:
        click.echo(f"LMTP listener: {lmtp_address}")
    tls = config.pop3s.tls
    if config.pop3s.listen or config.pop3.stls:
        origin = "self-signed, made on first start" if tls.self_signed else "configured"
        click.echo(f"certificate: {tls.certificate} ({origin}), TLS {tls.min_version}+")
    click.echo(
        f"plaintext logins before TLS: {config.auth.plaintext}; "
        f"SASL: {' '.join(config.auth.mechanisms) or 'none'}"
    )
    workers = config.process.workers or os.cpu_count() or 1
    click.echo(f"worker processes: {workers}")
    click.echo(f"users: {config.auth.passwd_file}")
    if config.auth.passwd_file.exists():
        click.echo(f"  {len(passwd_file.list_users(config.auth.passwd_file))} users")
    else:
        click.echo("  (file does not exist yet)")
    if config.auth.cache_ttl > 0:
        click.echo(
            f"  passwords verified against slow hashes remembered for "
            f"{config.auth.cache_ttl:.0f}s (auth.cache_ttl)"
        )
    else:
        click.echo("  every login checks its password in full (auth.cache_ttl = 0)")
    click.echo(f"maildir: {config.mail.maildir} (UIDLs: {config.mail.uidl_format})")
    click.echo(f"APOP: {'on' if config.pop3.apop else 'off'}")
    click.echo(f"EXPIRE: {config.pop3.expire}")
    if config.pop3.login_delay:
        click.echo(f"LOGIN-DELAY: {config.pop3.login_delay:.0f} seconds")
    limits = config.limits
    click.echo(
        f"limits: {limits.max_connections} connections, {limits.max_connections_per_ip} per "
        f"address, {limits.max_sessions_per_user} sessions per user, idle timeout "
        f"{limits.idle_timeout:.0f}s, login timeout {limits.login_timeout:.0f}s"
    )
    click.echo("configuration is valid")


@main.group()
def user() -> None:
    """Manage users in the passwd-file (Dovecot format)."""


def _read_password(password_stdin: bool) -> Secret:
    from postoffice.secret import Secret

    if password_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.ClickException("the password must not be empty")
    return Secret(password)


scheme_option = click.option(
    "--scheme",
    default=None,
    help="Password scheme: ARGON2ID (default), SCRAM-SHA-256 (default when the SCRAM "
    "mechanisms are enabled), BLF-CRYPT, SHA512-CRYPT, SSHA512 or PLAIN.",
)


def _scheme_for(config: Config, scheme: str | None) -> str:
    """The scheme to store a new password in: SCRAM needs SCRAM verifiers."""
    if scheme:
        return scheme.upper()
    if any(name.startswith("SCRAM-") for name in config.auth.mechanisms):
        return "SCRAM-SHA-256"
    return "ARGON2ID"


stdin_option = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)


@user.command("add")
@config_option
@scheme_option
@stdin_option
@click.argument("name")
def user_add(config_path: Path | None, scheme: str | None, password_stdin: bool, name: str) -> None:
    """Add a user; the password is asked for (or read from stdin), never taken from argv."""
    from postoffice.auth import passwd_file
    from postoffice.auth.schemes import hash_password

    config = _load(config_path)
    name = _checked_name(name)
    password = _read_password(password_stdin)
    try:
        encoded = hash_password(password, _scheme_for(config, scheme))
        config.auth.passwd_file.parent.mkdir(parents=True, exist_ok=True)
        passwd_file.add_user(config.auth.passwd_file, name, encoded)
    except (PasswdFileError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"added {name} to {config.auth.passwd_file}")


@user.command("passwd")
@config_option
@scheme_option
@stdin_option
@click.argument("name")
def user_passwd(
    config_path: Path | None, scheme: str | None, password_stdin: bool, name: str
) -> None:
    """Set a user's password."""
    from postoffice.auth import passwd_file
    from postoffice.auth.schemes import hash_password

    config = _load(config_path)
    name = _checked_name(name)
    password = _read_password(password_stdin)
    try:
        passwd_file.set_password(
            config.auth.passwd_file, name, hash_password(password, _scheme_for(config, scheme))
        )
    except (PasswdFileError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"password of {name} changed")


@user.command("del")
@config_option
@click.argument("name")
def user_del(config_path: Path | None, name: str) -> None:
    """Remove a user from the passwd-file (their mail stays on disk)."""
    from postoffice.auth import passwd_file

    config = _load(config_path)
    try:
        passwd_file.delete_user(config.auth.passwd_file, _checked_name(name))
    except PasswdFileError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"removed {name}")


@user.command("list")
@config_option
def user_list(config_path: Path | None) -> None:
    """List the users."""
    from postoffice.auth import passwd_file

    config = _load(config_path)
    if not config.auth.passwd_file.exists():
        return
    try:
        for record in passwd_file.list_users(config.auth.passwd_file):
            click.echo(record.name)
    except PasswdFileError as error:
        raise click.ClickException(str(error)) from error


def _checked_name(name: str) -> str:
    from postoffice.auth.usernames import validate_username

    try:
        return validate_username(name)
    except InvalidUsernameError as error:
        raise click.ClickException(str(error)) from error


@main.command()
@config_option
@click.argument("users", nargs=-1, required=True)
def deliver(config_path: Path | None, users: tuple[str, ...]) -> None:
    """Deliver the message on stdin to each USER's maildrop (for an MTA's mailbox_command).

    Exit codes follow sysexits: 0 delivered, 67 unknown user, 73 over quota, 75 temporary
    failure (disk full, I/O error: the MTA should retry), 78 configuration error.
    """
    from postoffice.config import load_config
    from postoffice.delivery.agent import deliver_from_stream

    try:
        config = load_config(config_path)
    except ConfigError as error:
        click.echo(f"postoffice deliver: configuration error: {error}", err=True)
        sys.exit(EX_CONFIG)
    if config.log_file is not None:
        _setup_logging(config)
    else:  # stderr goes to the MTA's log or a bounce: only what went wrong
        logging.basicConfig(level=logging.WARNING, format="postoffice deliver: %(message)s")
    sys.exit(deliver_from_stream(config, list(users), sys.stdin.buffer, sys.stderr))
