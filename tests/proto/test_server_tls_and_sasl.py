"""STLS and AUTH in the server machine: injection-proof STLS, SASL framing, CAPA per state."""

from __future__ import annotations

import base64

import pytest

from postoffice.proto.events import (
    NEED_DATA,
    PasswordLogin,
    SaslCancelled,
    SaslResponse,
    SaslStart,
    StartTls,
)
from postoffice.proto.server import LoginFailure, ServerConnection, ServerSettings
from postoffice.proto.states import State

from .driver import Message

PLAIN_BEFORE_TLS = ServerSettings(
    stls=True,
    plaintext_allowed=False,
    sasl_mechanisms=("PLAIN", "LOGIN", "SCRAM-SHA-256"),
)


def machine(settings: ServerSettings = PLAIN_BEFORE_TLS) -> ServerConnection[Message]:
    connection: ServerConnection[Message] = ServerConnection(settings)
    connection.data_to_send()  # the greeting
    return connection


def capa(connection: ServerConnection[Message]) -> list[bytes]:
    connection.receive_data(b"CAPA\r\n")
    assert connection.next_event() is NEED_DATA
    return connection.data_to_send().split(b"\r\n")[1:-2]


def test_capa_before_tls_offers_stls_and_hides_plaintext_logins() -> None:
    assert capa(machine()) == [
        b"TOP",
        b"STLS",
        b"SASL SCRAM-SHA-256",
        b"UIDL",
        b"RESP-CODES",
        b"AUTH-RESP-CODE",
        b"PIPELINING",
        b"EXPIRE NEVER",
    ]


def test_capa_after_tls_drops_stls_and_shows_plaintext_logins() -> None:
    connection = machine()
    connection.receive_data(b"STLS\r\n")
    assert isinstance(connection.next_event(), StartTls)
    assert connection.data_to_send() == b"+OK begin TLS negotiation\r\n"
    connection.tls_started(plaintext_allowed=True)
    assert capa(connection) == [
        b"TOP",
        b"USER",
        b"SASL PLAIN LOGIN SCRAM-SHA-256",
        b"UIDL",
        b"RESP-CODES",
        b"AUTH-RESP-CODE",
        b"PIPELINING",
        b"EXPIRE NEVER",
    ]


@pytest.mark.parametrize(
    "after", [b"CAPA\r\n", b"USER a\r\nPASS b\r\n", b"QUIT\r\n", b"\x16\x03\x01garbage"]
)
def test_octets_after_stls_are_never_read_as_commands(after: bytes) -> None:
    connection = machine()
    connection.receive_data(b"STLS\r\n" + after)
    event = connection.next_event()
    assert event == StartTls(discarded=len(after))
    assert connection.data_to_send() == b"+OK begin TLS negotiation\r\n"
    connection.receive_data(b"NOOP\r\nQUIT\r\n")  # still before the handshake: dropped too
    connection.tls_started(plaintext_allowed=True)
    assert connection.next_event() is NEED_DATA
    assert connection.data_to_send() == b""
    assert connection.state is State.AUTHORIZATION
    assert connection.discarded_octets == len(after) + len(b"NOOP\r\nQUIT\r\n")


def test_user_given_before_tls_is_forgotten() -> None:
    connection = machine()
    connection.receive_data(b"USER alice\r\n")
    connection.next_event()
    connection.receive_data(b"STLS\r\n")
    connection.next_event()
    connection.tls_started(plaintext_allowed=True)
    connection.data_to_send()
    connection.receive_data(b"PASS secret\r\n")
    assert connection.next_event() is NEED_DATA
    assert connection.data_to_send() == b"-ERR send USER first\r\n"


def test_stls_twice_or_after_login_is_refused() -> None:
    connection = machine()
    connection.receive_data(b"STLS\r\n")
    connection.next_event()
    connection.tls_started(plaintext_allowed=True)
    connection.data_to_send()
    connection.receive_data(b"STLS\r\n")
    assert connection.next_event() is NEED_DATA
    assert connection.data_to_send() == b"-ERR TLS is already active\r\n"
    connection.receive_data(b"USER a\r\nPASS b\r\n")
    assert isinstance(connection.next_event(), PasswordLogin)
    connection.login_accepted([])
    connection.data_to_send()
    connection.receive_data(b"STLS\r\n")
    assert connection.next_event() is NEED_DATA
    assert connection.data_to_send() == b"-ERR STLS is not allowed in the TRANSACTION state\r\n"


def test_stls_not_offered_without_tls() -> None:
    connection = machine(ServerSettings())
    connection.receive_data(b"STLS\r\n")
    assert connection.next_event() is NEED_DATA
    assert connection.data_to_send() == b"-ERR STLS is not available\r\n"


def test_bare_auth_lists_visible_mechanisms() -> None:
    connection = machine()
    connection.receive_data(b"AUTH\r\n")
    connection.next_event()
    assert connection.data_to_send() == b"+OK supported mechanisms follow\r\nSCRAM-SHA-256\r\n.\r\n"


def test_auth_exchange_with_challenges() -> None:
    connection = machine(ServerSettings(sasl_mechanisms=("LOGIN",)))
    connection.receive_data(b"auth login\r\n")
    assert connection.next_event() == SaslStart(mechanism="LOGIN", initial_response=None)
    connection.sasl_challenge(b"Username:")
    assert connection.data_to_send() == b"+ VXNlcm5hbWU6\r\n"
    connection.receive_data(base64.b64encode(b"alice") + b"\r\n")
    assert connection.next_event() == SaslResponse(data=b"alice")
    connection.sasl_challenge(b"Password:")
    connection.receive_data(base64.b64encode(b"x" * 1000) + b"\r\n")  # longer than 255
    assert connection.next_event() == SaslResponse(data=b"x" * 1000)
    connection.login_accepted([], username="alice")
    assert connection.state is State.TRANSACTION


def test_auth_initial_response_and_empty_response() -> None:
    connection = machine(ServerSettings(sasl_mechanisms=("PLAIN",)))
    connection.receive_data(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
    assert connection.next_event() == SaslStart(
        mechanism="PLAIN", initial_response=b"\0alice\0secret"
    )
    connection.login_rejected(LoginFailure.BAD_CREDENTIALS)
    assert connection.data_to_send() == b"-ERR [AUTH] authentication failed\r\n"
    connection.receive_data(b"AUTH PLAIN =\r\n")
    assert connection.next_event() == SaslStart(mechanism="PLAIN", initial_response=b"")


def test_auth_cancel_and_bad_base64() -> None:
    connection = machine(ServerSettings(sasl_mechanisms=("LOGIN",)))
    connection.receive_data(b"AUTH LOGIN\r\n")
    connection.next_event()
    connection.sasl_challenge(b"Username:")
    connection.data_to_send()
    connection.receive_data(b"*\r\n")
    assert connection.next_event() == SaslCancelled(reason="cancelled by client")
    assert connection.data_to_send() == b"-ERR authentication cancelled\r\n"
    connection.receive_data(b"AUTH LOGIN\r\n")
    connection.next_event()
    connection.sasl_challenge(b"Username:")
    connection.data_to_send()
    connection.receive_data(b"not base64!\r\n")
    assert connection.next_event() == SaslCancelled(reason="malformed response")
    assert connection.data_to_send() == b"-ERR malformed SASL response\r\n"
    connection.receive_data(b"AUTH LOGIN %%%\r\nAUTH NOPE\r\n")
    assert connection.next_event() is NEED_DATA
    assert connection.data_to_send() == (
        b"-ERR malformed base64 in initial response\r\n"
        b"-ERR unsupported authentication mechanism\r\n"
    )
