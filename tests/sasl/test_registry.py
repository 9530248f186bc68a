"""Mechanism names: configuration, what a connection advertises, and the client's choice."""

from __future__ import annotations

import pytest

from postoffice.errors import ConfigError
from postoffice.sasl import (
    MECHANISMS,
    PLAINTEXT_MECHANISMS,
    ChannelBinding,
    ClientCredentials,
    ServerOptions,
    UnknownMechanismError,
    advertised_mechanisms,
    choose_client_mechanism,
    client_mechanism,
    enabled_mechanisms,
    server_mechanism,
)
from postoffice.secret import Secret

ALL = ("PLAIN", "LOGIN", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "OAUTHBEARER", "XOAUTH2")
EXPORTER = ChannelBinding(type="tls-exporter", data=b"\x01" * 32)


def test_every_name_the_package_exports_is_there() -> None:
    import postoffice.sasl

    for name in postoffice.sasl.__all__:
        assert getattr(postoffice.sasl, name) is not None
    with pytest.raises(AttributeError):
        postoffice.sasl.no_such_name  # noqa: B018


def test_every_mechanism_makes_its_machines() -> None:
    credentials = ClientCredentials(
        username="alice", password=Secret("pw"), token=Secret("t"), channel_binding=EXPORTER
    )
    for info in MECHANISMS.values():
        assert info.server(ServerOptions()).name == info.name
        assert info.client(credentials).name == info.name


def test_every_mechanism_is_registered_under_its_own_name() -> None:
    assert set(MECHANISMS) == set(ALL)
    for name, info in MECHANISMS.items():
        assert info.name == name
        assert info.server(ServerOptions()).name == name
        assert info.client(ClientCredentials(username="u")).name == name


def test_secrets_on_the_wire_are_flagged_plaintext() -> None:
    assert {"PLAIN", "LOGIN"} <= PLAINTEXT_MECHANISMS
    assert {"OAUTHBEARER", "XOAUTH2"} <= PLAINTEXT_MECHANISMS  # bearer tokens replay
    assert not {"SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"} & PLAINTEXT_MECHANISMS


def test_enabled_mechanisms_normalise_the_configuration() -> None:
    assert enabled_mechanisms(["plain", "SCRAM-SHA-256", "Plain", "login"]) == (
        "PLAIN",
        "SCRAM-SHA-256",
        "LOGIN",
    )
    assert enabled_mechanisms([]) == ()
    with pytest.raises(ConfigError, match=r"auth\.mechanisms: unknown SASL mechanism 'CRAM-MD5'"):
        enabled_mechanisms(["PLAIN", "CRAM-MD5"])


@pytest.mark.parametrize(
    ("plaintext_allowed", "bindings", "advertised"),
    [
        (False, (), ("SCRAM-SHA-256",)),
        (False, ("tls-exporter",), ("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS")),
        (True, (), ("PLAIN", "LOGIN", "SCRAM-SHA-256", "OAUTHBEARER", "XOAUTH2")),
        (True, ("tls-server-end-point",), ALL),
    ],
)
def test_advertised_mechanisms(
    plaintext_allowed: bool, bindings: tuple[str, ...], advertised: tuple[str, ...]
) -> None:
    assert (
        advertised_mechanisms(ALL, plaintext_allowed=plaintext_allowed, channel_bindings=bindings)
        == advertised
    )


def test_server_mechanism_lookup() -> None:
    assert server_mechanism("scram-sha-256").name == "SCRAM-SHA-256"
    assert server_mechanism("PLAIN", enabled=("PLAIN",)).name == "PLAIN"
    with pytest.raises(UnknownMechanismError):
        server_mechanism("LOGIN", enabled=("PLAIN",))
    with pytest.raises(UnknownMechanismError):
        server_mechanism("GSSAPI")
    with pytest.raises(UnknownMechanismError):
        client_mechanism("GSSAPI", ClientCredentials(username="u"))


def test_each_server_machine_is_fresh() -> None:
    assert server_mechanism("PLAIN") is not server_mechanism("PLAIN")


@pytest.mark.parametrize(
    ("offered", "credentials", "kwargs", "chosen"),
    [
        (ALL, ClientCredentials(username="u", password=Secret("p")), {}, "SCRAM-SHA-256"),
        (
            ALL,
            ClientCredentials(username="u", password=Secret("p"), channel_binding=EXPORTER),
            {},
            "SCRAM-SHA-256-PLUS",
        ),
        (("PLAIN", "LOGIN"), ClientCredentials(username="u", password=Secret("p")), {}, "PLAIN"),
        (("LOGIN",), ClientCredentials(username="u", password=Secret("p")), {}, "LOGIN"),
        (
            ("PLAIN", "LOGIN"),
            ClientCredentials(username="u", password=Secret("p")),
            {"plaintext_allowed": False},
            None,
        ),
        (ALL, ClientCredentials(username="u", token=Secret("t")), {}, "OAUTHBEARER"),
        (("xoauth2",), ClientCredentials(username="u", token=Secret("t")), {}, "XOAUTH2"),
        (
            ALL,
            ClientCredentials(username="u", password=Secret("p")),
            {"allowed": ("PLAIN",)},
            "PLAIN",
        ),
        ((), ClientCredentials(username="u", password=Secret("p")), {}, None),
        (ALL, ClientCredentials(username="u"), {}, None),
    ],
)
def test_client_chooses_the_strongest_usable(
    offered: tuple[str, ...],
    credentials: ClientCredentials,
    kwargs: dict[str, object],
    chosen: str | None,
) -> None:
    assert choose_client_mechanism(offered, credentials, **kwargs) == chosen  # type: ignore[arg-type]
