"""OAUTHBEARER (RFC 7628) and XOAUTH2 server tables, the JSON error round, and clients."""

from __future__ import annotations

import json

import pytest

from postoffice.sasl import (
    CANCEL,
    ClientCredentials,
    Failure,
    FailureReason,
    ServerOptions,
    Success,
    TokenRejected,
    ValidateToken,
)
from postoffice.sasl.errors import MalformedSaslError
from postoffice.sasl.framing import Cancel
from postoffice.sasl.oauth import (
    OAuthBearerClient,
    OAuthBearerServer,
    OAuthError,
    XOAuth2Client,
    XOAuth2Server,
    error_challenge,
)
from postoffice.secret import Secret
from tests.sasl.users import UserTable, serve

ALICE = Success(identity="alice", authcid="alice")
INVALID = Failure(reason=FailureReason.INVALID_TOKEN)
DENIED = Failure(reason=FailureReason.AUTHZID_DENIED)
CANCELLED = Failure(reason=FailureReason.CANCELLED)
ERROR_JSON = b'{"status":"invalid_token","scope":"pop3"}'


def bearer(authzid: str, token: str, *pairs: str) -> bytes:
    header = f"n,a={authzid}," if authzid else "n,,"
    body = "".join(pair + "\x01" for pair in (*pairs, f"auth=Bearer {token}"))
    return f"{header}\x01{body}\x01".encode()


def xoauth2(user: str, token: str) -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


OAUTHBEARER_TABLE: list[tuple[str, bytes | None, list[bytes | Cancel], list[bytes], object]] = [
    # (case, initial response, responses, challenges sent, outcome)
    ("good", bearer("alice", "tok-alice.1"), [], [], ALICE),
    ("good, no authzid", bearer("", "tok-alice.1"), [], [], ALICE),
    (
        "good, host and port",
        bearer("alice", "tok-alice.1", "host=pop.example", "port=995"),
        [],
        [],
        ALICE,
    ),
    ("good, after empty challenge", None, [bearer("alice", "tok-alice.1")], [b""], ALICE),
    ("scheme in lower case", b"n,,\x01auth=bearer tok-alice.1\x01\x01", [], [], ALICE),
    ("bad token", bearer("alice", "tok-wrong"), [b"\x01"], [ERROR_JSON], INVALID),
    ("wrong authzid", bearer("bob", "tok-alice.1"), [], [], DENIED),
    ("token for another user", bearer("alice", "tok-bob.2"), [b"\x01"], [ERROR_JSON], INVALID),
    ("cancel at the start", None, [CANCEL], [b""], CANCELLED),
    ("cancel at the error", bearer("alice", "tok-wrong"), [CANCEL], [ERROR_JSON], CANCELLED),
]


@pytest.mark.parametrize(
    ("initial", "responses", "challenges", "outcome"),
    [row[1:] for row in OAUTHBEARER_TABLE],
    ids=[row[0] for row in OAUTHBEARER_TABLE],
)
def test_oauthbearer_server(
    initial: bytes | None, responses: list[bytes | Cancel], challenges: list[bytes], outcome: object
) -> None:
    transcript = serve(OAuthBearerServer(), UserTable(), initial, responses)
    assert transcript.challenges == challenges
    assert transcript.outcome == outcome


def test_oauthbearer_request_carries_user_host_and_port() -> None:
    step = OAuthBearerServer().start(bearer("alice", "tok-alice.1", "host=pop.example", "port=995"))
    assert isinstance(step, ValidateToken)
    assert (step.mechanism, step.user, step.host, step.port) == (
        "OAUTHBEARER",
        "alice",
        "pop.example",
        995,
    )
    assert step.token.reveal() == "tok-alice.1"
    assert "tok-alice" not in repr(step)


def test_authzid_goes_to_the_caller_when_allowed() -> None:
    options = ServerOptions(allow_authzid=True)
    transcript = serve(OAuthBearerServer(options), UserTable(), bearer("bob", "tok-alice.1"))
    assert transcript.outcome == Success(identity="bob", authcid="alice")


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\x01",  # an acknowledgement with no error to acknowledge
        b"n,,auth=Bearer tok\x01\x01",  # no ^A after the header
        b"\x01auth=Bearer tok\x01\x01",  # no header
        b"p=tls-exporter,,\x01auth=Bearer tok\x01\x01",
        b"n,,\x01\x01",  # no auth
        b"n,,\x01auth=Basic dXNlcjpwdw==\x01\x01",
        b"n,,\x01auth=Bearer\x01\x01",
        b"n,,\x01auth=Bearer tok en\x01\x01",
        b"n,,\x01auth=Bearer t\xc3\xa9k\x01\x01",
        b"n,,\x01auth=Bearer tok\x01",  # not closed by ^A^A
        b"n,,\x01auth=Bearer tok",
        b"n,,\x01auth=Bearer tok\x01auth=Bearer tok\x01\x01",  # duplicate key
        b"n,,\x01h0st=x\x01auth=Bearer tok\x01\x01",
        b"n,,\x01=x\x01auth=Bearer tok\x01\x01",
        b"n,,\x01host\x01auth=Bearer tok\x01\x01",
        b"n,,\x01host=a\0b\x01auth=Bearer tok\x01\x01",
        b"n,,\x01port=http\x01auth=Bearer tok\x01\x01",
        b"n,,\x01port=9999999\x01auth=Bearer tok\x01\x01",
        b"n,a=al=ice,\x01auth=Bearer tok\x01\x01",
        b"n,,\x01auth=Bearer \xff\x01\x01",
    ],
)
def test_oauthbearer_rejects_malformed(message: bytes) -> None:
    with pytest.raises(MalformedSaslError):
        OAuthBearerServer().start(message)


