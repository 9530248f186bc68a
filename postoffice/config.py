"""The server's configuration: TOML in, frozen dataclasses out, every error naming its key.

Keys not given take the embedded defaults, which are what ``make run`` serves: data under
``./var``, POP3 on ``127.0.0.1:1110``. Relative paths are relative to the configuration
file (or to the working directory when there is none).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postoffice.errors import ConfigError
from postoffice.storage.uidl import parse_uidl_format
from postoffice.toml_files import read_toml
from postoffice.units import parse_duration as parse_duration  # also for callers of config
from postoffice.units import parse_size as parse_size

DEFAULT_LISTEN = ("127.0.0.1:1110",)
DEFAULT_TLS_LISTEN = ("127.0.0.1:1995",)
DEFAULT_LMTP_LISTEN = ("127.0.0.1:2424",)
DEFAULT_MAX_MESSAGE_SIZE = 50_000_000
SASL_MECHANISMS = (
    "PLAIN",
    "LOGIN",
    "SCRAM-SHA-256",
    "SCRAM-SHA-256-PLUS",
    "OAUTHBEARER",
    "XOAUTH2",
)
DEFAULT_MECHANISMS = ("PLAIN", "LOGIN")
PLAINTEXT_POLICIES = ("never", "loopback", "always")
MAILDIR_PLACEHOLDERS = ("user", "localpart", "domain", "home", "data_dir")
MINIMUM_IDLE_TIMEOUT = 600.0  # RFC 1939 §3: the autologout timer must be at least 10 minutes


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class UnixAddress:
    """A Unix-domain socket to listen on (``"unix:path"`` in the configuration)."""

    path: Path

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    """Certificate and protocol settings of one listener (``[tls]`` overlaid by its own)."""

    certificate: Path
    private_key: Path
    min_version: str = "1.2"
    ciphers: str = ""
    self_signed: bool = False
    """No certificate was configured: make a self-signed one on first start."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Pop3sConfig:
    listen: tuple[ListenAddress, ...]
    tls: TlsConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessConfig:
    user: str = ""
    group: str = ""
    workers: int = 0
    """Server processes; 0: one per CPU core."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Pop3Config:
    listen: tuple[ListenAddress, ...]
    stls: bool = True
    tls: TlsConfig
    greeting: str = "postoffice ready"
    implementation: str = ""
    expire: str = "NEVER"
    login_delay: float = 0.0
    apop: bool = False
    max_line_length: int = 255
    max_bad_commands: int = 20
    max_login_failures: int = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    passwd_file: Path
    plaintext: str = "loopback"
    mechanisms: tuple[str, ...] = DEFAULT_MECHANISMS
    lowercase_names: bool = False
    failure_delay: float = 2.0
    failure_delay_max: float = 15.0
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    hash_threads: int = 4
    cache_ttl: float = 3600.0
    """Seconds a password verified against an expensive hash is remembered (0: never)."""
    cache_entries: int = 100_000
    """Users remembered at most, per server process."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OAuthConfig:
    """How OAUTHBEARER and XOAUTH2 bearer tokens are validated."""

    jwks_file: Path | None = None
    issuer: str = ""
    audience: str = ""
    username_claim: str = "sub"
    introspection_command: str = ""
    timeout: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MailConfig:
    maildir: str
    """Template with {user}, {localpart}, {domain}, {home}, {data_dir}; an absolute path
    once the placeholders are filled in (relative templates are made absolute at load)."""
    no_flag_updates: bool = False
    uidl_format: str = "postoffice"
    """Where UIDLs come from: "postoffice", "dovecot[:<pop3_uidl_format>]", "courier" or
    "x-uidl" (see ``storage/uidl.py``)."""
    quota: int = 0
    """Octets a user's maildrop may hold (0: no quota); a passwd-file extra field
    ``userdb_quota_rule=*:storage=<size>`` sets it per user."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LmtpConfig:
    """The LMTP listener (RFC 2033) that takes mail in from the MTA."""

    listen: tuple[ListenAddress | UnixAddress, ...] = (ListenAddress(host="127.0.0.1", port=2424),)
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    """Largest message accepted, in octets (announced as SIZE; 0: no limit)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    max_connections: int = 1000
    max_connections_per_ip: int = 20
    max_sessions_per_user: int = 10
    max_connections_per_user_ip: int = 10
    login_timeout: float = 60.0
    idle_timeout: float = 600.0
    send_timeout: float = 300.0
    handshake_timeout: float = 10.0
    shutdown_timeout: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    data_dir: Path
    log_file: Path | None = None
    log_level: str = "info"
    pop3: Pop3Config
    pop3s: Pop3sConfig
    process: ProcessConfig = field(default_factory=ProcessConfig)
    auth: AuthConfig
    oauth: OAuthConfig = field(default_factory=OAuthConfig)
    mail: MailConfig
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    lmtp: LmtpConfig = field(default_factory=LmtpConfig)
    source: Path | None = None


