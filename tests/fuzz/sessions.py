"""Whole POP3 sessions fed to ``ServerConnection`` in memory, and the invariants they keep.

Theory of operation
-------------------
A generated session is a byte stream (valid commands in random case, USER/PASS, APOP,
AUTH with random base64, SASL answers, STLS, garbage, over-long lines, bare LFs) plus the
server's settings, the maildrop's messages, and a source of the driver's decisions (accept
this login, send a challenge, fail to read that message...). It is run twice:

- **lockstep**: one line at a time, each answered completely before the next is fed. The
  reply to each line is read the way a client would (one status line; a multi-line body
  after ``+OK`` to CAPA, LIST, UIDL, RETR, TOP and bare AUTH; then at most a closing
  ``-ERR``), so every reply is known to belong to its own command;
- **pipelined**: the same stream cut at random points, fed chunk by chunk.

Invariants checked:

1. the machine raises nothing but ``LocalProtocolError``, and only when the driver misuses
   it (which the driver does now and then on purpose, and checks that nothing changed);
2. every line sent is CRLF-terminated, without NUL, bare CR or bare LF; status lines are
   ``+OK``/``-ERR`` with printable ASCII, SASL challenges ``+ <base64>``; and every line
   but a SASL challenge is at most 512 octets (RFC 1939 §3);
3. nothing is deleted without QUIT: the only ``UpdateRequest`` answers a QUIT line in the
   TRANSACTION state, and deletes exactly the messages whose DELE got ``+OK`` since the
   last RSET; a session that ends any other way deletes nothing;
4. replies come in command order: the pipelined run sends exactly the octets of the
   lockstep run and makes the same update. Octets that followed STLS in the same chunk are
   dropped by design (never read as commands: RFC 2595 §4), so then the comparison is with
   a lockstep run of the stream without them. Only a run without LF longer than the flood
   limit is exempt: where it is cut off depends on the chunks;
5. after the machine closes, it sends nothing more.

The same checks serve the Hypothesis test (a short run in the normal suite) and the
coverage-guided atheris run of ``make fuzz`` (``tests/fuzz/atheris_main.py``).
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import strategies as st

from postoffice.errors import LocalProtocolError
from postoffice.proto.commands import CommandSyntaxError, parse_command
from postoffice.proto.events import (
    NEED_DATA,
    ApopLogin,
    CloseConnection,
    MessageRequest,
    PasswordLogin,
    SaslCancelled,
    SaslResponse,
    SaslStart,
    StartTls,
    UpdateRequest,
)
from postoffice.proto.framing import MessageEncoder, TopFilter
from postoffice.proto.replies import MAX_REPLY_OCTETS
from postoffice.proto.server import LoginFailure, ServerConnection, ServerSettings
from postoffice.proto.states import Pending, State
from tests.proto.driver import Message

FLOOD_MARGIN = 60000
"""Streams with a run this long without LF are exempt from the lockstep/pipelined
comparison: where the flood limit cuts them depends on the chunks."""

MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "OAUTHBEARER", "XOAUTH2")
FAILURES = (
    LoginFailure.BAD_CREDENTIALS,
    LoginFailure.IN_USE,
    LoginFailure.LOGIN_DELAY,
    LoginFailure.TEMPORARY,
    LoginFailure.PERMANENT,
    LoginFailure.NOT_ALLOWED,
)
_STATUS = re.compile(rb"(\+OK|-ERR)( [\x20-\x7e]*)?")
_CHALLENGE = re.compile(rb"\+ [A-Za-z0-9+/]*={0,2}")


class InvariantError(AssertionError):
    """A session broke one of the invariants in the module docstring."""


@dataclass(frozen=True)
class Session:
    """One generated session: settings, maildrop, the client's octets, and the chunking."""

    settings: ServerSettings
    messages: tuple[Message, ...]
    stream: bytes
    cuts: tuple[int, ...]
    seed: int

    def chunks(self) -> list[bytes]:
        points = sorted({0, len(self.stream), *(c % (len(self.stream) + 1) for c in self.cuts)})
        return [self.stream[a:b] for a, b in itertools.pairwise(points) if b > a]

    def lines(self) -> list[bytes]:
        """The stream cut after every LF (the lockstep chunks)."""
        parts = self.stream.split(b"\n")
        lines = [part + b"\n" for part in parts[:-1]]
        if parts[-1]:
            lines.append(parts[-1])
        return lines

    def longest_run_without_lf(self) -> int:
        return max((len(part) for part in self.stream.split(b"\n")), default=0)


