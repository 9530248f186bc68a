"""Hypothesis: whatever a peer sends, a mechanism answers with a step or a protocol error.

Server side: arbitrary bytes, and mutations of real client messages (so that the fuzzing
also reaches the later stages of SCRAM and the OAuth error round), into every server
mechanism, answered with every kind of legal answer, only ever raise MalformedSaslError,
after which the machine is finished. Client side: arbitrary challenges only raise
RemoteProtocolError subclasses.
"""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from postoffice.errors import RemoteProtocolError
from postoffice.sasl import (
    CANCEL,
    MECHANISMS,
    NO_CREDENTIALS,
    Answer,
    Challenge,
    ChannelBinding,
    ClientCredentials,
    Failure,
    LookupScram,
    MalformedSaslError,
    PasswordVerdict,
    SaslStateError,
    ServerOptions,
    ServerStep,
    Success,
    TokenAccepted,
    TokenRejected,
    ValidateToken,
    VerifyPassword,
    client_mechanism,
    server_mechanism,
)
from postoffice.sasl.framing import Cancel
from postoffice.sasl.scram import make_credentials
from postoffice.secret import Secret

EXPORTER = ChannelBinding(type="tls-exporter", data=bytes(range(32)))
END_POINT = ChannelBinding(type="tls-server-end-point", data=b"\xaa" * 32)
SERVER_NONCE = "fixedservernonce"
CREDENTIALS = make_credentials("sha256", b"wonderland", b"saltsaltsaltsalt", 4096)
NAMES = sorted(MECHANISMS)


def _client_credentials(name: str) -> ClientCredentials:
    return ClientCredentials(
        username="alice",
        password=Secret("wonderland"),
        token=Secret("tok-alice.1"),
        channel_binding=EXPORTER if name.endswith("-PLUS") else None,
        nonce=lambda: "fixedclientnonce",
    )


def legal_answer(request: ServerStep, choice: int) -> Answer:
    if isinstance(request, VerifyPassword):
        return PasswordVerdict(ok=choice % 2 == 0)
    if isinstance(request, LookupScram):
        return CREDENTIALS if choice % 2 == 0 else NO_CREDENTIALS
    assert isinstance(request, ValidateToken)
    answers: list[Answer] = [
        TokenAccepted(identity=request.user or "alice"),
        TokenAccepted(identity="someone"),
        TokenRejected(scope="pop3"),
    ]
    return answers[choice % 3]


def _record_scripts() -> dict[str, list[bytes]]:
    """Per mechanism, what a real client sends in a good exchange (with fixed nonces)."""
    scripts: dict[str, list[bytes]] = {}
    for name in NAMES:
        client = client_mechanism(name, _client_credentials(name))
        options = ServerOptions(channel_bindings=(EXPORTER,), nonce=lambda: SERVER_NONCE)
        server = server_mechanism(name, options)
        initial = client.start()
        script = scripts[name] = [initial] if initial is not None else []
        step = server.start(initial)
        while not isinstance(step, Success | Failure):
            if isinstance(step, Challenge):
                script.append(client.respond(step.data))
                step = server.receive(script[-1])
            else:
                step = server.answer(legal_answer(step, 0))
        assert isinstance(step, Success), name
    return scripts


SCRIPTS = _record_scripts()
CORPUS = [message for script in SCRIPTS.values() for message in script]
OCTETS = [0, 1, ord(","), ord("="), ord("a"), 0xFF, 0x80]


@st.composite
def mutation_of(draw: st.DrawFn, original: bytes) -> bytes:
    message = bytearray(original)
    for _ in range(draw(st.integers(0, 3))):
        position = draw(st.integers(0, len(message)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        octet = draw(st.sampled_from(OCTETS))
        if action == "insert":
            message[position:position] = bytes([octet])
        elif message:
            position = min(position, len(message) - 1)
            if action == "delete":
                del message[position]
            else:
                message[position] = octet
    return bytes(message)


client_data = (
    st.binary(max_size=120)
    | st.sampled_from([*CORPUS, b"", b"\x01"])
    | st.sampled_from(CORPUS).flatmap(mutation_of)
)
server_options = st.builds(
    ServerOptions,
    allow_authzid=st.booleans(),
    channel_bindings=st.sampled_from([(), (EXPORTER,), (EXPORTER, END_POINT)]),
    nonce=st.just(lambda: SERVER_NONCE),
)


@st.composite
def exchanges(draw: st.DrawFn, name: str) -> tuple[bytes | None, list[bytes | Cancel]]:
    """Random data, or the mechanism's real script with some messages mutated, sent with or
    without an initial response, possibly cancelled or with extra data after it."""
    if draw(st.booleans()):
        initial = draw(st.none() | client_data)
        return initial, draw(st.lists(client_data | st.just(CANCEL), max_size=5))
    script: list[bytes | Cancel] = [
        draw(st.just(message) | mutation_of(message)) for message in SCRIPTS[name]
    ]
    if draw(st.booleans()):
        script.insert(draw(st.integers(0, len(script))), CANCEL)
    script += draw(st.lists(st.sampled_from([b"\x01", b""]) | client_data, min_size=1, max_size=1))
    first = script[0] if script else None
    if draw(st.booleans()) or first is None or first is CANCEL:
        return None, script  # the server asks with an empty challenge (LOGIN: "Username:")
    assert isinstance(first, bytes)
    return first, script[1:]


@settings(max_examples=400, deadline=None)
@given(
    data=st.data(),
    name=st.sampled_from(NAMES),
    options=server_options,
    choices=st.lists(st.integers(0, 5), min_size=3, max_size=3),
)
def test_servers_raise_only_protocol_errors(
    data: st.DataObject, name: str, options: ServerOptions, choices: list[int]
) -> None:
    initial, responses = data.draw(exchanges(name))
    mechanism = server_mechanism(name, options)
    pending = iter(responses)
    answers = iter(choices)
    try:
        step = mechanism.start(initial)
        while True:
            if isinstance(step, Challenge):
                response = next(pending, None)
                if response is None:
                    return
                step = mechanism.cancel() if response is CANCEL else mechanism.receive(response)
            elif isinstance(step, Success | Failure):
                event(f"{name}: {step}")
                break
            else:
                step = mechanism.answer(legal_answer(step, next(answers, 0)))
    except MalformedSaslError:
        event(f"{name}: malformed")
    assert mechanism.done
    try:
        mechanism.receive(b"")
    except SaslStateError:
        pass
    else:
        raise AssertionError("a finished mechanism accepted more data")


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(NAMES), challenges=st.lists(client_data, max_size=4))
def test_clients_raise_only_remote_protocol_errors(name: str, challenges: list[bytes]) -> None:
    client = client_mechanism(name, _client_credentials(name))
    client.start()
    for challenge in challenges:
        try:
            client.respond(challenge)
        except RemoteProtocolError:
            try:
                client.respond(b"")
            except SaslStateError:
                return
            raise AssertionError("a failed client mechanism went on") from None
