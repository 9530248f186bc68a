"""What every session of one server process shares, and the per-session protocol settings."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from postoffice.auth.authenticator import Authenticator
from postoffice.auth.oauth import BearerValidator, IntrospectionValidator, JwksValidator
from postoffice.auth.throttle import FailureThrottle
from postoffice.config import Config
from postoffice.proto.server import ServerSettings
from postoffice.server.limits import ConnectionLimits
from postoffice.tls import ListenerContexts

if TYPE_CHECKING:
    from postoffice.auth.base import UserRecord
    from postoffice.server.login import MaildropPlace
    from postoffice.server.session import Pop3Session


READ_OCTETS = 65536


@dataclass(slots=True)
class ServerContext:
    config: Config
    authenticator: Authenticator
    throttle: FailureThrottle
    limits: ConnectionLimits
    tls: ListenerContexts | None = None
    bearer_validator: BearerValidator | None = None
    sessions: set[Pop3Session] = field(default_factory=set)
    hostname: str = field(default_factory=socket.gethostname)
    _trusted: dict[str, bool] = field(default_factory=dict)
    _settings: dict[tuple[bool, bool, bool], ServerSettings] = field(default_factory=dict)
    read_buffer: memoryview = field(default_factory=lambda: memoryview(bytearray(READ_OCTETS)))
    """Where sessions receive into (``Pop3Session.get_buffer``): one for the whole server."""
    maildrop_places: dict[UserRecord, MaildropPlace] = field(default_factory=dict)
    """Each user's maildrop path and how it opened last (``login.py``), by user record."""

    def __post_init__(self) -> None:
        oauth = self.config.oauth
        if oauth.jwks_file is not None:
            self.bearer_validator = JwksValidator(
                oauth.jwks_file,
                issuer=oauth.issuer,
                audience=oauth.audience,
                username_claim=oauth.username_claim,
            )
        elif oauth.introspection_command:
            self.bearer_validator = IntrospectionValidator(
                oauth.introspection_command, timeout=oauth.timeout
            )

    def is_trusted(self, peer_ip: str) -> bool:
        """Loopback, or inside ``auth.trusted_networks`` (remembered per address)."""
        trusted = self._trusted.get(peer_ip)
        if trusted is None:
            if len(self._trusted) > 4096:
                self._trusted.clear()
            trusted = self._trusted[peer_ip] = self._is_trusted(peer_ip)
        return trusted

    def _is_trusted(self, peer_ip: str) -> bool:
        try:
            address = ipaddress.ip_address(peer_ip)
        except ValueError:
            return peer_ip == "local"  # a Unix socket
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_loopback:
            return True
        return any(address in network for network in self.config.auth.trusted_networks)

    def plaintext_allowed(self, peer_ip: str, *, tls_active: bool) -> bool:
        """May USER/PASS and plaintext SASL be used now (RFC 2595 §2.3, RFC 8314 §4.1)?"""
        policy = self.config.auth.plaintext
        if tls_active or policy == "always":
            return True
        if policy == "never":
            return False
        return self.is_trusted(peer_ip)

    def sasl_mechanisms(self, *, tls_active: bool) -> tuple[str, ...]:
        """Enabled mechanisms usable now: -PLUS ones need TLS channel bindings."""
        return tuple(
            name for name in self.config.auth.mechanisms if tls_active or not name.endswith("-PLUS")
        )

    def session_settings(self, peer_ip: str, *, implicit_tls: bool) -> ServerSettings:
        pop3 = self.config.pop3
        if pop3.apop:  # a fresh timestamp per session
            return self._make_settings(peer_ip, implicit_tls=implicit_tls)
        # Otherwise shared by every session alike (one object, not one per connection).
        key = (
            implicit_tls,
            self.tls is not None,
            self.plaintext_allowed(peer_ip, tls_active=implicit_tls),
        )
        settings = self._settings.get(key)
        if settings is None:
            settings = self._settings[key] = self._make_settings(peer_ip, implicit_tls=implicit_tls)
        return settings

    def _make_settings(self, peer_ip: str, *, implicit_tls: bool) -> ServerSettings:
        pop3 = self.config.pop3
        timestamp = None
        if pop3.apop:
            timestamp = f"<{os.getpid()}.{secrets.token_hex(8)}@{self.hostname}>"
        return ServerSettings(
            greeting=pop3.greeting,
            apop_timestamp=timestamp,
            stls=pop3.stls and self.tls is not None and not implicit_tls,
            tls_active=implicit_tls,
            plaintext_allowed=self.plaintext_allowed(peer_ip, tls_active=implicit_tls),
            sasl_mechanisms=self.sasl_mechanisms(tls_active=implicit_tls),
            expire=pop3.expire,
            login_delay=int(pop3.login_delay) if pop3.login_delay else None,
            implementation=pop3.implementation or None,
            max_line_octets=pop3.max_line_length,
            max_bad_commands=pop3.max_bad_commands,
            max_login_failures=pop3.max_login_failures,
        )
