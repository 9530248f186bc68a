"""Our SCRAM against ``scramp``, an independent implementation, both ways and with
``tls-server-end-point`` channel binding; and our end-point hash against scramp's."""

from __future__ import annotations

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from postoffice.sasl import (
    Challenge,
    ChannelBinding,
    ClientCredentials,
    LookupScram,
    ScramCredentials,
    ServerOptions,
    Success,
    tls_server_end_point,
)
from postoffice.sasl.scram import (
    ScramClient,
    ScramPlusClient,
    ScramPlusServer,
    ScramServer,
    make_credentials,
)
from postoffice.secret import Secret

scramp = pytest.importorskip("scramp")

END_POINT = ChannelBinding(type="tls-server-end-point", data=b"\xaa" * 32)
ALICE = Success(identity="alice", authcid="alice")


def _scramp_auth_info() -> tuple[bytes, bytes, bytes, int]:
    c = make_credentials("sha256", b"wonderland", b"0123456789abcdef", 4096)
    return c.salt, c.stored_key, c.server_key, c.iterations


@pytest.mark.parametrize("binding", [None, END_POINT])
def test_scramp_client_against_our_server(binding: ChannelBinding | None) -> None:
    mechanism = "SCRAM-SHA-256-PLUS" if binding else "SCRAM-SHA-256"
    theirs = scramp.ScramClient(
        [mechanism],
        "alice",
        "wonderland",
        channel_binding=(binding.type, binding.data) if binding else None,
    )
    server = (ScramPlusServer if binding else ScramServer)(
        ServerOptions(channel_bindings=(binding,) if binding else ())
    )
    step = server.start(theirs.get_client_first().encode())
    assert isinstance(step, LookupScram)
    salt, stored_key, server_key, iterations = _scramp_auth_info()
    step = server.answer(
        ScramCredentials(
            salt=salt, iterations=iterations, stored_key=stored_key, server_key=server_key
        )
    )
    assert isinstance(step, Challenge)
    theirs.set_server_first(step.data.decode())
    step = server.receive(theirs.get_client_final().encode())
    assert isinstance(step, Challenge)
    theirs.set_server_final(step.data.decode())  # raises if our signature were wrong
    assert server.receive(b"") == ALICE


@pytest.mark.parametrize("binding", [None, END_POINT])
def test_our_client_against_scramp_server(binding: ChannelBinding | None) -> None:
    mechanism = "SCRAM-SHA-256-PLUS" if binding else "SCRAM-SHA-256"
    theirs = scramp.ScramMechanism(mechanism).make_server(
        lambda _user: _scramp_auth_info(),
        channel_binding=(binding.type, binding.data) if binding else None,
    )
    ours = (ScramPlusClient if binding else ScramClient)(
        ClientCredentials(username="alice", password=Secret("wonderland"), channel_binding=binding)
    )
    first = ours.start()
    assert first is not None
    theirs.set_client_first(first.decode())
    final = ours.respond(theirs.get_server_first().encode())
    theirs.set_client_final(final.decode())
    assert ours.respond(theirs.get_server_final().encode()) == b""
    ours.success()


def test_scramp_rejects_our_proof_for_a_wrong_password() -> None:
    theirs = scramp.ScramMechanism("SCRAM-SHA-256").make_server(lambda _user: _scramp_auth_info())
    ours = ScramClient(ClientCredentials(username="alice", password=Secret("wrong")))
    first = ours.start()
    assert first is not None
    theirs.set_client_first(first.decode())
    final = ours.respond(theirs.get_server_first().encode())
    with pytest.raises(scramp.ScramException):
        theirs.set_client_final(final.decode())


def test_tls_server_end_point_matches_scramp() -> None:
    pem = trustme.CA().issue_cert("pop.example").cert_chain_pems[0].bytes()
    certificate = x509.load_pem_x509_certificate(pem)
    der = certificate.public_bytes(Encoding.DER)
    algorithm = certificate.signature_hash_algorithm
    binding = tls_server_end_point(der, algorithm.name if algorithm else None)
    assert binding.type == "tls-server-end-point"
    assert binding.data == scramp.core.CBindData.from_der(der).data
