"""The two machine shapes every mechanism shares, and what configures them.

A server mechanism is driven with ``start``, then ``receive`` after each Challenge, ``answer``
after each request, and ``cancel`` at any time before the end. The base class alone decides
which call is legal next, from the type of the last step; a call out of turn raises
SaslStateError. Mechanisms implement ``_start``, ``_receive`` and ``_answer`` and raise
MalformedSaslError for bad peer data, after which the machine is finished.

A client mechanism is driven with ``start`` (the initial response, or None), ``respond``
for each challenge, and ``success`` when the server says ``+OK``.
"""

from __future__ import annotations

import abc
import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from postoffice.errors import RemoteProtocolError
from postoffice.sasl.channel import ChannelBinding
from postoffice.sasl.errors import MalformedSaslError, SaslStateError
from postoffice.sasl.events import (
    ANSWERS,
    Answer,
    Challenge,
    Failure,
    FailureReason,
    ServerRequest,
    ServerStep,
    Success,
)
from postoffice.secret import Secret

T = TypeVar("T")


def random_nonce() -> str:
    """24 printable characters, none a comma, from 144 random bits (RFC 5802 §5.1)."""
    return secrets.token_urlsafe(18)


# Keys the made-up SCRAM salts of unknown users: stable for the life of the process.
_PROCESS_KEY = secrets.token_bytes(32)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerOptions:
    """How server mechanisms behave on one connection."""

    allow_authzid: bool = False
    """If False, an authzid must be empty or equal the authcid (RFC 4616 §2). If True, any
    authzid goes to the caller in the request, and the caller's answer decides."""
    channel_bindings: tuple[ChannelBinding, ...] = ()
    """This connection's TLS channel bindings. Give them only when SCRAM-SHA-256-PLUS is
    advertised: a SCRAM client's ``y`` flag then means a downgrade (RFC 5802 §6)."""
    nonce: Callable[[], str] = field(default=random_nonce, repr=False)
    dummy_key: bytes = field(default=_PROCESS_KEY, repr=False)
    """Keys made-up SCRAM salts for unknown users, so that they look stable."""

    def channel_binding(self, binding_type: str) -> ChannelBinding | None:
        for binding in self.channel_bindings:
            if binding.type == binding_type:
                return binding
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientCredentials:
    """What a client mechanism may use; each takes what it needs."""

    username: str
    password: Secret | None = None
    token: Secret | None = None
    """An OAuth 2.0 bearer token (OAUTHBEARER, XOAUTH2)."""
    authzid: str = ""
    channel_binding: ChannelBinding | None = None
    host: str | None = None
    port: int | None = None
    nonce: Callable[[], str] = field(default=random_nonce, repr=False)

    def require_password(self, mechanism: str) -> Secret:
        if self.password is None:
            raise SaslStateError(f"{mechanism} needs a password")
        return self.password

    def require_token(self, mechanism: str) -> Secret:
        if self.token is None:
            raise SaslStateError(f"{mechanism} needs a bearer token")
        return self.token


class _Turn(enum.Enum):
    START = "start"
    RESPONSE = "receive"
    ANSWER = "answer"
    DONE = "nothing"


def decode_utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedSaslError(f"{what} is not UTF-8") from None