@pytest.mark.parametrize("acknowledgement", [b"", b"\x01\x01", b"x"])
def test_oauthbearer_error_needs_a_lone_kvsep(acknowledgement: bytes) -> None:
    with pytest.raises(MalformedSaslError):
        serve(OAuthBearerServer(), UserTable(), bearer("", "tok-wrong"), [acknowledgement])


def test_error_challenge_is_rfc7628_json() -> None:
    assert error_challenge(TokenRejected()) == b'{"status":"invalid_token"}'
    document = json.loads(
        error_challenge(
            TokenRejected(
                status="insufficient_scope",
                scope="mail",
                openid_configuration="https://issuer.example/.well-known/openid-configuration",
            )
        )
    )
    assert document == {
        "status": "insufficient_scope",
        "scope": "mail",
        "openid-configuration": "https://issuer.example/.well-known/openid-configuration",
    }


XOAUTH2_TABLE: list[tuple[str, bytes | None, list[bytes | Cancel], list[bytes], object]] = [
    ("good", xoauth2("alice", "tok-alice.1"), [], [], ALICE),
    ("good, after empty challenge", None, [xoauth2("alice", "tok-alice.1")], [b""], ALICE),
    ("bad token, empty answer", xoauth2("alice", "nope"), [b""], [ERROR_JSON], INVALID),
    ("bad token, ^A answer", xoauth2("alice", "nope"), [b"\x01"], [ERROR_JSON], INVALID),
    ("wrong user", xoauth2("bob", "tok-alice.1"), [], [], DENIED),
    ("cancel", None, [CANCEL], [b""], CANCELLED),
]


@pytest.mark.parametrize(
    ("initial", "responses", "challenges", "outcome"),
    [row[1:] for row in XOAUTH2_TABLE],
    ids=[row[0] for row in XOAUTH2_TABLE],
)
def test_xoauth2_server(
    initial: bytes | None, responses: list[bytes | Cancel], challenges: list[bytes], outcome: object
) -> None:
    transcript = serve(XOAuth2Server(), UserTable(), initial, responses)
    assert transcript.challenges == challenges
    assert transcript.outcome == outcome


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\x01\x01",
        b"auth=Bearer tok\x01\x01",  # no user
        b"user=\x01auth=Bearer tok\x01\x01",
        b"user=alice\x01\x01",  # no auth
        b"user=alice\x01auth=Bearer tok\x01",
        b"user=alice\x01auth=Bearer tok",
        b"user=alice\x01user=alice\x01auth=Bearer tok\x01\x01",
        b"user=al\xffice\x01auth=Bearer tok\x01\x01",
        b"n,,\x01auth=Bearer tok\x01\x01",
    ],
)
def test_xoauth2_rejects_malformed(message: bytes) -> None:
    with pytest.raises(MalformedSaslError):
        XOAuth2Server().start(message)


def test_xoauth2_error_answer_must_be_empty_or_kvsep() -> None:
    with pytest.raises(MalformedSaslError):
        serve(XOAuth2Server(), UserTable(), xoauth2("alice", "nope"), [b"again"])


# --- clients -------------------------------------------------------------------------------


def test_oauthbearer_client_writes_the_rfc7628_example() -> None:
    # RFC 7628 §4.1.
    client = OAuthBearerClient(
        ClientCredentials(
            username="user@example.com",
            token=Secret("vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="),
            host="server.example.com",
            port=143,
        )
    )
    assert client.start() == (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    )


def test_oauthbearer_client_acknowledges_an_error_once() -> None:
    client = OAuthBearerClient(ClientCredentials(username="alice", token=Secret("tok")))
    client.start()
    assert client.respond(b'{"status":"invalid_token","scope":"mail"}') == b"\x01"
    assert client.error == OAuthError(status="invalid_token", scope="mail")
    with pytest.raises(MalformedSaslError):
        client.respond(b"{}")


@pytest.mark.parametrize("challenge", [b"not json", b"[1]", b"\xff", b"[" * 100_000])
def test_oauthbearer_client_acknowledges_even_an_unreadable_error(challenge: bytes) -> None:
    client = OAuthBearerClient(ClientCredentials(username="alice", token=Secret("tok")))
    client.start()
    assert client.respond(challenge) == b"\x01"
    assert client.error == OAuthError(status=None)


def test_xoauth2_client_writes_googles_format() -> None:
    client = XOAuth2Client(
        ClientCredentials(
            username="someuser@example.com",
            token=Secret("ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg"),
        )
    )
    assert client.start() == (
        b"user=someuser@example.com\x01"
        b"auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg\x01\x01"
    )
    assert client.respond(b'{"status":"400","schemes":"Bearer"}') == b""
    assert client.error is not None and client.error.status == "400"


@pytest.mark.parametrize("token", ["with space", "tab\t", "ünï", ""])
def test_clients_refuse_tokens_outside_rfc6750(token: str) -> None:
    for mechanism in (OAuthBearerClient, XOAuth2Client):
        with pytest.raises(ValueError):
            mechanism(ClientCredentials(username="alice", token=Secret(token))).start()
