"""PLAIN (RFC 4616) and LOGIN server tables, and their clients."""

from __future__ import annotations

import pytest

from postoffice.sasl import (
    CANCEL,
    NO_CREDENTIALS,
    Challenge,
    ClientCredentials,
    Failure,
    FailureReason,
    PasswordVerdict,
    SaslStateError,
    ServerOptions,
    Success,
    VerifyPassword,
)
from postoffice.sasl.errors import MalformedSaslError
from postoffice.sasl.framing import Cancel
from postoffice.sasl.plain import LoginClient, LoginServer, PlainClient, PlainServer
from postoffice.secret import Secret
from tests.sasl.users import UserTable, nul, serve

OK_ALICE = Success(identity="alice", authcid="alice")
BAD = Failure(reason=FailureReason.BAD_CREDENTIALS)
DENIED = Failure(reason=FailureReason.AUTHZID_DENIED)
CANCELLED = Failure(reason=FailureReason.CANCELLED)

PLAIN_TABLE: list[tuple[str, bytes | None, list[bytes | Cancel], list[bytes], object]] = [
    # (case, initial response, responses, challenges sent, outcome)
    ("good", nul("", "alice", "wonderland"), [], [], OK_ALICE),
    ("good after empty challenge", None, [nul("", "alice", "wonderland")], [b""], OK_ALICE),
    ("authzid equal to authcid", nul("alice", "alice", "wonderland"), [], [], OK_ALICE),
    ("UTF-8 password", nul("", "bob", "builder ñ"), [], [], Success(identity="bob", authcid="bob")),
    ("bad password", nul("", "alice", "wonderlan"), [], [], BAD),
    ("unknown user", nul("", "mallory", "wonderland"), [], [], BAD),
    ("wrong authzid", nul("bob", "alice", "wonderland"), [], [], DENIED),
    ("cancel", None, [CANCEL], [b""], CANCELLED),
]

PLAIN_MALFORMED = [
    ("empty", b""),
    ("one NUL", b"\0alice"),
    ("three NULs", nul("", "alice", "wonder", "land")),
    ("empty authcid", nul("", "", "wonderland")),
    ("empty password", nul("", "alice", "")),
    ("not UTF-8", b"\0alice\0\xff\xfe"),
    ("overlong UTF-8", b"\0al\xc0\xafice\0pw"),
]


@pytest.mark.parametrize(
    ("initial", "responses", "challenges", "outcome"),
    [row[1:] for row in PLAIN_TABLE],
    ids=[row[0] for row in PLAIN_TABLE],
)
def test_plain_server(
    initial: bytes | None, responses: list[bytes | Cancel], challenges: list[bytes], outcome: object
) -> None:
    transcript = serve(PlainServer(), UserTable(), initial, responses)
    assert transcript.challenges == challenges
    assert transcript.outcome == outcome


@pytest.mark.parametrize(
    "data", [row[1] for row in PLAIN_MALFORMED], ids=[r[0] for r in PLAIN_MALFORMED]
)
@pytest.mark.parametrize("as_initial", [True, False])
def test_plain_server_rejects_malformed(data: bytes, as_initial: bool) -> None:
    mechanism = PlainServer()
    with pytest.raises(MalformedSaslError):
        serve(mechanism, UserTable(), data if as_initial else None, [data])
    assert mechanism.done
    with pytest.raises(SaslStateError):
        mechanism.receive(data)


def test_plain_wrong_authzid_never_asks_for_the_password() -> None:
    table = UserTable()
    serve(PlainServer(), table, nul("bob", "alice", "wonderland"))
    assert table.requests == []


def test_plain_authzid_goes_to_the_caller_when_allowed() -> None:
    table = UserTable()
    options = ServerOptions(allow_authzid=True)
    transcript = serve(PlainServer(options), table, nul("bob", "alice", "wonderland"))
    assert transcript.outcome == Success(identity="bob", authcid="alice")
    request = table.requests[0]
    assert isinstance(request, VerifyPassword)
    assert (request.authcid, request.authzid) == ("alice", "bob")
    # The caller's verdict covers the right to act as someone else.
    transcript = serve(PlainServer(options), table, nul("alice", "bob", "builder ñ"))
    assert transcript.outcome == BAD