# -- the driver ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a run produced."""

    output: bytes = b""
    deleted: list[str] | None = None
    """UIDs of the UpdateRequest, or None if there was none."""
    closed: str | None = None
    dropped: list[tuple[int, int]] = field(default_factory=list)
    """Ranges of the stream discarded after STLS (they followed it in the same chunk)."""
    events: list[str] = field(default_factory=list)


class Driver:
    """Answers the machine's events with decisions from a seeded random source."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.random = random.Random(session.seed)
        self.connection: ServerConnection[Message] = ServerConnection(session.settings)
        self.outcome = Outcome()
        self.out: list[bytes] = [self.connection.data_to_send()]
        self.challenges = 0
        self.fed = 0  # octets of the stream fed so far

    # The driver misuses the machine now and then, and checks the documented refusal.
    def _probe_misuse(self) -> None:
        connection = self.connection
        if self.random.random() >= 0.05 or connection.pending is Pending.NOTHING:
            return
        before = (connection.state, connection.pending, connection.buffered)
        try:
            connection.next_event()
        except LocalProtocolError:
            pass
        else:
            raise InvariantError("next_event while an answer is owed did not raise")
        if (connection.state, connection.pending, connection.buffered) != before:
            raise InvariantError("a refused call changed the machine")

    def feed(self, data: bytes) -> None:
        """Feed octets and answer events until the machine needs data or closes."""
        connection = self.connection
        connection.receive_data(data)
        self.fed += len(data)
        while True:
            event = connection.next_event()
            self.outcome.events.append(type(event).__name__)
            if event is NEED_DATA:
                break
            if isinstance(event, CloseConnection):
                self.outcome.closed = event.reason
                break
            self._probe_misuse()
            if isinstance(event, PasswordLogin):
                right = event.username == "alice" and event.password.reveal() == "secret"
                self._login(right)
            elif isinstance(event, ApopLogin):
                self._login(self.random.random() < 0.5)
            elif isinstance(event, SaslStart | SaslResponse):
                self._sasl()
            elif isinstance(event, SaslCancelled):
                self.challenges = 0
            elif isinstance(event, StartTls):
                if event.discarded:
                    self.outcome.dropped.append((self.fed - event.discarded, self.fed))
                self.out.append(connection.data_to_send())
                if self.random.random() < 0.3:  # the handshake's own octets: never commands
                    connection.receive_data(b"\x16\x03\x01" + self.random.randbytes(20))
                connection.tls_started(
                    plaintext_allowed=self.random.random() < 0.8,
                    sasl_mechanisms=tuple(m for m in MECHANISMS if self.random.random() < 0.5),
                )
            elif isinstance(event, MessageRequest):
                self._message(event)
            elif isinstance(event, UpdateRequest):
                self.outcome.deleted = [message.uid for message in event.deleted]
                removed_all = self.random.random() < 0.9
                remaining = len(self.session.messages) - len(event.deleted)
                connection.update_done(removed_all=removed_all, remaining=remaining)
            self.out.append(connection.data_to_send())
        self.out.append(connection.data_to_send())

    def _login(self, right: bool) -> None:
        connection = self.connection
        if right and self.random.random() < 0.8:
            connection.login_accepted(list(self.session.messages), username="alice")
        else:
            failure = LoginFailure.BAD_CREDENTIALS if not right else self.random.choice(FAILURES)
            connection.login_rejected(failure)
        self.challenges = 0

    def _sasl(self) -> None:
        connection = self.connection
        roll = self.random.random()
        if roll < 0.45 and self.challenges < 3:
            self.challenges += 1
            connection.sasl_challenge(self.random.randbytes(self.random.randrange(0, 48)))
        elif roll < 0.7:
            self._login(True)
        else:
            self._login(False)

    def _message(self, request: MessageRequest[Message]) -> None:
        connection = self.connection
        if self.random.random() < 0.1:
            connection.message_unavailable()
            return
        connection.message_follows()
        self.out.append(connection.data_to_send())
        data = request.message.data
        if request.body_lines is not None:
            data = TopFilter(request.body_lines).feed(data)
        encoder = MessageEncoder()
        self.out.append(encoder.encode(data) + encoder.finish())
        connection.message_sent()

    def result(self) -> Outcome:
        self.outcome.output = b"".join(self.out)
        return self.outcome


# -- the two runs ----------------------------------------------------------------------------


def check_lines(output: bytes) -> list[bytes]:
    """Invariant 2 on a whole output: CRLF lines, no bare CR or LF, lengths. (NUL may be in
    a stored message; ``_read_reply`` checks every other line is printable ASCII.)"""
    if output and not output.endswith(b"\r\n"):
        raise InvariantError(f"output does not end with CRLF: {output[-40:]!r}")
    lines = output.split(b"\r\n")[:-1] if output else []
    for line in lines:
        if b"\n" in line or b"\r" in line:
            raise InvariantError(f"bare CR or LF in a line: {line[:80]!r}")
        if len(line) + 2 > MAX_REPLY_OCTETS and not _CHALLENGE.fullmatch(line):
            raise InvariantError(f"a line of {len(line) + 2} octets: {line[:80]!r}")
    return lines


def run_pipelined(session: Session) -> Outcome:
    driver = Driver(session)
    for chunk in session.chunks():
        before = len(b"".join(driver.out))
        state = driver.connection.state
        driver.feed(chunk)
        if state is State.CLOSED and len(b"".join(driver.out)) != before:
            raise InvariantError("output after the session closed")
    outcome = driver.result()
    check_lines(outcome.output)
    if outcome.deleted is not None and b"QUIT" not in session.stream.upper():
        raise InvariantError("an UPDATE without any QUIT")
    return outcome


def _multiline(line: bytes) -> str | None:
    """What ``+OK`` to this command line starts: "message", "listing" or None (one line)."""
    try:
        command = parse_command(line.rstrip(b"\r\n"))
    except CommandSyntaxError:
        return None
    if command.keyword in ("RETR", "TOP"):
        return "message"
    if command.keyword == "CAPA":
        return "listing"
    if command.keyword in ("LIST", "UIDL", "AUTH") and not command.arguments:
        return "listing"
    return None


_PRINTABLE = re.compile(rb"[\x20-\x7e]*")


def _read_reply(lines: list[bytes], multiline: str | None, line: bytes) -> list[bytes]:
    """Check one reply's shape; return the lines after it."""
    if not lines:
        raise InvariantError(f"no reply to {line[:60]!r}")
    status = lines[0]
    if _CHALLENGE.fullmatch(status):
        return lines[1:]
    if not _STATUS.fullmatch(status):
        raise InvariantError(f"malformed status line {status[:80]!r} for {line[:60]!r}")
    rest = lines[1:]
    if multiline and status.startswith(b"+OK"):
        try:
            end = rest.index(b".")
        except ValueError:
            raise InvariantError(f"unterminated multi-line reply to {line[:60]!r}") from None
        for body_line in rest[:end]:
            if body_line.startswith(b".") and not body_line.startswith(b".."):
                raise InvariantError(f"a body line not dot-stuffed: {body_line[:60]!r}")
            if multiline == "listing" and not _PRINTABLE.fullmatch(body_line):
                raise InvariantError(f"unprintable listing line {body_line[:60]!r}")
        rest = rest[end + 1 :]
    return rest


