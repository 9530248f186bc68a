"""An in-memory user table that answers mechanism requests, and the driver loops that use it.

``serve`` is the server driver loop of the postoffice.sasl docstring, synchronous, fed with
the client's decoded responses; ``converse`` runs a client and a server machine against
each other through the POP3 wire framing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from postoffice.auth.schemes import hash_password, verify_password
from postoffice.errors import RemoteProtocolError
from postoffice.sasl import (
    NO_CREDENTIALS,
    Answer,
    Challenge,
    ClientMechanism,
    Failure,
    LookupScram,
    PasswordVerdict,
    ServerMechanism,
    ServerStep,
    Success,
    TokenAccepted,
    TokenRejected,
    ValidateToken,
    VerifyPassword,
)
from postoffice.sasl.framing import (
    CANCEL,
    Cancel,
    challenge_line,
    decode_challenge_line,
    decode_initial_response,
    decode_response,
    initial_response_argument,
    response_line,
)
from postoffice.sasl.stored import scram_credentials
from postoffice.secret import Secret

PASSWORDS = {"alice": "wonderland", "bob": "builder ñ", "user": "pencil"}
TOKENS = {"tok-alice.1": "alice", "tok-bob.2": "bob"}
SCOPE = "pop3"


@dataclass
class UserTable:
    """Users with Dovecot-format stored passwords, bearer tokens, and proxy rights."""

    passwords: dict[str, str] = field(default_factory=lambda: dict(PASSWORDS))
    tokens: dict[str, str] = field(default_factory=lambda: dict(TOKENS))
    proxies: set[tuple[str, str]] = field(default_factory=lambda: {("alice", "bob")})
    """(authcid, authzid): authcid may act as authzid."""
    without_scram: set[str] = field(default_factory=lambda: {"carol"})
    stored: dict[str, str] = field(init=False)
    requests: list[ServerStep] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stored = {
            name: hash_password(Secret(password), "SCRAM-SHA-256")
            for name, password in self.passwords.items()
        }
        # A user whose hash is not a SCRAM verifier: PLAIN works, SCRAM cannot.
        self.stored["carol"] = hash_password(Secret("carol-pw"), "SSHA512")

    def _may_act_as(self, authcid: str, authzid: str) -> bool:
        return not authzid or authzid == authcid or (authcid, authzid) in self.proxies

    def answer(self, request: ServerStep) -> Answer:
        self.requests.append(request)
        if isinstance(request, VerifyPassword):
            stored = self.stored.get(request.authcid)
            ok = stored is not None and verify_password(stored, request.password)
            return PasswordVerdict(ok=ok and self._may_act_as(request.authcid, request.authzid))
        if isinstance(request, LookupScram):
            stored = self.stored.get(request.authcid)
            if stored is None or not self._may_act_as(request.authcid, request.authzid):
                return NO_CREDENTIALS
            return scram_credentials(stored, request.hash_name) or NO_CREDENTIALS
        if isinstance(request, ValidateToken):
            identity = self.tokens.get(request.token.reveal())
            if identity is None or not self._may_act_as(identity, request.user):
                return TokenRejected(scope=SCOPE)
            return TokenAccepted(identity=identity)
        raise AssertionError(f"not a request: {request!r}")


@dataclass
class Transcript:
    challenges: list[bytes] = field(default_factory=list)
    outcome: Success | Failure | None = None
    """None if the responses ran out while a challenge was waiting."""


def serve(
    mechanism: ServerMechanism,
    table: UserTable,
    initial: bytes | None,
    responses: Iterable[bytes | Cancel] = (),
) -> Transcript:
    """The server driver loop, fed with already-decoded client responses."""
    transcript = Transcript()
    pending = iter(responses)
    step = mechanism.start(initial)
    while True:
        if isinstance(step, Challenge):
            transcript.challenges.append(step.data)
            response = next(pending, None)
            if response is None:
                return transcript
            step = mechanism.cancel() if response is CANCEL else mechanism.receive(response)
        elif isinstance(step, Success | Failure):
            transcript.outcome = step
            return transcript
        else:
            step = mechanism.answer(table.answer(step))


@dataclass
class Conversation:
    outcome: Success | Failure
    wire: list[bytes]
    client_error: RemoteProtocolError | None = None


def converse(
    client: ClientMechanism,
    server: ServerMechanism,
    table: UserTable,
    *,
    send_initial: bool = True,
) -> Conversation:
    """A client and a server machine talking through the RFC 5034 line framing.

    With ``send_initial`` False the AUTH line carries no initial response, as when it would
    not fit in 255 octets, and the client answers the server's empty challenge instead.
    """
    wire: list[bytes] = []
    initial = client.start()
    argument = initial_response_argument(initial) if initial is not None else None
    if not send_initial:
        argument = None
    wire.append(b"AUTH " + server.name.encode() + (b" " + argument if argument else b""))
    step = server.start(decode_initial_response(argument) if argument is not None else None)
    client_error: RemoteProtocolError | None = None
    while True:
        if isinstance(step, Challenge):
            line = challenge_line(step.data)
            wire.append(line)
            answer: bytes | Cancel
            try:
                answer = client.respond(decode_challenge_line(line.removesuffix(b"\r\n")))
            except RemoteProtocolError as exc:
                client_error, answer = exc, CANCEL
            reply = response_line(answer)
            wire.append(reply)
            decoded = decode_response(reply.removesuffix(b"\r\n"))
            step = server.cancel() if decoded is CANCEL else server.receive(decoded)
        elif isinstance(step, Success):
            wire.append(b"+OK")
            client.success()
            return Conversation(outcome=step, wire=wire, client_error=client_error)
        elif isinstance(step, Failure):
            wire.append(b"-ERR")
            return Conversation(outcome=step, wire=wire, client_error=client_error)
        else:
            step = server.answer(table.answer(step))


def nul(*fields: str) -> bytes:
    """PLAIN message from its fields."""
    return "\0".join(fields).encode()
