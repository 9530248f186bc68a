"""The fetcher's account file: TOML in, one frozen ``Account`` per ``[accounts.NAME]`` out.

Every account inherits the keys of ``[defaults]`` it does not set itself. Relative paths
(``ca_file``, ``maildir``, ``mbox``, ``state_dir``, an ``lmtp`` socket) are relative to the
file's folder, and ``password_command`` and ``mda`` run there, so the example in issue 5
works as written. Every error names the key (``accounts.office.port``, or ``defaults.mode``
when inherited). The keys::

    host, port            port: 995 for implicit TLS, else 110
    tls                   "implicit" (default) | "starttls" | "none" (loopback or insecure)
    ca_file | fingerprint CA bundle, or "sha256:<hex>" certificate pin; default system store
    insecure              allow tls = "none" (and smtp) beyond loopback
    user, password_command  the password (or OAuth token) is its first line of output
    password_keyring      instead: the system keyring's service name; the password stored
                          there for (service, user) is used (needs the keyring package)
    auth                  "auto" | "user" | "apop" | "plain" | "login" | "scram-sha-256"
                          | "scram-sha-256-plus" | "oauthbearer" | "xoauth2"
    mode                  "keep" (default) | "delete"
    delete_after_days     keep mode: delete N days after this machine first saw a message
    max_message_size      e.g. "20MB"; oversize = "skip" (default) | "delete"
    max_messages_per_session
    maildir | mbox | mda | lmtp | smtp   one destination; default maildir = "~/Maildir"
    recipient             for lmtp/smtp; default the local login name
    state_dir             the UIDL journal and lock; default ~/.local/state/postoffice
    without_uidl          "refuse" (default) | "fingerprint"
    timeout               per network step, default 60 (seconds, or "2m")
    every                 --daemon interval, default "5m"
"""

from __future__ import annotations

import enum
import getpass
import importlib.util
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from postoffice.errors import ConfigError
from postoffice.toml_files import read_toml
from postoffice.units import parse_duration, parse_size

__all__ = [
    "Account",
    "AuthMethod",
    "FetchConfig",
    "Mode",
    "Oversize",
    "TlsMode",
    "default_config_path",
    "load_fetch_config",
]


class Mode(enum.Enum):
    KEEP = "keep"
    DELETE = "delete"


class TlsMode(enum.Enum):
    IMPLICIT = "implicit"  # RFC 8314: TLS from the first octet (pop3s)
    STARTTLS = "starttls"  # RFC 2595: STLS, and never fall back to cleartext
    NONE = "none"


class AuthMethod(enum.Enum):
    AUTO = "auto"  # the strongest SASL mechanism offered (SCRAM first), else USER/PASS
    USER = "user"
    APOP = "apop"  # only when asked: it needs the server to keep the clear password
    PLAIN = "plain"
    LOGIN = "login"
    SCRAM_SHA_256 = "scram-sha-256"
    SCRAM_SHA_256_PLUS = "scram-sha-256-plus"  # bound to the TLS certificate (RFC 5929)
    OAUTHBEARER = "oauthbearer"  # password_command prints the OAuth 2.0 access token
    XOAUTH2 = "xoauth2"


class WithoutUidl(enum.Enum):
    REFUSE = "refuse"  # a server without UIDL is an error
    FINGERPRINT = "fingerprint"  # ids from a hash of each header (TOP n 0)


