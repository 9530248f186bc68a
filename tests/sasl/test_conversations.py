"""Client and server machines of every mechanism talking in memory over the POP3 framing."""

from __future__ import annotations

import pytest

from postoffice.sasl import (
    Challenge,
    ChannelBinding,
    ClientCredentials,
    Failure,
    FailureReason,
    ServerOptions,
    ServerProofError,
    ServerStep,
    Success,
    client_mechanism,
    server_mechanism,
)
from postoffice.sasl.framing import decode_challenge_line
from postoffice.sasl.scram import ScramClient, ScramServer
from postoffice.secret import Secret
from tests.sasl.users import UserTable, converse

EXPORTER = ChannelBinding(type="tls-exporter", data=bytes(range(32)))
END_POINT = ChannelBinding(type="tls-server-end-point", data=b"\xaa" * 32)
OTHER_EXPORTER = ChannelBinding(type="tls-exporter", data=b"\x55" * 32)

ALICE = Success(identity="alice", authcid="alice")
BAD = Failure(reason=FailureReason.BAD_CREDENTIALS)
INVALID = Failure(reason=FailureReason.INVALID_TOKEN)
CB_FAIL = Failure(reason=FailureReason.CHANNEL_BINDING)

PASSWORD = ClientCredentials(username="alice", password=Secret("wonderland"))
WRONG_PASSWORD = ClientCredentials(username="alice", password=Secret("wonderlant"))
TOKEN = ClientCredentials(username="alice", token=Secret("tok-alice.1"))
WRONG_TOKEN = ClientCredentials(username="alice", token=Secret("tok-alice.9"))


def bound(binding: ChannelBinding, credentials: ClientCredentials = PASSWORD) -> ClientCredentials:
    return ClientCredentials(
        username=credentials.username, password=credentials.password, channel_binding=binding
    )


CASES = [
    # (case, mechanism, client credentials, server channel bindings, outcome)
    ("PLAIN", "PLAIN", PASSWORD, (), ALICE),
    ("PLAIN, wrong password", "PLAIN", WRONG_PASSWORD, (), BAD),
    ("LOGIN", "LOGIN", PASSWORD, (), ALICE),
    ("LOGIN, wrong password", "LOGIN", WRONG_PASSWORD, (), BAD),
    ("SCRAM", "SCRAM-SHA-256", PASSWORD, (), ALICE),
    ("SCRAM, wrong password", "SCRAM-SHA-256", WRONG_PASSWORD, (), BAD),
    ("PLUS, tls-exporter", "SCRAM-SHA-256-PLUS", bound(EXPORTER), (EXPORTER,), ALICE),
    ("PLUS, end-point", "SCRAM-SHA-256-PLUS", bound(END_POINT), (EXPORTER, END_POINT), ALICE),
    ("PLUS, mismatching data", "SCRAM-SHA-256-PLUS", bound(OTHER_EXPORTER), (EXPORTER,), CB_FAIL),
    ("PLUS, missing type", "SCRAM-SHA-256-PLUS", bound(END_POINT), (EXPORTER,), CB_FAIL),
    (
        "PLUS, mismatch and wrong password",
        "SCRAM-SHA-256-PLUS",
        bound(OTHER_EXPORTER, WRONG_PASSWORD),
        (EXPORTER,),
        CB_FAIL,
    ),
    ("OAUTHBEARER", "OAUTHBEARER", TOKEN, (), ALICE),
    ("OAUTHBEARER, bad token", "OAUTHBEARER", WRONG_TOKEN, (), INVALID),
    ("XOAUTH2", "XOAUTH2", TOKEN, (), ALICE),
    ("XOAUTH2, bad token", "XOAUTH2", WRONG_TOKEN, (), INVALID),
]


@pytest.mark.parametrize("send_initial", [True, False], ids=["initial response", "empty challenge"])
@pytest.mark.parametrize(
    ("mechanism", "credentials", "bindings", "outcome"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_client_and_server_agree(
    mechanism: str,
    credentials: ClientCredentials,
    bindings: tuple[ChannelBinding, ...],
    outcome: object,
    send_initial: bool,
) -> None:
    client = client_mechanism(mechanism, credentials)
    server = server_mechanism(mechanism, ServerOptions(channel_bindings=bindings))
    conversation = converse(client, server, UserTable(), send_initial=send_initial)
    assert conversation.outcome == outcome
    assert conversation.client_error is None
    assert server.done


def test_plain_on_the_wire() -> None:
    conversation = converse(
        client_mechanism("PLAIN", PASSWORD), server_mechanism("PLAIN"), UserTable()
    )
    assert conversation.wire == [b"AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=", b"+OK"]


def test_login_on_the_wire() -> None:
    conversation = converse(
        client_mechanism("LOGIN", PASSWORD), server_mechanism("LOGIN"), UserTable()
    )
    assert conversation.wire == [
        b"AUTH LOGIN",
        b"+ VXNlcm5hbWU6\r\n",
        b"YWxpY2U=\r\n",
        b"+ UGFzc3dvcmQ6\r\n",
        b"d29uZGVybGFuZA==\r\n",
        b"+OK",
    ]


def test_oauthbearer_error_round_on_the_wire() -> None:
    conversation = converse(
        client_mechanism("OAUTHBEARER", WRONG_TOKEN), server_mechanism("OAUTHBEARER"), UserTable()
    )
    assert conversation.wire[1:] == [
        b"+ eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NvcGUiOiJwb3AzIn0=\r\n",  # the JSON error
        b"AQ==\r\n",  # %x01
        b"-ERR",
    ]


def test_scram_ends_with_the_server_proof_and_an_empty_response() -> None:
    conversation = converse(
        client_mechanism("SCRAM-SHA-256", PASSWORD), server_mechanism("SCRAM-SHA-256"), UserTable()
    )
    final = decode_challenge_line(conversation.wire[-3].removesuffix(b"\r\n"))
    assert final.startswith(b"v=")
    assert conversation.wire[-2:] == [b"\r\n", b"+OK"]


class ForgingServer(ScramServer):
    """A server that knows the verifier but forges its final signature."""

    def _receive(self, response: bytes) -> ServerStep:
        step = super()._receive(response)
        if isinstance(step, Challenge) and step.data.startswith(b"v="):
            return Challenge(data=b"v=" + b"A" * 43 + b"=")
        return step


def test_client_cancels_when_the_server_cannot_prove_itself() -> None:
    conversation = converse(ScramClient(PASSWORD), ForgingServer(), UserTable())
    assert isinstance(conversation.client_error, ServerProofError)
    assert conversation.wire[-2:] == [b"*\r\n", b"-ERR"]
    assert conversation.outcome == Failure(reason=FailureReason.CANCELLED)