def test_verify_request_hides_the_password() -> None:
    step = PlainServer().start(nul("", "alice", "wonderland"))
    assert isinstance(step, VerifyPassword)
    assert "wonderland" not in repr(step)
    assert step.password.reveal() == "wonderland"


LOGIN_TABLE: list[tuple[str, bytes | None, list[bytes | Cancel], list[bytes], object]] = [
    ("good", None, [b"alice", b"wonderland"], [b"Username:", b"Password:"], OK_ALICE),
    ("user name as initial response", b"alice", [b"wonderland"], [b"Password:"], OK_ALICE),
    ("bad password", None, [b"alice", b"x"], [b"Username:", b"Password:"], BAD),
    ("unknown user", None, [b"nobody", b"x"], [b"Username:", b"Password:"], BAD),
    ("cancel at user name", None, [CANCEL], [b"Username:"], CANCELLED),
    ("cancel at password", None, [b"alice", CANCEL], [b"Username:", b"Password:"], CANCELLED),
]


@pytest.mark.parametrize(
    ("initial", "responses", "challenges", "outcome"),
    [row[1:] for row in LOGIN_TABLE],
    ids=[row[0] for row in LOGIN_TABLE],
)
def test_login_server(
    initial: bytes | None, responses: list[bytes | Cancel], challenges: list[bytes], outcome: object
) -> None:
    transcript = serve(LoginServer(), UserTable(), initial, responses)
    assert transcript.challenges == challenges
    assert transcript.outcome == outcome


@pytest.mark.parametrize(
    ("initial", "responses"),
    [
        (b"", []),  # "=": an empty user name
        (None, [b""]),
        (None, [b"\xff"]),
        (None, [b"al\0ice"]),
        (None, [b"alice", b""]),
        (None, [b"alice", b"pass\0word"]),
    ],
)
def test_login_server_rejects_malformed(initial: bytes | None, responses: list[bytes]) -> None:
    with pytest.raises(MalformedSaslError):
        serve(LoginServer(), UserTable(), initial, responses)


def test_login_keeps_undecodable_password_octets() -> None:
    mechanism = LoginServer()
    assert mechanism.start(b"alice") == Challenge(data=b"Password:")
    request = mechanism.receive(b"caf\xe9")  # Latin-1, as old clients send
    assert isinstance(request, VerifyPassword)
    assert request.password.reveal().encode("utf-8", "surrogateescape") == b"caf\xe9"


def test_answers_must_fit_the_request() -> None:
    mechanism = PlainServer()
    mechanism.start(nul("", "alice", "wonderland"))
    with pytest.raises(SaslStateError):
        mechanism.receive(b"more")
    with pytest.raises(SaslStateError):
        mechanism.answer(NO_CREDENTIALS)
    assert mechanism.answer(PasswordVerdict(ok=True)) == OK_ALICE
    with pytest.raises(SaslStateError):
        mechanism.cancel()


def test_plain_client() -> None:
    credentials = ClientCredentials(username="alice", password=Secret("wonderland"))
    client = PlainClient(credentials)
    assert client.start() == b"\0alice\0wonderland"
    with pytest.raises(MalformedSaslError):
        client.respond(b"unexpected")
    proxy = PlainClient(
        ClientCredentials(username="alice", password=Secret("wonderland"), authzid="bob")
    )
    assert proxy.start() == b"bob\0alice\0wonderland"
    with pytest.raises(ValueError, match="NUL"):
        PlainClient(ClientCredentials(username="a\0b", password=Secret("x"))).start()
    with pytest.raises(SaslStateError):
        PlainClient(ClientCredentials(username="alice")).start()


def test_plain_client_answers_an_empty_first_challenge_with_its_message() -> None:
    client = PlainClient(ClientCredentials(username="alice", password=Secret("wonderland")))
    message = client.start()
    assert client.respond(b"") == message


def test_login_client_answers_in_order() -> None:
    client = LoginClient(ClientCredentials(username="alice", password=Secret("wonderland")))
    assert client.start() is None
    assert client.respond(b"Username:") == b"alice"
    assert client.respond(b"Password:") == b"wonderland"
    with pytest.raises(MalformedSaslError):
        client.respond(b"Again:")
