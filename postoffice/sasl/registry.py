"""Mechanism names to machines, and which names a connection offers.

The machines' modules are imported when a machine is first made: a client logging in with
PLAIN needs neither SCRAM nor the bearer-token mechanisms (and their ``json``).

Every mechanism carries two flags. ``plaintext``: the secret itself crosses the wire (PLAIN,
LOGIN, and the bearer-token mechanisms, since a token is replayable like a password,
RFC 7628 §5), so the server hides it where plaintext login is not allowed, before TLS.
``channel_binding``: the -PLUS variant, offered only when the TLS layer gave binding data.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from importlib import import_module
from types import MappingProxyType

from postoffice.errors import ConfigError
from postoffice.sasl.errors import UnknownMechanismError
from postoffice.sasl.mechanism import (
    ClientCredentials,
    ClientMechanism,
    ServerMechanism,
    ServerOptions,
)


def _server(module: str, name: str) -> Callable[[ServerOptions], ServerMechanism]:
    """Makes the server machine ``name`` of ``postoffice.sasl.<module>``."""

    def make(options: ServerOptions) -> ServerMechanism:
        machine: type[ServerMechanism] = getattr(import_module(f"postoffice.sasl.{module}"), name)
        return machine(options)

    return make


def _client(module: str, name: str) -> Callable[[ClientCredentials], ClientMechanism]:
    """Makes the client machine ``name`` of ``postoffice.sasl.<module>``."""

    def make(credentials: ClientCredentials) -> ClientMechanism:
        machine: type[ClientMechanism] = getattr(import_module(f"postoffice.sasl.{module}"), name)
        return machine(credentials)

    return make


@dataclass(frozen=True, slots=True, kw_only=True)
class MechanismInfo:
    name: str
    server: Callable[[ServerOptions], ServerMechanism]
    client: Callable[[ClientCredentials], ClientMechanism]
    plaintext: bool
    """The password or token crosses the wire as is: hide before TLS."""
    channel_binding: bool
    """A -PLUS mechanism: offer only with TLS channel-binding data."""
    credential: str
    """What the client needs: ``password`` or ``token``."""


_ALL = (
    # Strongest first: a client picks the first one it can use.
    MechanismInfo(
        name="SCRAM-SHA-256-PLUS",
        server=_server("scram", "ScramPlusServer"),
        client=_client("scram", "ScramPlusClient"),
        plaintext=False,
        channel_binding=True,
        credential="password",
    ),
    MechanismInfo(
        name="SCRAM-SHA-256",
        server=_server("scram", "ScramServer"),
        client=_client("scram", "ScramClient"),
        plaintext=False,
        channel_binding=False,
        credential="password",
    ),
    MechanismInfo(
        name="OAUTHBEARER",
        server=_server("oauth", "OAuthBearerServer"),
        client=_client("oauth", "OAuthBearerClient"),
        plaintext=True,
        channel_binding=False,
        credential="token",
    ),
    MechanismInfo(
        name="XOAUTH2",
        server=_server("oauth", "XOAuth2Server"),
        client=_client("oauth", "XOAuth2Client"),
        plaintext=True,
        channel_binding=False,
        credential="token",
    ),
    MechanismInfo(
        name="PLAIN",
        server=_server("plain", "PlainServer"),
        client=_client("plain", "PlainClient"),
        plaintext=True,
        channel_binding=False,
        credential="password",
    ),
    MechanismInfo(
        name="LOGIN",
        server=_server("plain", "LoginServer"),
        client=_client("plain", "LoginClient"),
        plaintext=True,
        channel_binding=False,
        credential="password",
    ),
)

MECHANISMS = MappingProxyType({info.name: info for info in _ALL})
"""Every known mechanism by name, strongest first."""

PLAINTEXT_MECHANISMS = frozenset(info.name for info in _ALL if info.plaintext)


def enabled_mechanisms(
    configured: Iterable[str], *, key: str = "auth.mechanisms"
) -> tuple[str, ...]:
    """The configured names, upper-cased, in order, without repeats; ConfigError names an
    unknown one."""
    enabled: list[str] = []
    for name in configured:
        upper = name.upper()
        if upper not in MECHANISMS:
            known = ", ".join(MECHANISMS)
            raise ConfigError(f"{key}: unknown SASL mechanism {name!r} (known: {known})")
        if upper not in enabled:
            enabled.append(upper)
    return tuple(enabled)


def advertised_mechanisms(
    enabled: Iterable[str], *, plaintext_allowed: bool, channel_bindings: Collection[str] = ()
) -> tuple[str, ...]:
    """What one connection lists in CAPA ``SASL`` and bare AUTH (RFC 2449 §6.3, RFC 5034).

    ``plaintext_allowed``: TLS is active, or the peer is trusted (issue #3's
    ``auth.plaintext``). ``channel_bindings``: the binding types the TLS layer provides.
    """
    return tuple(
        name
        for name in enabled
        if (plaintext_allowed or not MECHANISMS[name].plaintext)
        and (not MECHANISMS[name].channel_binding or bool(channel_bindings))
    )


def server_mechanism(
    name: str, options: ServerOptions | None = None, *, enabled: Collection[str] | None = None
) -> ServerMechanism:
    """A fresh server machine for ``name`` (as the client sent it, any case).

    Raises UnknownMechanismError if the name is unknown or not in ``enabled``.
    """
    upper = name.upper()
    info = MECHANISMS.get(upper)
    if info is None or (enabled is not None and upper not in enabled):
        raise UnknownMechanismError("unsupported SASL mechanism")
    return info.server(options or ServerOptions())


def client_mechanism(name: str, credentials: ClientCredentials) -> ClientMechanism:
    info = MECHANISMS.get(name.upper())
    if info is None:
        raise UnknownMechanismError(f"unknown SASL mechanism {name!r}")
    return info.client(credentials)


def choose_client_mechanism(
    offered: Iterable[str],
    credentials: ClientCredentials,
    *,
    allowed: Collection[str] | None = None,
    plaintext_allowed: bool = True,
) -> str | None:
    """The strongest mechanism the server offers that ``credentials`` can drive.

    -PLUS needs channel-binding data; a plaintext mechanism needs ``plaintext_allowed``
    (the connection is under TLS); ``allowed`` narrows the choice to configured names.
    """
    offered_names = {name.upper() for name in offered}
    for info in _ALL:
        if info.name not in offered_names or (allowed is not None and info.name not in allowed):
            continue
        if info.plaintext and not plaintext_allowed:
            continue
        if info.channel_binding and credentials.channel_binding is None:
            continue
        if info.credential == "password" and credentials.password is None:
            continue
        if info.credential == "token" and credentials.token is None:
            continue
        return info.name
    return None