def parse_listen(value: str, key: str) -> ListenAddress:
    """``host:port`` or ``[v6]:port``; port 0 asks the system for a free port."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([^:\[\]]+):([0-9]{1,5})", value)
    if not match:
        raise ConfigError(f'{key}: expected "host:port" or "[v6 address]:port", got {value!r}')
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ConfigError(f"{key}: port {port} is out of range")
    return ListenAddress(host=host, port=port)


class _Table:
    """Reads one TOML table, remembering which keys were used so leftovers are errors."""

    def __init__(self, data: Mapping[str, Any], name: str) -> None:
        self.data = data
        self.name = name
        self.used: set[str] = set()

    def key(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        return self.data.get(key, default)

    def string(self, key: str, default: str) -> str:
        value = self.get(key, default)
        if not isinstance(value, str):
            raise ConfigError(f"{self.key(key)}: expected a string, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(key)}: expected true or false, got {value!r}")
        return value

    def integer(self, key: str, default: int, *, minimum: int = 0, maximum: int = 2**31) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.key(key)}: expected a whole number, got {value!r}")
        if not minimum <= value <= maximum:
            raise ConfigError(f"{self.key(key)}: must be between {minimum} and {maximum}")
        return value

    def duration(self, key: str, default: float) -> float:
        return parse_duration(self.get(key, default), self.key(key))

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{self.key(key)}: expected a list of strings, got {value!r}")
        return tuple(value)

    def table(self, key: str) -> _Table:
        value = self.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.key(key)}: expected a table")
        return _Table(value, self.key(key))

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            names = ", ".join(self.key(key) for key in unknown)
            raise ConfigError(f"{names}: unknown key")


def load_config(
    path: Path | None = None, *, data: Mapping[str, Any] | None = None, base: Path | None = None
) -> Config:
    """Load and validate a configuration file; ``None`` gives the embedded default.

    ``data`` (already parsed TOML) and ``base`` (the folder relative paths start from) serve
    callers that build a configuration in memory.
    """
    base = base or Path.cwd()
    if path is not None:
        data = read_toml(path, "configuration file")
        base = path.resolve().parent
    root = _Table(data or {}, "")

    def resolve(value: str) -> Path:
        return (base / Path(value).expanduser()).resolve()

    data_dir = resolve(root.string("data_dir", "var"))
    log_file_text = root.string("log_file", "")
    log_level = root.string("log_level", "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log_level: expected one of debug, info, warning, error")

    tls_table = root.table("tls")
    base_tls = _tls_settings(tls_table, None, resolve, data_dir)
    tls_table.finish()

    pop3_table = root.table("pop3")
    pop3_tls_table = pop3_table.table("tls")
    pop3_tls = _tls_settings(pop3_tls_table, base_tls, resolve, data_dir)
    pop3_tls_table.finish()
    listen = tuple(
        parse_listen(item, pop3_table.key("listen"))
        for item in pop3_table.strings("listen", DEFAULT_LISTEN)
    )
    expire = pop3_table.get("expire", "NEVER")
    if isinstance(expire, int) and not isinstance(expire, bool) and expire >= 0:
        expire = str(expire)
    if not isinstance(expire, str) or not (expire == "NEVER" or expire.isdigit()):
        raise ConfigError('pop3.expire: expected "NEVER" or a number of days')
    pop3 = Pop3Config(
        listen=listen,
        stls=pop3_table.boolean("stls", True),
        tls=pop3_tls,
        greeting=pop3_table.string("greeting", "postoffice ready"),
        implementation=pop3_table.string("implementation", ""),
        expire=expire,
        login_delay=pop3_table.duration("login_delay", 0.0),
        apop=pop3_table.boolean("apop", False),
        max_line_length=pop3_table.integer("max_line_length", 255, minimum=255, maximum=65536),
        max_bad_commands=pop3_table.integer("max_bad_commands", 20, minimum=1),
        max_login_failures=pop3_table.integer("max_login_failures", 3, minimum=1),
    )
    pop3_table.finish()

    pop3s_table = root.table("pop3s")
    pop3s_tls_table = pop3s_table.table("tls")
    pop3s = Pop3sConfig(
        listen=tuple(
            parse_listen(item, pop3s_table.key("listen"))
            for item in pop3s_table.strings("listen", DEFAULT_TLS_LISTEN)
        ),
        tls=_tls_settings(pop3s_tls_table, base_tls, resolve, data_dir),
    )
    pop3s_tls_table.finish()
    pop3s_table.finish()

    process_table = root.table("process")
    process = ProcessConfig(
        user=process_table.string("user", ""),
        group=process_table.string("group", ""),
        workers=process_table.integer("workers", 0, minimum=0, maximum=1024),
    )
    process_table.finish()

    auth_table = root.table("auth")
    passwd_text = auth_table.string("passwd_file", "")
    networks = []
    for item in auth_table.strings("trusted_networks", ()):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as error:
            raise ConfigError(f"auth.trusted_networks: {item!r} is not a network") from error
    plaintext = auth_table.string("plaintext", "loopback")
    if plaintext not in PLAINTEXT_POLICIES:
        raise ConfigError('auth.plaintext: expected "never", "loopback" or "always"')
    mechanisms = tuple(
        name.upper() for name in auth_table.strings("mechanisms", DEFAULT_MECHANISMS)
    )
    for name in mechanisms:
        if name not in SASL_MECHANISMS:
            known = ", ".join(SASL_MECHANISMS)
            raise ConfigError(f"auth.mechanisms: unknown mechanism {name!r}; known: {known}")
    auth = AuthConfig(
        passwd_file=resolve(passwd_text) if passwd_text else data_dir / "passwd",
        plaintext=plaintext,
        mechanisms=mechanisms,
        lowercase_names=auth_table.boolean("lowercase_names", False),
        failure_delay=auth_table.duration("failure_delay", 2.0),
        failure_delay_max=auth_table.duration("failure_delay_max", 15.0),
        trusted_networks=tuple(networks),
        hash_threads=auth_table.integer("hash_threads", 4, minimum=1, maximum=256),
        cache_ttl=auth_table.duration("cache_ttl", 3600.0),
        cache_entries=auth_table.integer("cache_entries", 100_000, minimum=1),
    )
    auth_table.finish()

    oauth_table = root.table("oauth")
    jwks_text = oauth_table.string("jwks_file", "")
    oauth = OAuthConfig(
        jwks_file=resolve(jwks_text) if jwks_text else None,
        issuer=oauth_table.string("issuer", ""),
        audience=oauth_table.string("audience", ""),
        username_claim=oauth_table.string("username_claim", "sub"),
        introspection_command=oauth_table.string("introspection_command", ""),
        timeout=oauth_table.duration("timeout", 10.0),
    )
    oauth_table.finish()
    if oauth.jwks_file and oauth.introspection_command:
        raise ConfigError("oauth: give jwks_file or introspection_command, not both")
    if any(name in ("OAUTHBEARER", "XOAUTH2") for name in auth.mechanisms) and not (
        oauth.jwks_file or oauth.introspection_command
    ):
        raise ConfigError(
            "auth.mechanisms: OAUTHBEARER/XOAUTH2 need oauth.jwks_file or "
            "oauth.introspection_command"
        )

    mail_table = root.table("mail")
    template = mail_table.string("maildir", "{data_dir}/mail/{user}/Maildir")
    _check_template(template, "mail.maildir")
    if not template.startswith(("/", "{data_dir}", "{home}", "~")):
        template = str(base) + "/" + template
    uidl_format = mail_table.string("uidl_format", "postoffice")
    try:
        parse_uidl_format(uidl_format)
    except ValueError as error:
        raise ConfigError(f"mail.uidl_format: {error}") from error
    mail = MailConfig(
        maildir=template,
        no_flag_updates=mail_table.boolean("no_flag_updates", False),
        uidl_format=uidl_format,
        quota=parse_size(mail_table.get("quota", 0), "mail.quota"),
    )
    mail_table.finish()

    lmtp_table = root.table("lmtp")
    lmtp = LmtpConfig(
        listen=tuple(
            _lmtp_listen(item, lmtp_table.key("listen"), resolve)
            for item in lmtp_table.strings("listen", DEFAULT_LMTP_LISTEN)
        ),
        max_message_size=parse_size(
            lmtp_table.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE),
            "lmtp.max_message_size",
        ),
    )
    lmtp_table.finish()

    limits_table = root.table("limits")
    idle_timeout = limits_table.duration("idle_timeout", 600.0)
    if idle_timeout < MINIMUM_IDLE_TIMEOUT:
        raise ConfigError("limits.idle_timeout: RFC 1939 requires at least 10 minutes (600)")
    limits = LimitsConfig(
        max_connections=limits_table.integer("max_connections", 1000, minimum=1),
        max_connections_per_ip=limits_table.integer("max_connections_per_ip", 20, minimum=1),
        max_sessions_per_user=limits_table.integer("max_sessions_per_user", 10, minimum=1),
        max_connections_per_user_ip=limits_table.integer(
            "max_connections_per_user_ip", 10, minimum=1
        ),
        login_timeout=limits_table.duration("login_timeout", 60.0),
        idle_timeout=idle_timeout,
        send_timeout=limits_table.duration("send_timeout", 300.0),
        shutdown_timeout=limits_table.duration("shutdown_timeout", 10.0),
        handshake_timeout=limits_table.duration("handshake_timeout", 10.0),
    )
    limits_table.finish()
    root.finish()

    return Config(
        data_dir=data_dir,
        log_file=resolve(log_file_text) if log_file_text else None,
        log_level=log_level,
        pop3=pop3,
        pop3s=pop3s,
        process=process,
        auth=auth,
        oauth=oauth,
        mail=mail,
        limits=limits,
        lmtp=lmtp,
        source=path.resolve() if path is not None else None,
    )


def _lmtp_listen(
    value: str, key: str, resolve: Callable[[str], Path]
) -> ListenAddress | UnixAddress:
    """``host:port``, ``[v6]:port`` or ``unix:path`` (relative to the configuration file)."""
    if value.startswith("unix:"):
        if not value[5:]:
            raise ConfigError(f'{key}: expected "unix:<path>", got {value!r}')
        return UnixAddress(path=resolve(value[5:]))
    return parse_listen(value, key)


def _tls_settings(
    table: _Table, base: TlsConfig | None, resolve: Callable[[str], Path], data_dir: Path
) -> TlsConfig:
    """One TLS table, keys not given taken from ``base`` (the global ``[tls]``)."""
    certificate_text = table.string("certificate", "")
    key_text = table.string("private_key", "")
    if bool(certificate_text) != bool(key_text):
        raise ConfigError(f"{table.key('certificate')}: give both certificate and private_key")
    min_version = table.string("min_version", base.min_version if base else "1.2")
    if min_version not in ("1.2", "1.3"):
        raise ConfigError(f'{table.key("min_version")}: expected "1.2" or "1.3"')
    ciphers = table.string("ciphers", base.ciphers if base else "")
    if certificate_text:
        return TlsConfig(
            certificate=resolve(certificate_text),
            private_key=resolve(key_text),
            min_version=min_version,
            ciphers=ciphers,
        )
    if base is not None:
        return TlsConfig(
            certificate=base.certificate,
            private_key=base.private_key,
            min_version=min_version,
            ciphers=ciphers,
            self_signed=base.self_signed,
        )
    return TlsConfig(
        certificate=data_dir / "tls" / "fullchain.pem",
        private_key=data_dir / "tls" / "key.pem",
        min_version=min_version,
        ciphers=ciphers,
        self_signed=True,
    )


def _check_template(template: str, key: str) -> None:
    for name in re.findall(r"\{([^{}]*)\}", template):
        if name not in MAILDIR_PLACEHOLDERS:
            allowed = ", ".join("{" + item + "}" for item in MAILDIR_PLACEHOLDERS)
            raise ConfigError(f"{key}: unknown placeholder {{{name}}}; use {allowed}")
    if "{user}" not in template and "{localpart}" not in template and "{home}" not in template:
        raise ConfigError(f"{key}: must contain {{user}}, {{localpart}} or {{home}}")
