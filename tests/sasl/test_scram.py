"""SCRAM-SHA-256 (RFC 7677) and -PLUS: the RFC vectors, server tables, channel binding,
the client's checks of the server, and interoperation with the independent ``scramp``."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from postoffice.auth.schemes import hash_password
from postoffice.errors import UnknownSchemeError
from postoffice.sasl import (
    CANCEL,
    NO_CREDENTIALS,
    Challenge,
    ChannelBinding,
    ClientCredentials,
    Failure,
    FailureReason,
    LookupScram,
    SaslStateError,
    ScramCredentials,
    ServerOptions,
    ServerProofError,
    Success,
    tls_server_end_point,
)
from postoffice.sasl.errors import MalformedSaslError
from postoffice.sasl.framing import Cancel
from postoffice.sasl.scram import (
    ScramClient,
    ScramPlusClient,
    ScramPlusServer,
    ScramServer,
    make_credentials,
)
from postoffice.sasl.stored import scram_credentials
from postoffice.secret import Secret
from tests.sasl.users import UserTable, converse, serve

# RFC 7677 §3.
C_NONCE = "rOprNGfwEbeRWgbNEkqO"
S_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

EXPORTER = ChannelBinding(type="tls-exporter", data=bytes(range(32)))
END_POINT = ChannelBinding(type="tls-server-end-point", data=b"\xaa" * 32)


def fixed(nonce: str) -> ServerOptions:
    return ServerOptions(nonce=lambda: nonce)


# --- RFC vectors ---------------------------------------------------------------------------


def test_rfc7677_vector_server_side() -> None:
    server = ScramServer(fixed(S_NONCE))
    assert server.start(CLIENT_FIRST) == LookupScram(authcid="user", hash_name="sha256")
    credentials = make_credentials("sha256", b"pencil", SALT, 4096)
    assert server.answer(credentials) == Challenge(data=SERVER_FIRST)
    assert server.receive(CLIENT_FINAL) == Challenge(data=SERVER_FINAL)
    assert server.receive(b"") == Success(identity="user", authcid="user")


def test_rfc7677_vector_client_side() -> None:
    scram = ScramClient(
        ClientCredentials(username="user", password=Secret("pencil"), nonce=lambda: C_NONCE)
    )
    assert scram.start() == CLIENT_FIRST
    assert scram.respond(SERVER_FIRST) == CLIENT_FINAL
    assert scram.respond(SERVER_FINAL) == b""
    scram.success()


class _Sha1Server(ScramServer):
    name = "SCRAM-SHA-1"
    hash_name = "sha1"


class _Sha1Client(ScramClient):
    name = "SCRAM-SHA-1"
    hash_name = "sha1"


def test_rfc5802_sha1_vector_checks_the_hash_steps_on_both_sides() -> None:
    # RFC 5802 §5; SHA-1 is not offered, but the steps are the same with another hash.
    salt = base64.b64decode("QSXCR+Q6sek8bf92")
    server = _Sha1Server(fixed("3rfcNHYJY1ZVvWVs7j"))
    sha1_client = _Sha1Client(
        ClientCredentials(
            username="user", password=Secret("pencil"), nonce=lambda: "fyko+d2lbbFgONRv9qkxdawL"
        )
    )
    first = sha1_client.start()
    assert first == b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
    server.start(first)
    server_first = server.answer(make_credentials("sha1", b"pencil", salt, 4096))
    assert isinstance(server_first, Challenge)
    assert server_first.data == (
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    )
    final = sha1_client.respond(server_first.data)
    assert final == (
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    )
    assert server.receive(final) == Challenge(data=b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")


# --- server table --------------------------------------------------------------------------

BAD = Failure(reason=FailureReason.BAD_CREDENTIALS)


def run(
    password: str,
    *,
    username: str = "alice",
    authzid: str = "",
    options: ServerOptions | None = None,
    cancel_at: int | None = None,
) -> tuple[Success | Failure | None, UserTable]:
    """A conversation with our client, optionally cancelled before the n-th response."""
    table = UserTable()
    scram = ScramClient(
        ClientCredentials(username=username, password=Secret(password), authzid=authzid)
    )
    server = ScramServer(options)
    responses: list[bytes | Cancel] = []
    step = server.start(scram.start())
    while True:
        if isinstance(step, Challenge):
            if cancel_at is not None and len(responses) == cancel_at:
                return server.cancel(), table
            response = scram.respond(step.data)
            responses.append(response)
            step = server.receive(response)
        elif isinstance(step, Success | Failure):
            return step, table
        else:
            step = server.answer(table.answer(step))


@pytest.mark.parametrize(
    ("case", "password", "username", "authzid", "outcome"),
    [
        ("good", "wonderland", "alice", "", Success(identity="alice", authcid="alice")),
        ("UTF-8 password", "builder ñ", "bob", "", Success(identity="bob", authcid="bob")),
        ("bad password", "wonderlan", "alice", "", BAD),
        ("unknown user", "x", "mallory", "", BAD),
        ("no SCRAM verifier stored", "carol-pw", "carol", "", BAD),
        (
            "authzid equal to user",
            "wonderland",
            "alice",
            "alice",
            Success(identity="alice", authcid="alice"),
        ),
        (
            "wrong authzid",
            "wonderland",
            "alice",
            "bob",
            Failure(reason=FailureReason.AUTHZID_DENIED),
        ),
    ],
)
def test_server_table(
    case: str, password: str, username: str, authzid: str, outcome: object
) -> None:
    result, _ = run(password, username=username, authzid=authzid)
    assert result == outcome


def test_authzid_goes_to_the_caller_when_allowed() -> None:
    result, table = run("wonderland", authzid="bob", options=ServerOptions(allow_authzid=True))
    assert result == Success(identity="bob", authcid="alice")
    assert table.requests == [LookupScram(authcid="alice", hash_name="sha256", authzid="bob")]
    result, _ = run(
        "builder ñ", username="bob", authzid="alice", options=ServerOptions(allow_authzid=True)
    )
    assert result == BAD  # the table gives bob no right to act as alice


@pytest.mark.parametrize("cancel_at", [0, 1])
def test_cancel(cancel_at: int) -> None:
    result, _ = run("wonderland", cancel_at=cancel_at)
    assert result == Failure(reason=FailureReason.CANCELLED)


def test_unknown_user_gets_a_stable_made_up_salt() -> None:
    def salt_for(user: str) -> bytes:
        server = ScramServer()
        server.start(f"n,,n={user},r=abc".encode())
        step = server.answer(NO_CREDENTIALS)
        assert isinstance(step, Challenge)
        return step.data.split(b",")[1]

    assert salt_for("mallory") == salt_for("mallory") != salt_for("eve")


def test_empty_initial_response_request_and_empty_challenge() -> None:
    transcript = serve(ScramServer(), UserTable(), None, [CANCEL])
    assert transcript.challenges == [b""]


CLIENT_FIRST_MALFORMED = [
    b"",
    b"n,,",
    b"x,,n=user,r=abc",
    b"p=,,n=user,r=abc",
    b"p=tls exporter,,n=user,r=abc",
    b"n,b=user,n=user,r=abc",
    b"n,a=,n=user,r=abc",
    b"n,a=us=er,n=user,r=abc",
    b"n,,r=abc,n=user",
    b"n,,n=user",
    b"n,,n=,r=abc",
    b"n,,n=us=2Xer,r=abc",
    b"n,,n=user,r=",
    b"n,,n=user,r=a,b",
    b"n,,n=user,r=a\x7fb",
    b"n,,m=ext,n=user,r=abc",
    b"n,,n=user,r=abc,1=x",
    b"n,,n=user,r=abc,",
    b"F,n,,n=user,r=abc",
    b"n,,n=us\xffer,r=abc",
    b"n,,n=us\0er,r=abc",
]


@pytest.mark.parametrize("message", CLIENT_FIRST_MALFORMED)
def test_malformed_client_first(message: bytes) -> None:
    server = ScramServer()
    with pytest.raises(MalformedSaslError):
        server.start(message)
    assert server.done


def _at_client_final() -> ScramServer:
    server = ScramServer(fixed(S_NONCE))
    server.start(CLIENT_FIRST)
    server.answer(make_credentials("sha256", b"pencil", SALT, 4096))
    return server


NONCE = b"rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
PROOF = b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"c=biws,r=" + NONCE,  # no proof
        b"r=" + NONCE + b",c=biws," + PROOF,
        b"c=biws,r=" + NONCE + b"x," + PROOF,  # another nonce
        b"c=biws,r=" + NONCE[:-1] + b"," + PROOF,
        b"c=bi ws,r=" + NONCE + b"," + PROOF,
        b"c=biws,r=" + NONCE + b",p=AAAA",  # proof of the wrong length
        b"c=biws,r=" + NONCE + b",p=!!",
        b"c=biws," + PROOF + b",r=" + NONCE,
        b"c=biws,r=" + NONCE + b",," + PROOF,
    ],
)
def test_malformed_client_final(message: bytes) -> None:
    with pytest.raises(MalformedSaslError):
        _at_client_final().receive(message)


def test_client_final_extensions_are_allowed_but_change_the_auth_message() -> None:
    step = _at_client_final().receive(b"c=biws,r=" + NONCE + b",x=ext," + PROOF)
    assert step == BAD


def test_data_after_the_server_final_is_malformed() -> None:
    server = _at_client_final()
    server.receive(CLIENT_FINAL)
    with pytest.raises(MalformedSaslError):
        server.receive(b"more")


def test_credentials_for_another_hash_are_the_callers_bug() -> None:
    server = ScramServer()
    server.start(CLIENT_FIRST)
    with pytest.raises(SaslStateError):
        server.answer(make_credentials("sha1", b"pencil", SALT, 4096))
    assert server.done


# --- channel binding -----------------------------------------------------------------------


def cb_run(
    client_binding: ChannelBinding | None,
    server_bindings: tuple[ChannelBinding, ...],
    *,
    plus_client: bool,
    plus_server: bool,
) -> Success | Failure:
    credentials = ClientCredentials(
        username="alice", password=Secret("wonderland"), channel_binding=client_binding
    )
    scram_client = (ScramPlusClient if plus_client else ScramClient)(credentials)
    options = ServerOptions(channel_bindings=server_bindings)
    server = (ScramPlusServer if plus_server else ScramServer)(options)
    return converse(scram_client, server, UserTable()).outcome


CB_FAIL = Failure(reason=FailureReason.CHANNEL_BINDING)
ALICE = Success(identity="alice", authcid="alice")


@pytest.mark.parametrize(
    ("case", "client_binding", "server_bindings", "plus_client", "plus_server", "outcome"),
    [
        ("PLUS, tls-exporter, same data", EXPORTER, (EXPORTER, END_POINT), True, True, ALICE),
        ("PLUS, end-point, same data", END_POINT, (EXPORTER, END_POINT), True, True, ALICE),
        (
            "PLUS, different data",
            ChannelBinding(type="tls-exporter", data=b"\x01" * 32),
            (EXPORTER,),
            True,
            True,
            CB_FAIL,
        ),
        ("PLUS, type the server lacks", END_POINT, (EXPORTER,), True, True, CB_FAIL),
        ("PLUS server, client says n", None, (EXPORTER,), False, True, CB_FAIL),
        ("p to a non-PLUS server", EXPORTER, (EXPORTER,), True, False, CB_FAIL),
        ("y while the server offers PLUS: downgrade", EXPORTER, (EXPORTER,), False, False, CB_FAIL),
        ("y to a server without bindings", EXPORTER, (), False, False, ALICE),
        ("n to a server with bindings", None, (EXPORTER,), False, False, ALICE),
    ],
)
def test_channel_binding(
    case: str,
    client_binding: ChannelBinding | None,
    server_bindings: tuple[ChannelBinding, ...],
    plus_client: bool,
    plus_server: bool,
    outcome: object,
) -> None:
    assert (
        cb_run(client_binding, server_bindings, plus_client=plus_client, plus_server=plus_server)
        == outcome
    )


def test_plus_client_sends_p_and_the_binding_in_c() -> None:
    credentials = ClientCredentials(
        username="user", password=Secret("pencil"), channel_binding=EXPORTER, nonce=lambda: C_NONCE
    )
    plus = ScramPlusClient(credentials)
    assert plus.start() == b"p=tls-exporter,,n=user,r=" + C_NONCE.encode()
    final = plus.respond(SERVER_FIRST)
    cbind = final.split(b",")[0].removeprefix(b"c=")
    assert base64.b64decode(cbind) == b"p=tls-exporter,," + EXPORTER.data
    with pytest.raises(SaslStateError):
        ScramPlusClient(ClientCredentials(username="u", password=Secret("p"))).start()


def test_binding_data_is_not_in_reprs() -> None:
    assert "\\x00\\x01" not in repr(EXPORTER)
    assert "stored_key" not in repr(make_credentials("sha256", b"pencil", SALT, 4096))


# --- the client's checks -------------------------------------------------------------------


def started() -> ScramClient:
    scram = ScramClient(
        ClientCredentials(username="user", password=Secret("pencil"), nonce=lambda: C_NONCE)
    )
    scram.start()
    return scram


@pytest.mark.parametrize(
    "server_first",
    [
        b"r=someone-else,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"r=" + C_NONCE.encode() + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # not extended
        b"r=" + NONCE + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4095",  # below RFC 7677's 4096
        b"r=" + NONCE + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999",
        b"r=" + NONCE + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=04096",
        b"r=" + NONCE + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-4096",
        b"r=" + NONCE + b",s=,i=4096",
        b"r=" + NONCE + b",i=4096,s=W22ZaJ0SNY7soEsUEjb6gQ==",
        b"m=x,r=" + NONCE + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"e=other-error",
    ],
)
def test_client_rejects_a_bad_server_first(server_first: bytes) -> None:
    with pytest.raises(MalformedSaslError):
        started().respond(server_first)


def test_client_detects_a_forged_server_signature() -> None:
    scram = started()
    scram.respond(SERVER_FIRST)
    with pytest.raises(ServerProofError):
        scram.respond(b"v=" + base64.b64encode(b"\0" * 32))


def test_client_refuses_ok_without_the_server_proof() -> None:
    scram = started()
    scram.respond(SERVER_FIRST)
    with pytest.raises(ServerProofError):
        scram.success()


def test_client_records_a_server_error() -> None:
    scram = started()
    scram.respond(SERVER_FIRST)
    assert scram.respond(b"e=invalid-proof") == b""
    assert scram.server_error == "invalid-proof"
    with pytest.raises(ServerProofError):
        scram.success()


def test_client_answers_an_empty_first_challenge_with_client_first() -> None:
    scram = started()
    assert scram.respond(b"") == CLIENT_FIRST
    assert scram.respond(SERVER_FIRST) == CLIENT_FINAL


def test_username_and_authzid_are_escaped() -> None:
    scram = ScramClient(
        ClientCredentials(username="a,b=c", password=Secret("x"), authzid="d=e", nonce=lambda: "n")
    )
    assert scram.start() == b"n,a=d=3De,n=a=2Cb=3Dc,r=n"
    server = ScramServer(ServerOptions(allow_authzid=True))
    assert server.start(b"n,a=d=3De,n=a=2Cb=3Dc,r=n") == LookupScram(
        authcid="a,b=c", hash_name="sha256", authzid="d=e"
    )


# --- stored verifiers ----------------------------------------------------------------------


def _doveadm_rows() -> list[tuple[str, str]]:
    rows = []
    for line in (
        (Path(__file__).parent.parent / "data" / "doveadm-hashes.txt").read_text().splitlines()
    ):
        fields = line.split("\t")
        if len(fields) == 3 and fields[0] == "SCRAM-SHA-256":
            rows.append((fields[1], fields[2]))
    return rows


@pytest.mark.parametrize(("password", "stored"), _doveadm_rows())
def test_a_dovecot_verifier_authenticates_our_client(password: str, stored: str) -> None:
    credentials = scram_credentials(stored)
    assert credentials is not None
    for attempt, expected in ((password, True), (password + "!", False)):
        server = ScramServer()
        scram = ScramClient(ClientCredentials(username="u", password=Secret(attempt)))
        server.start(scram.start())
        server_first = server.answer(credentials)
        assert isinstance(server_first, Challenge)
        step = server.receive(scram.respond(server_first.data))
        assert isinstance(step, Challenge) is expected


def test_stored_verifier_matches_the_hash_steps() -> None:
    stored = hash_password(Secret("pencil"), "SCRAM-SHA-256")
    credentials = scram_credentials(stored)
    assert credentials is not None
    assert credentials == make_credentials("sha256", b"pencil", credentials.salt, 4096)
    assert scram_credentials(stored.replace("{SCRAM-SHA-256}", "{scram-sha-256}")) is not None
    assert scram_credentials(hash_password(Secret("pencil"), "SSHA512")) is None
    assert scram_credentials(stored, "sha512") is None


@pytest.mark.parametrize(
    "stored",
    [
        "{SCRAM-SHA-256}4096,AAAA,AAAA",
        "{SCRAM-SHA-256}x,AAAA,AAAA,AAAA",
        "{SCRAM-SHA-256}0,AAAA," + "A" * 43 + "=," + "A" * 43 + "=",
        "{SCRAM-SHA-256}4096,!!!!," + "A" * 43 + "=," + "A" * 43 + "=",
        "{SCRAM-SHA-256}4096,AAAA,AAAA,AAAA",  # keys too short for SHA-256
        "{SCRAM-SHA-256}4096,," + "A" * 43 + "=," + "A" * 43 + "=",
    ],
)
def test_malformed_stored_verifier_fails_closed(stored: str) -> None:
    with pytest.raises(UnknownSchemeError):
        scram_credentials(stored)


def test_scram_credentials_validate_themselves() -> None:
    with pytest.raises(ValueError):
        ScramCredentials(salt=b"", iterations=4096, stored_key=b"k", server_key=b"k")


def test_tls_server_end_point_hash_rules() -> None:
    # RFC 5929 §4.1: the certificate's signature hash, with MD5 and SHA-1 raised to SHA-256.
    der = b"not really DER"
    assert tls_server_end_point(der, "sha1").data == hashlib.sha256(der).digest()
    assert tls_server_end_point(der, "MD5").data == hashlib.sha256(der).digest()
    assert tls_server_end_point(der, "SHA-384").data == hashlib.sha384(der).digest()
    with pytest.raises(ValueError, match="undefined"):
        tls_server_end_point(der, None)  # Ed25519 has no separate hash
    with pytest.raises(ValueError, match="unknown"):
        tls_server_end_point(der, "nohash")
    with pytest.raises(ValueError):
        ChannelBinding(type="tls-exporter", data=b"")
    with pytest.raises(ValueError):
        ChannelBinding(type="tls exporter", data=b"x")