class ServerMechanism(abc.ABC):
    """One authentication exchange, server side."""

    name: ClassVar[str]

    def __init__(self, options: ServerOptions | None = None) -> None:
        self.options = options or ServerOptions()
        self._turn = _Turn.START
        self._request: ServerRequest | None = None

    @property
    def done(self) -> bool:
        """True once Success or Failure was returned or a MalformedSaslError raised."""
        return self._turn is _Turn.DONE

    def start(self, initial_response: bytes | None) -> ServerStep:
        """Begin; ``initial_response`` is None if AUTH had none, b"" for ``=``."""
        self._require(_Turn.START, "start")
        return self._run(self._start, initial_response)

    def receive(self, response: bytes) -> ServerStep:
        """The client's decoded answer to the last Challenge."""
        self._require(_Turn.RESPONSE, "receive")
        return self._run(self._receive, response)

    def answer(self, answer: Answer) -> ServerStep:
        """The caller's answer to the last request."""
        self._require(_Turn.ANSWER, "answer")
        request = self._request
        assert request is not None
        if not isinstance(answer, ANSWERS[type(request)]):
            raise SaslStateError(
                f"{type(request).__name__} cannot be answered with {type(answer).__name__}"
            )
        self._request = None
        return self._run(self._answer, answer)

    def cancel(self) -> Failure:
        """The client sent ``*``, or the driver abandons the exchange."""
        if self._turn is _Turn.DONE:
            raise SaslStateError(f"{self.name}: the exchange is already over")
        self._turn = _Turn.DONE
        self._request = None
        return Failure(reason=FailureReason.CANCELLED)

    # -- for mechanisms ----------------------------------------------------------------------

    @abc.abstractmethod
    def _start(self, initial_response: bytes | None) -> ServerStep: ...

    @abc.abstractmethod
    def _receive(self, response: bytes) -> ServerStep: ...

    def _answer(self, answer: Answer) -> ServerStep:
        raise SaslStateError(f"{self.name} asked for nothing")  # pragma: no cover

    # -- the turn table ----------------------------------------------------------------------

    def _require(self, turn: _Turn, method: str) -> None:
        if self._turn is not turn:
            raise SaslStateError(
                f"{self.name}: {method}() called, but the next call must be {self._turn.value}()"
            )

    def _run(self, method: Callable[[T], ServerStep], argument: T) -> ServerStep:
        try:
            step = method(argument)
        except Exception:  # malformed peer data, or a bad answer: the exchange is over
            self._turn = _Turn.DONE
            self._request = None
            raise
        if isinstance(step, Challenge):
            self._turn = _Turn.RESPONSE
        elif isinstance(step, Success | Failure):
            self._turn = _Turn.DONE
        else:
            self._turn = _Turn.ANSWER
            self._request = step
        return step


class ClientMechanism(abc.ABC):
    """One authentication exchange, client side."""

    name: ClassVar[str]

    def __init__(self, credentials: ClientCredentials) -> None:
        self.credentials = credentials
        self._started = False
        self._finished = False
        self._initial: bytes | None = None
        self._responded = False

    def start(self) -> bytes | None:
        """The initial response, or None if the mechanism waits for the server to speak."""
        if self._started:
            raise SaslStateError(f"{self.name}: already started")
        self._started = True
        self._initial = self._initial_response()
        return self._initial

    def respond(self, challenge: bytes) -> bytes:
        """The answer to a decoded challenge. Raises a RemoteProtocolError if the server
        broke the mechanism; the driver then cancels with ``*``."""
        if not self._started or self._finished:
            raise SaslStateError(f"{self.name}: respond() outside an exchange")
        first = not self._responded
        self._responded = True
        if first and challenge == b"" and self._initial is not None:
            # The initial response was not sent on the AUTH line, and the server asks for
            # it with an empty challenge (RFC 4422 §5, RFC 5034 §4).
            return self._initial
        try:
            return self._respond(challenge)
        except RemoteProtocolError:
            self._finished = True
            raise

    def success(self) -> None:
        """The server said ``+OK``. Raises ServerProofError if it should have proved itself
        (SCRAM) and did not."""
        if not self._started or self._finished:
            raise SaslStateError(f"{self.name}: success() outside an exchange")
        self._finished = True
        self._check_success()

    @abc.abstractmethod
    def _initial_response(self) -> bytes | None: ...

    @abc.abstractmethod
    def _respond(self, challenge: bytes) -> bytes: ...

    def _check_success(self) -> None:
        return None


def success(authzid: str, authcid: str) -> Success:
    return Success(identity=authzid or authcid, authcid=authcid)