def run_lockstep(session: Session) -> Outcome:
    """Invariants 1-3 and 5, one line at a time."""
    driver = Driver(session)
    connection = driver.connection
    check_lines(driver.out[0])
    marked: set[str] = set()
    messages = session.messages
    for line in session.lines():
        state = connection.state
        in_sasl = connection._awaiting_sasl_response  # its replies' shape depends on it
        had_update = driver.outcome.deleted is not None
        start = len(driver.out)
        driver.feed(line)
        output = b"".join(driver.out[start:])
        lines = check_lines(output)
        if state is State.CLOSED:
            if output:
                raise InvariantError("output after the session closed")
            continue
        if not line.endswith(b"\n"):
            # An unfinished line: nothing, or the flood notice.
            if output and connection.state is not State.CLOSED:
                raise InvariantError(f"a reply to an unfinished line: {output[:80]!r}")
            continue
        rest = _read_reply(lines, None if in_sasl else _multiline(line), line)
        for extra in rest:  # only notices that the session is closing
            if not (extra.startswith(b"-ERR") and connection.state is State.CLOSED):
                raise InvariantError(f"extra line {extra[:80]!r} after the reply to {line!r}")
        if driver.outcome.deleted is not None and not had_update:
            stripped = line.rstrip(b"\r\n")
            if in_sasl or stripped.upper() != b"QUIT" or state is not State.TRANSACTION:
                raise InvariantError(f"UPDATE after {line!r} in {state}")
            if sorted(driver.outcome.deleted) != sorted(marked):
                raise InvariantError(f"deleted {driver.outcome.deleted}, DELE'd {marked}")
        if state is State.TRANSACTION and not in_sasl and lines:
            _track_deletions(line, lines[0], marked, messages)
    outcome = driver.result()
    if outcome.deleted is None and connection.pending is Pending.UPDATE:
        raise InvariantError("UPDATE pending without an UpdateRequest")
    return outcome