class Oversize(enum.Enum):
    SKIP = "skip"  # leave it on the server, warn each session
    DELETE = "delete"  # delete it from the server unread


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    name: str
    host: str
    port: int
    tls: TlsMode
    ca_file: Path | None
    fingerprint: str | None
    """Lower-case hex SHA-256 of the server's certificate (DER), when pinned."""
    insecure: bool
    user: str
    password_command: str | None
    """Prints the password (or OAuth token) on its first line; None with password_keyring."""
    password_keyring: str | None = None
    """The service name under which the system keyring holds the password of ``user``."""
    auth: AuthMethod
    mode: Mode
    maildir: Path
    """The Maildir to deliver to (``~/Maildir`` unless ``mbox`` or ``mda`` is given)."""
    mbox: Path | None = None
    """An mbox file to append to instead (mboxrd quoting, dotlock and fcntl locking)."""
    mda: str | None = None
    """A command (run by the shell) that gets each message on stdin, instead."""
    forward: MtaAddress | None = None
    """An LMTP server (``lmtp``: a local MTA or Dovecot) or a local SMTP server (``smtp``)
    to hand each message to, instead."""
    recipient: str = ""
    """Who the MTA delivers to (``recipient``; default: the local login name)."""
    state_dir: Path
    delete_after_days: float | None
    max_message_size: int | None
    oversize: Oversize
    max_messages_per_session: int | None
    timeout: float
    fingerprint_without_uidl: bool = False
    """``without_uidl = "fingerprint"``: on a server without UIDL, make ids from headers."""
    every: float
    """Seconds between sessions in ``--daemon`` mode (``every = "5m"``)."""
    workdir: Path
    """The configuration file's folder: where ``password_command`` runs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MtaAddress:
    protocol: str
    """``lmtp`` (RFC 2033) or ``smtp`` (RFC 5321)."""
    host: str
    """A host name or address, or the path of a Unix socket when ``port`` is None."""
    port: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchConfig:
    path: Path
    accounts: Mapping[str, Account]


DEFAULT_EVERY = 300.0
MINIMUM_EVERY = 10.0  # polling faster than this only burdens the server
_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FINGERPRINT = re.compile(r"sha256:((?:[0-9a-fA-F]{2}:?){31}[0-9a-fA-F]{2})")
_DESTINATIONS = ("maildir", "mbox", "mda", "lmtp", "smtp")
_PASSWORD_SOURCES = ("password_command", "password_keyring")
_KEYS = frozenset(
    {
        "host",
        "port",
        "tls",
        "ca_file",
        "fingerprint",
        "insecure",
        "user",
        "password_command",
        "password_keyring",
        "auth",
        "mode",
        "maildir",
        "mbox",
        "mda",
        "state_dir",
        "delete_after_days",
        "max_message_size",
        "oversize",
        "max_messages_per_session",
        "timeout",
        "every",
        "without_uidl",
        "lmtp",
        "smtp",
        "recipient",
    }
)
_E = TypeVar("_E", bound=enum.Enum)


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "postoffice" / "fetch.toml"


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "postoffice"


class _Settings:
    """An account's keys merged over ``[defaults]``; each value remembers where it was set."""

    def __init__(self, name: str, own: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
        self._values: dict[str, tuple[Any, str]] = {}
        for table, prefix in ((defaults, "defaults"), (own, f"accounts.{name}")):
            for key, value in table.items():
                if key not in _KEYS:
                    raise ConfigError(f"{prefix}.{key}: unknown key")
                self._values[key] = (value, f"{prefix}.{key}")
        self.name = name

    def key(self, key: str) -> str:
        return self._values[key][1] if key in self._values else f"accounts.{self.name}.{key}"

    def has(self, key: str) -> bool:
        return key in self._values

    def own(self, key: str) -> bool:
        """Whether the account table itself (not ``[defaults]``) sets ``key``."""
        return key in self._values and not self._values[key][1].startswith("defaults.")

    def raw(self, key: str) -> Any:
        return self._values[key][0] if key in self._values else None

    def string(self, key: str, default: str | None = None) -> str:
        value = self.raw(key)
        if value is None:
            if default is None:
                raise ConfigError(f"{self.key(key)}: required")
            return default
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{self.key(key)}: expected a non-empty string, got {value!r}")
        return value

    def choice(self, key: str, enum_type: type[_E], default: _E) -> _E:
        value = self.string(key, default.value)
        try:
            return enum_type(value)
        except ValueError:
            allowed = ", ".join(f'"{member.value}"' for member in enum_type)
            raise ConfigError(
                f"{self.key(key)}: expected one of {allowed}, got {value!r}"
            ) from None

    def integer(self, key: str, *, minimum: int, maximum: int) -> int | None:
        value = self.raw(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{self.key(key)}: expected a whole number, got {value!r}")
        if not minimum <= value <= maximum:
            raise ConfigError(f"{self.key(key)}: must be between {minimum} and {maximum}")
        return value

    def boolean(self, key: str) -> bool:
        value = self.raw(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(key)}: expected true or false, got {value!r}")
        return value

    def path(self, key: str, base: Path, default: Path | None = None) -> Path | None:
        if not self.has(key):
            return default
        path = Path(self.string(key)).expanduser()
        return path if path.is_absolute() else base / path


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _mta_address(settings: _Settings, base: Path, protocol: str, insecure: bool) -> MtaAddress:
    value = settings.string(protocol)
    if protocol == "lmtp" and value.startswith(("/", "./", "~")):
        path = Path(value).expanduser()
        socket = str(path if path.is_absolute() else base / path)
        return MtaAddress(protocol=protocol, host=socket, port=None)
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        where = '"host:port" or a socket path' if protocol == "lmtp" else '"host:port"'
        raise ConfigError(f"{settings.key(protocol)}: expected {where}, got {value!r}")
    host = host.strip("[]")
    if protocol == "smtp" and not (_is_loopback(host) or insecure):
        # No STARTTLS here: mail would cross the network in clear text.
        raise ConfigError(
            f"{settings.key(protocol)}: only a local MTA (loopback), or set insecure = true"
        )
    return MtaAddress(protocol=protocol, host=host, port=int(port))


def _destination_key(settings: _Settings) -> str | None:
    """Which destination key applies: the account's own, else the default's."""
    for chosen in (
        [key for key in _DESTINATIONS if settings.own(key)],
        [key for key in _DESTINATIONS if settings.has(key)],
    ):
        if len(chosen) > 1:
            keys = ", ".join(settings.key(key) for key in chosen)
            raise ConfigError(f"{keys}: give only one destination (maildir, mbox, mda, lmtp, smtp)")
        if chosen:
            return chosen[0]
    return None


def _password_source(settings: _Settings) -> tuple[str | None, str | None]:
    """(password_command, password_keyring): exactly one of them, the account's own choice
    winning over ``[defaults]``."""
    for chosen in (
        [key for key in _PASSWORD_SOURCES if settings.own(key)],
        [key for key in _PASSWORD_SOURCES if settings.has(key)],
    ):
        if len(chosen) > 1:
            keys = ", ".join(settings.key(key) for key in chosen)
            raise ConfigError(f"{keys}: give either password_command or password_keyring")
        if chosen == ["password_command"]:
            return settings.string("password_command"), None
        if chosen == ["password_keyring"]:
            service = settings.string("password_keyring")
            if importlib.util.find_spec("keyring") is None:
                raise ConfigError(
                    f"{settings.key('password_keyring')}: the system keyring needs the Python "
                    f'package "keyring", which is not installed: pip install keyring (or '
                    f'pip install "postoffice[keyring]")'
                )
            return None, service
    raise ConfigError(
        f'{settings.key("password_command")}: required (or password_keyring = "SERVICE" '
        f"to take the password from the system keyring)"
    )


def _account(name: str, settings: _Settings, base: Path) -> Account:
    destination = _destination_key(settings)
    tls = settings.choice("tls", TlsMode, TlsMode.IMPLICIT)
    insecure = settings.boolean("insecure")
    host = settings.string("host")
    if tls is TlsMode.NONE and not (_is_loopback(host) or insecure):
        raise ConfigError(
            f'{settings.key("tls")}: "none" sends the password in clear text; it is allowed '
            f"only for a loopback host, or with insecure = true"
        )
    port = settings.integer("port", minimum=1, maximum=65535)
    if port is None:
        port = 995 if tls is TlsMode.IMPLICIT else 110
    ca_file = settings.path("ca_file", base)
    fingerprint = None
    if settings.has("fingerprint"):
        match = _FINGERPRINT.fullmatch(settings.string("fingerprint"))
        if match is None:
            raise ConfigError(
                f'{settings.key("fingerprint")}: expected "sha256:" and 64 hexadecimal digits'
            )
        fingerprint = match.group(1).replace(":", "").lower()
    if ca_file is not None and fingerprint is not None:
        raise ConfigError(f"{settings.key('fingerprint')}: give either ca_file or fingerprint")
    if tls is TlsMode.NONE and (ca_file is not None or fingerprint is not None):
        raise ConfigError(f'{settings.key("tls")}: "none" cannot check ca_file or fingerprint')
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError(f"{settings.key('ca_file')}: {ca_file} is not a readable file")
    auth = settings.choice("auth", AuthMethod, AuthMethod.AUTO)
    password_command, password_keyring = _password_source(settings)
    days = settings.raw("delete_after_days")
    delete_after_days = None
    if days is not None:
        if isinstance(days, bool) or not isinstance(days, int | float) or days < 0:
            raise ConfigError(
                f"{settings.key('delete_after_days')}: expected a number of days, got {days!r}"
            )
        delete_after_days = float(days)
    max_size = None
    if settings.has("max_message_size"):
        max_size = parse_size(settings.raw("max_message_size"), settings.key("max_message_size"))
    timeout = 60.0
    if settings.has("timeout"):
        timeout = parse_duration(settings.raw("timeout"), settings.key("timeout"))
        if timeout <= 0:
            raise ConfigError(f"{settings.key('timeout')}: must be more than zero")
    every = DEFAULT_EVERY
    if settings.has("every"):
        every = parse_duration(settings.raw("every"), settings.key("every"))
        if every < MINIMUM_EVERY:
            raise ConfigError(f"{settings.key('every')}: must be at least {MINIMUM_EVERY:.0f}s")
    maildir = Path.home() / "Maildir"
    if destination == "maildir":
        maildir = settings.path("maildir", base) or maildir
    mbox = settings.path("mbox", base) if destination == "mbox" else None
    mda = settings.string("mda") if destination == "mda" else None
    forward = None
    if destination in ("lmtp", "smtp"):
        assert destination is not None
        forward = _mta_address(settings, base, destination, insecure)
    recipient = settings.string("recipient", getpass.getuser())
    state_dir = settings.path("state_dir", base, _default_state_dir())
    assert state_dir is not None
    return Account(
        name=name,
        host=host,
        port=port,
        tls=tls,
        ca_file=ca_file,
        fingerprint=fingerprint,
        insecure=insecure,
        user=settings.string("user"),
        password_command=password_command,
        password_keyring=password_keyring,
        auth=auth,
        mode=settings.choice("mode", Mode, Mode.KEEP),
        maildir=maildir,
        mbox=mbox,
        mda=mda,
        forward=forward,
        recipient=recipient,
        state_dir=state_dir,
        delete_after_days=delete_after_days,
        max_message_size=max_size,
        oversize=settings.choice("oversize", Oversize, Oversize.SKIP),
        max_messages_per_session=settings.integer(
            "max_messages_per_session", minimum=1, maximum=10**9
        ),
        timeout=timeout,
        every=every,
        fingerprint_without_uidl=settings.choice("without_uidl", WithoutUidl, WithoutUidl.REFUSE)
        is WithoutUidl.FINGERPRINT,
        workdir=base,
    )


def parse_fetch_config(data: Mapping[str, Any], path: Path) -> FetchConfig:
    """Validate already-parsed TOML ``data`` read from ``path``."""
    path = path.absolute()
    base = path.parent
    for key in data:
        if key not in ("defaults", "accounts"):
            raise ConfigError(f"{key}: unknown key (expected [defaults] or [accounts.NAME])")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError("defaults: expected a table")
    accounts_table = data.get("accounts", {})
    if not isinstance(accounts_table, dict):
        raise ConfigError("accounts: expected tables such as [accounts.office]")
    if not accounts_table:
        raise ConfigError("accounts: no account defined (add an [accounts.NAME] table)")
    accounts: dict[str, Account] = {}
    for name, own in accounts_table.items():
        if not _ACCOUNT_NAME.fullmatch(name):
            raise ConfigError(
                f"accounts.{name}: account names use letters, digits, '.', '_' and '-'"
            )
        if not isinstance(own, dict):
            raise ConfigError(f"accounts.{name}: expected a table")
        accounts[name] = _account(name, _Settings(name, own, defaults), base)
    return FetchConfig(path=path, accounts=accounts)


def load_fetch_config(path: Path) -> FetchConfig:
    """Read and validate the account file at ``path``."""
    return parse_fetch_config(read_toml(path, "account file"), path)
