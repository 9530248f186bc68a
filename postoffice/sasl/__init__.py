"""SASL mechanisms as pure state machines, server and client side.

Theory of operation
-------------------
A mechanism is one authentication exchange. Decoded client data goes in; one step comes
out: a ``Challenge`` to send, ``Success`` with the identity to log in as, ``Failure`` with
a reason, or a *request* for what only the caller can know: ``VerifyPassword`` (PLAIN,
LOGIN), ``LookupScram`` (the stored SCRAM verifier), ``ValidateToken`` (OAUTHBEARER,
XOAUTH2). The caller does the I/O and answers the request with ``answer``; the machine never
blocks, reads a socket, a file or a clock, or logs. Peer data that breaks a mechanism's
grammar raises MalformedSaslError (a RemoteProtocolError) and ends the exchange; a call out
of turn raises SaslStateError (a LocalProtocolError). Unknown users are not revealed:
PLAIN/LOGIN ask the caller anyway (which verifies against a dummy hash), SCRAM continues
with made-up credentials. ``framing`` has the POP3 base64 framing (RFC 5034 §4) and
``registry`` maps names to machines and says which names a connection may offer;
``stored.scram_credentials`` reads the passwd-file's ``{SCRAM-SHA-256}`` verifiers (it is
not imported here, as it pulls in the password-hash libraries).

The server driver loop, as the asyncio session runs it::

    mechanism = server_mechanism(name, ServerOptions(channel_bindings=bindings),
                                 enabled=advertised)
    try:
        step = mechanism.start(initial_response)       # None, or b"" for "="
        while True:
            match step:
                case Challenge(data=data):
                    await send(challenge_line(data))     # "+ <base64>"
                    response = decode_response(await read_line())
                    step = (mechanism.cancel() if response is CANCEL
                            else mechanism.receive(response))
                case VerifyPassword(authcid=user, password=password):
                    ok = await authenticator.verify(user, password) is not None
                    step = mechanism.answer(PasswordVerdict(ok=ok))
                case LookupScram(authcid=user):
                    record = await lookup(user)
                    found = record and scram_credentials(record.password_hash)
                    step = mechanism.answer(found or NO_CREDENTIALS)
                case ValidateToken() as request:
                    step = mechanism.answer(await validate(request))  # TokenAccepted/Rejected
                case Success(identity=user):
                    return user                             # +OK, open the maildrop
                case Failure(reason=reason):
                    return None                             # -ERR, failure delay
    except MalformedSaslError:
        return None                                         # -ERR

The client side is simpler: ``start()`` gives the initial response (or None),
``respond(challenge)`` the answer to each challenge, and ``success()`` is called on
``+OK`` (SCRAM raises ServerProofError there if the server never proved itself).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from postoffice.sasl.channel import ChannelBinding, tls_server_end_point
    from postoffice.sasl.errors import (
        MalformedSaslError,
        SaslStateError,
        ServerProofError,
        UnknownMechanismError,
    )
    from postoffice.sasl.events import (
        NO_CREDENTIALS,
        Answer,
        Challenge,
        Failure,
        FailureReason,
        LookupScram,
        NoCredentials,
        PasswordVerdict,
        ScramCredentials,
        ServerStep,
        Success,
        TokenAccepted,
        TokenRejected,
        ValidateToken,
        VerifyPassword,
    )
    from postoffice.sasl.framing import CANCEL, challenge_line, decode_response
    from postoffice.sasl.mechanism import (
        ClientCredentials,
        ClientMechanism,
        ServerMechanism,
        ServerOptions,
    )
    from postoffice.sasl.registry import (
        MECHANISMS,
        PLAINTEXT_MECHANISMS,
        advertised_mechanisms,
        choose_client_mechanism,
        client_mechanism,
        enabled_mechanisms,
        server_mechanism,
    )

# Each name is imported from its module at first use, so that importing one module of the
# package (the fetcher's login imports ``registry``) does not import every other one.
_LAZY = {
    "ChannelBinding": "channel",
    "tls_server_end_point": "channel",
    "MalformedSaslError": "errors",
    "SaslStateError": "errors",
    "ServerProofError": "errors",
    "UnknownMechanismError": "errors",
    "Answer": "events",
    "Challenge": "events",
    "Failure": "events",
    "FailureReason": "events",
    "LookupScram": "events",
    "NO_CREDENTIALS": "events",
    "NoCredentials": "events",
    "PasswordVerdict": "events",
    "ScramCredentials": "events",
    "ServerStep": "events",
    "Success": "events",
    "TokenAccepted": "events",
    "TokenRejected": "events",
    "ValidateToken": "events",
    "VerifyPassword": "events",
    "CANCEL": "framing",
    "challenge_line": "framing",
    "decode_response": "framing",
    "ClientCredentials": "mechanism",
    "ClientMechanism": "mechanism",
    "ServerMechanism": "mechanism",
    "ServerOptions": "mechanism",
    "MECHANISMS": "registry",
    "PLAINTEXT_MECHANISMS": "registry",
    "advertised_mechanisms": "registry",
    "choose_client_mechanism": "registry",
    "client_mechanism": "registry",
    "enabled_mechanisms": "registry",
    "server_mechanism": "registry",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CANCEL",
    "MECHANISMS",
    "NO_CREDENTIALS",
    "PLAINTEXT_MECHANISMS",
    "Answer",
    "Challenge",
    "ChannelBinding",
    "ClientCredentials",
    "ClientMechanism",
    "Failure",
    "FailureReason",
    "LookupScram",
    "MalformedSaslError",
    "NoCredentials",
    "PasswordVerdict",
    "SaslStateError",
    "ScramCredentials",
    "ServerMechanism",
    "ServerOptions",
    "ServerProofError",
    "ServerStep",
    "Success",
    "TokenAccepted",
    "TokenRejected",
    "UnknownMechanismError",
    "ValidateToken",
    "VerifyPassword",
    "advertised_mechanisms",
    "challenge_line",
    "choose_client_mechanism",
    "client_mechanism",
    "decode_response",
    "enabled_mechanisms",
    "server_mechanism",
    "tls_server_end_point",
]