def _track_deletions(
    line: bytes, status: bytes, marked: set[str], messages: Sequence[Message]
) -> None:
    try:
        command = parse_command(line.rstrip(b"\r\n"))
    except CommandSyntaxError:
        return
    if not status.startswith(b"+OK"):
        return
    if command.keyword == "DELE":
        marked.add(messages[int(command.arguments[0]) - 1].uid)
    elif command.keyword == "RSET":
        marked.clear()


def without(session: Session, ranges: Sequence[tuple[int, int]]) -> Session:
    """``session`` with those ranges of its stream removed."""
    kept, position = [], 0
    for start, end in sorted(ranges):
        kept.append(session.stream[position:start])
        position = end
    kept.append(session.stream[position:])
    return dataclasses.replace(session, stream=b"".join(kept))


def check_session(session: Session) -> list[str]:
    """Every invariant, on both runs; returns labels of what the session went through."""
    lockstep = run_lockstep(session)
    pipelined = run_pipelined(session)
    if pipelined.dropped:
        # What followed STLS in its chunk was never read as commands: the same replies as
        # a lockstep client that never sent those octets.
        lockstep = run_lockstep(without(session, pipelined.dropped))
    if session.longest_run_without_lf() < FLOOD_MARGIN:
        if pipelined.output != lockstep.output:
            raise InvariantError(
                "pipelined replies differ from lockstep ones:\n"
                f"  lockstep  {lockstep.output[:2000]!r}\n  pipelined {pipelined.output[:2000]!r}"
            )
        if pipelined.deleted != lockstep.deleted:
            raise InvariantError(f"updates differ: {lockstep.deleted} / {pipelined.deleted}")
    labels = [f"events: {name}" for name in sorted(set(lockstep.events))]
    labels.append(f"closed: {lockstep.closed}")
    labels.append(f"deleted: {len(lockstep.deleted) if lockstep.deleted is not None else None}")
    if pipelined.dropped:
        labels.append("octets dropped after STLS")
    return labels


# -- strategies ------------------------------------------------------------------------------

_numbers = st.one_of(
    st.integers(1, 4).map(str),
    st.integers(1, 4).map(str),
    st.integers(0, 7).map(str),
    st.sampled_from(["-1", "+1", "01", "4294967296", "2147483648", "x", ""]),
)

