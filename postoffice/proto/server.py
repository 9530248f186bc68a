"""The server side of a POP3 session as a pure state machine (RFC 1939, RFC 2449).

Theory of operation
-------------------
The driver feeds peer octets with ``receive_data`` and calls ``next_event`` until it gets
``NEED_DATA``; between calls it sends ``data_to_send()``. Commands the machine can answer
from the session snapshot are answered at once, into the outgoing buffer, so a pipelined
burst of them becomes one write. A command that needs the outside world (a password check,
a message body, the UPDATE) comes back as an event, and the machine then refuses to parse
further until the driver calls the matching answer method; this keeps replies in command
order however many commands arrive in one segment (RFC 2449 §6.6).

Message numbers, sizes and UIDLs are fixed at login from the snapshot the driver passes to
``login_accepted`` (RFC 1939 §4). DELE and RSET only change marks held here; only the
``UpdateRequest`` produced by QUIT in TRANSACTION ever tells the driver to delete.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from types import MappingProxyType
from typing import Any, Generic

from postoffice.errors import LocalProtocolError
from postoffice.proto import replies
from postoffice.proto.commands import Command, CommandSyntaxError, parse_command, parse_number
from postoffice.proto.events import (
    NEED_DATA,
    ApopLogin,
    CloseConnection,
    Event,
    MessageRequest,
    MessageT,
    PasswordLogin,
    SaslCancelled,
    SaslResponse,
    SaslStart,
    StartTls,
    UpdateRequest,
)
from postoffice.proto.framing import LineBuffer, LineProblem
from postoffice.proto.listings import scan_listing_body, uid_listing_body
from postoffice.proto.replies import ResponseCode, err, multiline, ok
from postoffice.proto.states import COMMAND_STATES, Pending, State
from postoffice.sasl.errors import MalformedSaslError
from postoffice.sasl.framing import (
    CANCEL,
    challenge_line,
    decode_initial_response,
    decode_response,
)
from postoffice.secret import Secret

_APOP_DIGEST_OCTETS = 32
# C-speed column reads over the snapshot (100,000 messages: milliseconds).
_SIZE = attrgetter("size")
_UID = attrgetter("uid")


def _sizes(messages: Sequence[Any]) -> Sequence[int]:
    """Every message's size, in order. A snapshot may offer them as one column
    (``sizes()``, as the server's large and packed snapshots do): then no message is made."""
    column: Callable[[], Sequence[int]] | None = getattr(messages, "sizes", None)
    return column() if column is not None else tuple(map(_SIZE, messages))


def _uids(messages: Sequence[Any]) -> Sequence[str]:
    """Every message's UIDL, in order; a column (``uids()``) if the snapshot offers one."""
    column: Callable[[], Sequence[str]] | None = getattr(messages, "uids", None)
    return column() if column is not None else tuple(map(_UID, messages))


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSettings:
    """What the protocol machine needs to know of the server's configuration."""

    greeting: str = "postoffice ready"
    signoff: str = "postoffice signing off"
    apop_timestamp: str | None = None
    """``<...>`` msg-id put in the greeting when APOP is enabled; fresh for each session."""
    stls: bool = False
    """Offer STLS (RFC 2595): a plain listener of a server that has a certificate."""
    tls_active: bool = False
    plaintext_allowed: bool = True
    """Whether USER/PASS and plaintext SASL mechanisms are offered now (RFC 2595 §2.3)."""
    sasl_mechanisms: tuple[str, ...] = ()
    plaintext_mechanisms: frozenset[str] = frozenset({"PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2"})
    """Mechanisms that reveal a reusable secret to an eavesdropper: hidden before TLS."""
    max_sasl_line_octets: int = 16384
    """SASL responses may be longer than command lines (RFC 5034 §4)."""
    expire: str = "NEVER"
    login_delay: int | None = None
    implementation: str | None = None
    max_line_octets: int = 255
    max_discard_octets: int = 65536
    max_bad_commands: int = 20
    max_login_failures: int = 3


class LoginFailure:
    """Why a login was rejected; each value is the exact ``-ERR`` line sent."""

    BAD_CREDENTIALS = err("authentication failed", ResponseCode.AUTH)
    IN_USE = err("maildrop is locked by another session", ResponseCode.IN_USE)
    LOGIN_DELAY = err("minimum time between logins not yet reached", ResponseCode.LOGIN_DELAY)
    TEMPORARY = err("maildrop temporarily unavailable, try again later", ResponseCode.SYS_TEMP)
    PERMANENT = err("maildrop unavailable, contact the administrator", ResponseCode.SYS_PERM)
    NOT_ALLOWED = err("plaintext login is not allowed here, use STLS first", ResponseCode.AUTH)
    CANCELLED = err("authentication cancelled")


@functools.lru_cache(maxsize=8)
def _greeting_line(greeting: str) -> bytes:
    """The greeting without an APOP timestamp: the same line for every session."""
    return ok(replies.printable(greeting))


_NONE_MARKED: Mapping[int, None] = MappingProxyType({})
# A NOOP line as clients send it, whole: answered by ``quick_reply`` (other spellings,
# such as "Noop", take the usual path to the same reply).
_NOOP_LINES = frozenset((b"NOOP\r\n", b"noop\r\n", b"NOOP\n", b"noop\n"))
QUICK_REPLY_OCTETS = max(map(len, _NOOP_LINES))
"""The longest input ``quick_reply`` answers: a driver need not offer it longer reads."""
_NOOP_REPLY = ok()


def _marked(indexes: Mapping[int, None], index: int) -> dict[int, None]:
    """``indexes`` with ``index`` added: the session's own dict, made at the first mark."""
    marked = indexes if isinstance(indexes, dict) else {}
    marked[index] = None
    return marked


@dataclass(slots=True)
class SessionCounters:
    """What the session did, for the log line at its end."""

    commands: int = 0
    bad_commands: int = 0
    login_failures: int = 0
    retrieved: int = 0
    top: int = 0
    deleted: int = 0


class ServerConnection(Generic[MessageT]):
    """One POP3 session, server side. Owns no socket, file or clock."""

    # No per-session attribute dictionary: thousands of idle sessions each hold one.
    __slots__ = (
        "_awaiting_sasl_response",
        "_close_reason",
        "_count",
        "_deleted",
        "_lines",
        "_messages",
        "_octets",
        "_out",
        "_pending_request",
        "_retrieved",
        "_sasl",
        "_user_given",
        "counters",
        "discarded_octets",
        "pending",
        "settings",
        "state",
        "username",
    )

    def __init__(self, settings: ServerSettings | None = None) -> None:
        self.settings = settings or ServerSettings()
        self.state = State.AUTHORIZATION
        self.pending = Pending.NOTHING
        self.counters = SessionCounters()
        self.username: str | None = None
        self._user_given: str | None = None
        self._lines = LineBuffer(
            max_line_octets=self.settings.max_line_octets,
            max_discard_octets=self.settings.max_discard_octets,
            # AUTH with an initial response may exceed 255 octets (mpop sends OAUTHBEARER
            # tokens that way); RFC 5034 allows the SASL data itself to be longer.
            long_prefix=b"AUTH ",
            long_line_octets=self.settings.max_sasl_line_octets,
        )
        self._out: list[bytes] | None = None  # replies not yet taken; None: none
        self._messages: Sequence[MessageT] = ()
        # 0-based indexes marked by DELE, and those sent whole by RETR: dicts, made when the
        # first one is marked (most sessions never mark one; an idle session keeps neither).
        self._deleted: Mapping[int, None] = _NONE_MARKED
        self._count = 0  # messages not marked deleted
        self._octets = 0  # and their octets
        self._retrieved: Mapping[int, None] = _NONE_MARKED
        self._pending_request: MessageRequest[MessageT] | None = None
        self._close_reason: str | None = None
        self._sasl = False  # an AUTH exchange is under way
        self._awaiting_sasl_response = False  # the next line answers a challenge
        self.discarded_octets = 0
        timestamp = self.settings.apop_timestamp
        if timestamp is None:
            self._reply(_greeting_line(self.settings.greeting))
        else:
            self._reply(ok(replies.printable(f"{self.settings.greeting} {timestamp}")))

    # -- input and output ------------------------------------------------------------

    def receive_data(self, data: bytes | memoryview) -> None:
        """Octets from the peer (copied; a view may be reused once this returns). After the
        session closed they are ignored."""
        if self.pending is Pending.TLS:
            # Between STLS and the handshake nothing may be read as a command (RFC 2595 §4).
            self.discarded_octets += len(data)
        elif self.state is not State.CLOSED:
            self._lines.feed(data)

    def quick_reply(self, data: bytes | memoryview) -> bytes | None:
        """The reply to ``data`` if it is one whole NOOP line in the TRANSACTION state with
        nothing buffered, queued or pending; else None, and ``data`` goes to
        ``receive_data`` as usual.

        The reply and the count of commands are what ``receive_data`` and ``next_event``
        would give (and ``next_event`` would then return ``NEED_DATA``), without the line
        buffer, the parser and the dispatch: idle sessions keep themselves open with NOOP,
        thousands at a time, and each costs a fraction of a full command.
        """
        if (
            len(data) > QUICK_REPLY_OCTETS
            or self.state is not State.TRANSACTION
            or self.pending is not Pending.NOTHING
            or self._out is not None
            or not self._lines.empty
            or bytes(data) not in _NOOP_LINES
        ):
            return None
        self.counters.commands += 1
        return _NOOP_REPLY

    @property
    def buffered(self) -> int:
        """Octets received and not yet parsed (the driver stops reading when this grows)."""
        return self._lines.buffered

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call."""
        out = self._out
        if out is None:
            return b""
        self._out = None
        return out[0] if len(out) == 1 else b"".join(out)

    def _reply(self, line: bytes) -> None:
        if self._out is None:
            self._out = [line]
        else:
            self._out.append(line)

    def next_event(self) -> Event[MessageT]:
        """Process buffered commands until one needs the driver or more data is needed."""
        if self.pending is not Pending.NOTHING:
            raise LocalProtocolError(f"waiting for the driver's answer to {self.pending.value}")
        while True:
            if self.state is State.CLOSED:
                return CloseConnection(reason=self._close_reason or "closed")
            line = self._lines.next_line()
            if line is None:
                return NEED_DATA
            if line is LineProblem.FLOOD:
                self._reply(err("line too long, closing connection"))
                self._close("line flood")
                continue
            if self._awaiting_sasl_response and line is LineProblem.TOO_LONG:
                return self._sasl_line(line)  # ends the exchange with one -ERR
            if line is LineProblem.TOO_LONG:
                self._bad_command(err("line too long"))
                continue
            if self._awaiting_sasl_response:
                return self._sasl_line(line)
            assert isinstance(line, bytes)
            event = self._handle_line(line)
            if event is not None:
                return event

    # -- answers from the driver -----------------------------------------------------

    def login_accepted(self, messages: Sequence[MessageT], *, username: str | None = None) -> None:
        """The login was right and the maildrop is locked; ``messages`` is the snapshot."""
        self._require(Pending.LOGIN)
        self.pending = Pending.NOTHING
        self._sasl = False
        if username is not None:
            self.username = username
        self._messages = messages
        self._count = len(messages)
        self._octets = sum(_sizes(messages))
        self.state = State.TRANSACTION
        self._user_given = None
        count, octets = self._totals()
        self._reply(ok(f"maildrop has {count} messages ({octets} octets)"))

    def login_rejected(self, failure: bytes = LoginFailure.BAD_CREDENTIALS) -> None:
        """The login failed; ``failure`` is one of the ``LoginFailure`` lines."""
        self._require(Pending.LOGIN)
        self.pending = Pending.NOTHING
        self._sasl = False
        self._user_given = None
        self.username = None
        self._reply(failure)
        if failure in (LoginFailure.BAD_CREDENTIALS, LoginFailure.NOT_ALLOWED):
            self.counters.login_failures += 1
            if self.counters.login_failures >= self.settings.max_login_failures:
                self._reply(err("too many failed logins, closing connection"))
                self._close("too many failed logins")

    def sasl_challenge(self, data: bytes) -> None:
        """Send a SASL challenge (``+ base64``); the client's answer becomes ``SaslResponse``."""
        self._require(Pending.LOGIN)
        if not self._sasl:
            raise LocalProtocolError("no AUTH exchange is under way")
        self.pending = Pending.NOTHING
        self._awaiting_sasl_response = True
        self._lines.max_line_octets = self.settings.max_sasl_line_octets
        self._reply(challenge_line(data))

    def tls_started(
        self, *, plaintext_allowed: bool, sasl_mechanisms: tuple[str, ...] | None = None
    ) -> None:
        """The STLS handshake completed; everything said before it is forgotten."""
        self._require(Pending.TLS)
        self.pending = Pending.NOTHING
        self.settings = dataclasses.replace(
            self.settings,
            tls_active=True,
            stls=False,
            plaintext_allowed=plaintext_allowed,
            sasl_mechanisms=(
                self.settings.sasl_mechanisms if sasl_mechanisms is None else sasl_mechanisms
            ),
        )
        self._user_given = None
        self.username = None

    def message_follows(self) -> None:
        """Queue the ``+OK`` line of RETR/TOP; the driver sends the encoded body after it."""
        request = self._require_message()
        if request.body_lines is None:
            self._reply(ok(f"{request.message.size} octets"))
        else:
            self._reply(ok("top of message follows"))

    def message_sent(self) -> None:
        """The driver has sent the whole body including its terminating ``.`` line."""
        request = self._require_message()
        self.pending = Pending.NOTHING
        self._pending_request = None
        if request.body_lines is None:
            self._retrieved = _marked(self._retrieved, request.number - 1)
            self.counters.retrieved += 1
        else:
            self.counters.top += 1

    def message_unavailable(self) -> None:
        """The message could not be read (gone, or an I/O error); nothing was sent for it."""
        self._require_message()
        self.pending = Pending.NOTHING
        self._pending_request = None
        self._reply(err("message could not be read", ResponseCode.SYS_TEMP))

    def update_done(self, *, removed_all: bool, remaining: int) -> None:
        """UPDATE finished (RFC 1939 §6); the session then closes."""
        self._require(Pending.UPDATE)
        self.pending = Pending.NOTHING
        if removed_all:
            left = "maildrop empty" if remaining == 0 else _count(remaining, "message") + " left"
            self._reply(ok(f"{self.settings.signoff} ({left})"))
        else:
            self._reply(err("some deleted messages not removed", ResponseCode.SYS_TEMP))
        self._close("quit")

    # -- internals -------------------------------------------------------------------

    def _require(self, pending: Pending) -> None:
        if self.pending is not pending:
            raise LocalProtocolError(
                f"not waiting for {pending.value} (waiting for {self.pending.value})"
            )

    def _require_message(self) -> MessageRequest[MessageT]:
        self._require(Pending.MESSAGE)
        assert self._pending_request is not None
        return self._pending_request

    def _close(self, reason: str) -> None:
        self.state = State.CLOSED
        self._close_reason = reason

    def _bad_command(self, reply: bytes) -> None:
        self._reply(reply)
        self.counters.bad_commands += 1
        if self.counters.bad_commands >= self.settings.max_bad_commands:
            self._reply(err("too many bad commands, closing connection"))
            self._close("too many bad commands")

    def _handle_line(self, line: bytes) -> Event[MessageT] | None:
        self.counters.commands += 1
        try:
            command = parse_command(line)
        except CommandSyntaxError:
            self._bad_command(err("unknown command or bad syntax"))
            return None
        states = COMMAND_STATES.get(command.keyword)
        if states is None:
            self._bad_command(err("unknown command"))
            return None
        if self.state not in states:
            self._bad_command(
                err(f"{command.keyword} is not allowed in the {self.state.value} state")
            )
            return None
        try:
            return self._dispatch(command)
        except CommandSyntaxError as error:
            self._bad_command(err(f"{command.keyword}: {error}"))
            return None

    def _dispatch(self, command: Command) -> Event[MessageT] | None:
        keyword = command.keyword
        arguments = command.arguments
        if keyword == "CAPA":
            _no_arguments(arguments)
            self._reply(multiline(ok("capability list follows"), self._capabilities()))
        elif keyword == "QUIT":
            _no_arguments(arguments)
            return self._quit()
        elif keyword == "USER":
            self._user(arguments)
        elif keyword == "PASS":
            return self._pass(arguments)
        elif keyword == "APOP":
            return self._apop(arguments)
        elif keyword == "STLS":
            _no_arguments(arguments)
            return self._stls()
        elif keyword == "AUTH":
            return self._auth(arguments)
        elif keyword == "STAT":
            _no_arguments(arguments)
            count, octets = self._totals()
            self._reply(ok(f"{count} {octets}"))
        elif keyword == "LIST":
            self._listing(arguments, uid=False)
        elif keyword == "UIDL":
            self._listing(arguments, uid=True)
        elif keyword == "RETR":
            (argument,) = _arguments(arguments, 1)
            return self._request(argument, None)
        elif keyword == "TOP":
            number, lines = _arguments(arguments, 2)
            return self._request(number, parse_number(lines, minimum=0))
        elif keyword == "DELE":
            (argument,) = _arguments(arguments, 1)
            index = self._message_index(argument)
            if index is not None:
                self._deleted = _marked(self._deleted, index)
                self._count -= 1
                self._octets -= self._messages[index].size
                self._reply(ok(f"message {index + 1} deleted"))
        elif keyword == "RSET":
            _no_arguments(arguments)
            self._deleted = _NONE_MARKED
            self._count = len(self._messages)
            self._octets = sum(_sizes(self._messages))
            count, octets = self._totals()
            self._reply(ok(f"maildrop has {count} messages ({octets} octets)"))
        elif keyword == "NOOP":
            _no_arguments(arguments)
            self._reply(ok())
        else:  # pragma: no cover - COMMAND_STATES and this dispatch list must agree
            raise LocalProtocolError(f"no handler for {keyword}")
        return None

    def _capabilities(self) -> list[bytes]:
        settings = self.settings
        tags = ["TOP"]
        if settings.stls and not settings.tls_active:
            tags.append("STLS")
        if settings.plaintext_allowed:
            tags.append("USER")
        mechanisms = self._visible_mechanisms()
        if mechanisms:
            tags.append("SASL " + " ".join(mechanisms))
        tags += ["UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        tags.append(f"EXPIRE {replies.printable(settings.expire)}")
        if settings.login_delay is not None:
            tags.append(f"LOGIN-DELAY {settings.login_delay}")
        if settings.implementation:
            tags.append(f"IMPLEMENTATION {replies.printable(settings.implementation)}")
        return [tag.encode("ascii") for tag in tags]

    def _quit(self) -> Event[MessageT] | None:
        if self.state is State.AUTHORIZATION:
            self._reply(ok(self.settings.signoff))
            self._close("quit")
            return None
        self.state = State.UPDATE
        self.pending = Pending.UPDATE
        deleted = [self._messages[index] for index in sorted(self._deleted)]
        retrieved = [
            self._messages[index] for index in sorted(self._retrieved) if index not in self._deleted
        ]
        self.counters.deleted = len(deleted)
        return UpdateRequest(deleted=deleted, retrieved=retrieved)

    def _user(self, arguments: tuple[bytes, ...]) -> None:
        (argument,) = _arguments(arguments, 1)
        # Always +OK (even where plaintext login is refused: PASS says so, after the same
        # work as a wrong password): a different answer for unknown names would reveal which exist.
        self._user_given = argument.decode("utf-8", "replace")
        self._reply(ok("send PASS"))

    def _pass(self, arguments: tuple[bytes, ...]) -> Event[MessageT] | None:
        (argument,) = _arguments(arguments, 1)
        if self._user_given is None:
            self._bad_command(err("send USER first"))
            return None
        self.pending = Pending.LOGIN
        self.username = self._user_given
        return PasswordLogin(
            username=self._user_given, password=Secret(argument.decode("utf-8", "surrogateescape"))
        )

    def _apop(self, arguments: tuple[bytes, ...]) -> Event[MessageT] | None:
        name, digest = _arguments(arguments, 2)
        timestamp = self.settings.apop_timestamp
        if timestamp is None:
            self._bad_command(err("APOP is not enabled"))
            return None
        text = digest.decode("ascii", "replace").lower()
        if len(text) != _APOP_DIGEST_OCTETS or any(c not in "0123456789abcdef" for c in text):
            raise CommandSyntaxError("digest must be 32 hexadecimal digits")
        self.pending = Pending.LOGIN
        self.username = name.decode("utf-8", "replace")
        return ApopLogin(username=self.username, timestamp=timestamp, digest=text)

    def _visible_mechanisms(self) -> list[str]:
        settings = self.settings
        return [
            mechanism
            for mechanism in settings.sasl_mechanisms
            if settings.plaintext_allowed or mechanism not in settings.plaintext_mechanisms
        ]

    def _stls(self) -> Event[MessageT] | None:
        if self.settings.tls_active:
            self._bad_command(err("TLS is already active"))
            return None
        if not self.settings.stls:
            self._bad_command(err("STLS is not available"))
            return None
        self._reply(ok("begin TLS negotiation"))
        discarded = len(self._lines.take_unread())
        self.discarded_octets += discarded
        self.pending = Pending.TLS
        return StartTls(discarded=discarded)

    def _auth(self, arguments: tuple[bytes, ...]) -> Event[MessageT] | None:
        if not arguments:
            # RFC 1734-style discovery, still used by Outlook.
            names = [name.encode("ascii") for name in self._visible_mechanisms()]
            self._reply(multiline(ok("supported mechanisms follow"), names))
            return None
        if len(arguments) > 2:
            raise CommandSyntaxError("takes a mechanism and an optional initial response")
        mechanism = arguments[0].decode("ascii", "replace").upper()
        if mechanism not in self.settings.sasl_mechanisms:
            self._bad_command(err("unsupported authentication mechanism"))
            return None
        initial: bytes | None = None
        if len(arguments) == 2:
            decoded = _decode_base64(arguments[1])
            if decoded is None:
                self._bad_command(err("malformed base64 in initial response"))
                return None
            initial = decoded
        self.pending = Pending.LOGIN
        self._sasl = True
        return SaslStart(mechanism=mechanism, initial_response=initial)

    def _sasl_line(self, line: bytes | LineProblem) -> Event[MessageT]:
        self._awaiting_sasl_response = False
        self._lines.max_line_octets = self.settings.max_line_octets
        response: bytes | None = None
        if isinstance(line, bytes):
            try:
                decoded = decode_response(line)  # an empty line is empty data (RFC 5034 §4)
            except MalformedSaslError:
                decoded = None
            if decoded is CANCEL:
                self._sasl = False
                self._reply(LoginFailure.CANCELLED)
                return SaslCancelled(reason="cancelled by client")
            response = decoded if isinstance(decoded, bytes) else None
        if response is None:
            self._sasl = False
            self._reply(err("malformed SASL response"))
            self.counters.bad_commands += 1
            return SaslCancelled(reason="malformed response")
        self.pending = Pending.LOGIN
        return SaslResponse(data=response)

    def _totals(self) -> tuple[int, int]:
        return self._count, self._octets

    def _message_index(self, argument: bytes) -> int | None:
        """The 0-based index for a message-number argument, or None after queuing -ERR."""
        number = parse_number(argument, minimum=0)
        if not 1 <= number <= len(self._messages):
            self._reply(err("no such message"))
            return None
        if number - 1 in self._deleted:
            self._reply(err(f"message {number} already deleted"))
            return None
        return number - 1

    def _listing(self, arguments: tuple[bytes, ...], *, uid: bool) -> None:
        if len(arguments) > 1:
            raise CommandSyntaxError("too many arguments")
        if arguments:
            index = self._message_index(arguments[0])
            if index is not None:
                message = self._messages[index]
                value = message.uid if uid else str(message.size)
                self._reply(ok(f"{index + 1} {value}"))
            return
        # Numbers never start with ".": the body needs no dot-stuffing.
        if uid:
            body = uid_listing_body(_uids(self._messages), self._deleted)
            first = ok("unique-id listing follows")
        else:
            body = scan_listing_body(_sizes(self._messages), self._deleted)
            count, octets = self._totals()
            first = ok(f"{count} messages ({octets} octets)")
        self._reply(first + body + b".\r\n")

    def _request(self, argument: bytes, body_lines: int | None) -> Event[MessageT] | None:
        index = self._message_index(argument)
        if index is None:
            return None
        request = MessageRequest(
            number=index + 1, message=self._messages[index], body_lines=body_lines
        )
        self.pending = Pending.MESSAGE
        self._pending_request = request
        return request


def _decode_base64(data: bytes) -> bytes | None:
    """Strict base64 (RFC 4648 §4); ``=`` alone is the empty string (RFC 5034 §4)."""
    try:
        return decode_initial_response(data)
    except MalformedSaslError:
        return None


def _no_arguments(arguments: tuple[bytes, ...]) -> None:
    if arguments:
        raise CommandSyntaxError("takes no arguments")


def _arguments(arguments: tuple[bytes, ...], count: int) -> tuple[bytes, ...]:
    if len(arguments) != count:
        raise CommandSyntaxError(f"takes {_count(count, 'argument')}")
    return arguments


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