#: Command kinds, weighted towards the TRANSACTION commands that reach the driver.
KINDS = (
    *("STAT", "LIST", "LIST", "UIDL", "UIDL", "RETR", "RETR", "TOP", "TOP"),
    *("DELE", "DELE", "DELE", "RSET", "NOOP", "CAPA", "QUIT"),
    *("USER", "PASS", "APOP", "AUTH", "AUTH", "SASL", "STLS", "STLS"),
    *("GARBAGE", "LONG"),
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _sasl_blob() -> st.SearchStrategy[str]:
    return st.one_of(
        st.binary(max_size=64).map(_b64),
        st.just("AGFsaWNlAHNlY3JldA=="),  # PLAIN \0alice\0secret
        st.sampled_from(["=", "*", "", "!!!", "YQ", "YQ==="]),
        st.text(
            alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
        ).filter(lambda text: len(text) < 400),
    )


def _case(text: str) -> st.SearchStrategy[str]:
    return st.sampled_from([text, text.lower(), text.capitalize()])


@st.composite
def _command(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(KINDS))
    ending = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b""]))
    if kind == "USER":
        name = draw(st.sampled_from(["alice", "bob", "", "ALICE", "a b", "é\x1b[0m"]))
        text = draw(_case("USER")) + (" " + name if name or draw(st.booleans()) else "")
    elif kind == "PASS":
        password = draw(st.sampled_from(["secret", "wrong", "", " secret", "secret "]))
        text = draw(_case("PASS")) + " " + password
    elif kind == "APOP":
        digest = draw(st.sampled_from(["0" * 32, "F" * 32, "xyz", "0" * 31]))
        text = f"APOP {draw(st.sampled_from(['alice', 'bob']))} {digest}"
    elif kind == "AUTH":
        mechanism = draw(st.sampled_from([*MECHANISMS, "plain", "CRAM-MD5", ""]))
        text = "AUTH" + (" " + mechanism if mechanism else "")
        if mechanism and draw(st.booleans()):
            text += " " + draw(_sasl_blob())
    elif kind == "SASL":
        text = draw(_sasl_blob())
    elif kind in ("LIST", "UIDL"):
        arguments = draw(st.lists(_numbers, max_size=1 if draw(st.integers(0, 9)) else 2))
        text = " ".join([draw(_case(kind)), *arguments])
    elif kind in ("RETR", "DELE"):
        count = 1 if draw(st.integers(0, 9)) else draw(st.sampled_from([0, 2]))
        arguments = draw(st.lists(_numbers, min_size=count, max_size=count))
        text = " ".join([draw(_case(kind)), *arguments])
    elif kind == "TOP":
        count = 2 if draw(st.integers(0, 9)) else draw(st.sampled_from([0, 1, 3]))
        arguments = draw(st.lists(_numbers, min_size=count, max_size=count))
        text = " ".join(["TOP", *arguments])
    elif kind == "GARBAGE":
        return draw(st.binary(max_size=80)) + ending
    elif kind == "LONG":
        size = draw(st.sampled_from([254, 255, 256, 600, 5000, 20000, 70000]))
        return b"L" * size + ending
    else:
        text = draw(_case(kind))
        if draw(st.integers(0, 9)) == 0:
            text += " extra"
    return text.encode("utf-8") + ending


_body_line = st.one_of(
    st.sampled_from([b".", b"..", b".x", b"", b"From x", b"Subject: s"]),
    st.binary(max_size=60).map(lambda data: data.replace(b"\r", b"").replace(b"\n", b"")),
)


@st.composite
def _message(draw: st.DrawFn, number: int) -> Message:
    lines = [b"Subject: m%d" % number, b"", *draw(st.lists(_body_line, max_size=8))]
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = ending.join(lines)
    if draw(st.booleans()):
        data += ending
    return Message(uid=f"uid-{number}", data=data)


@st.composite
def _settings(draw: st.DrawFn) -> ServerSettings:
    return ServerSettings(
        apop_timestamp=draw(st.sampled_from([None, "<1.2@example.org>"])),
        stls=draw(st.booleans()),
        tls_active=draw(st.booleans()),
        plaintext_allowed=draw(st.booleans()),
        sasl_mechanisms=tuple(draw(st.lists(st.sampled_from(MECHANISMS), unique=True))),
        login_delay=draw(st.sampled_from([None, 300, 0])),
        implementation=draw(st.sampled_from([None, "postoffice", "bad\rimpl\nX\x00"])),
        max_line_octets=draw(st.sampled_from([255, 256, 1024])),
        max_bad_commands=draw(st.sampled_from([20, 20, 20, 20, 3, 1])),
        max_login_failures=draw(st.sampled_from([3, 3, 3, 6, 1])),
    )


LOGIN = b"USER alice\r\nPASS secret\r\n"


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    # Hypothesis starts from the first choice and shrinks towards it: the first ones here
    # make a session that logs in to a full maildrop and goes on for a while.
    count = draw(st.sampled_from([4, 4, 4, 3, 2, 1, 0]))
    messages = tuple(draw(_message(number)) for number in range(1, count + 1))
    opening = draw(st.sampled_from([LOGIN, LOGIN, LOGIN, b""]))
    length = draw(st.integers(1, 40))  # not Hypothesis's short lists: sessions go deep
    commands = draw(st.lists(_command(), min_size=length, max_size=length))
    closing = draw(st.sampled_from([b"QUIT\r\n", b""]))
    stream = opening + b"".join(commands) + closing
    cuts = tuple(draw(st.lists(st.integers(0, 2**20), max_size=12)))
    return Session(
        settings=draw(_settings()),
        messages=messages,
        stream=stream,
        cuts=cuts,
        seed=draw(st.integers(0, 2**32 - 1)),
    )
