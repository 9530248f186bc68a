"""The client side of a POP3 session as a pure state machine (RFC 1939, RFC 2449, RFC 5034).

Theory of operation
-------------------
The driver calls ``send(request)`` and writes the bytes it returns; it feeds the server's
octets with ``receive_data`` (``b""`` at end of file) and calls ``next_event`` until it gets
``NEED_DATA``. Every request sent is queued with the kind of reply it expects (single line,
multi-line, SASL exchange), so replies are matched to commands by order alone, however many
commands are in flight (RFC 2449 §6.6 pipelining). The greeting is the implicit first reply.

A multi-line body streams: each ``BodyData`` holds what arrived, never more than
``max_chunk`` octets, with dot-stuffing undone by ``MultilineDecoder``; a body of any size
needs bounded memory, and no line-length limit applies inside it.

Commands that change what may follow (PASS, APOP, AUTH, STLS, QUIT) are barriers: nothing
more may be sent until their reply is read. After ``+OK`` to STLS the machine stops parsing
(``PAUSED``); octets that arrived after that line are handed back by ``take_unread`` and are
never read as replies (RFC 2595 §4, the STARTTLS response-injection class of bug). The
driver runs the handshake and calls ``tls_started``.

Errors by the peer raise ``RemoteProtocolError``; misuse by the driver raises
``LocalProtocolError``.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from postoffice.errors import LocalProtocolError, RemoteProtocolError
from postoffice.proto.client_events import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    BodyData,
    ClientEvent,
    Continuation,
    Greeting,
    MultilineEnd,
    MultilineStart,
    Reply,
    Request,
    SaslResponse,
)
from postoffice.proto.framing import MultilineDecoder
from postoffice.proto.states import COMMAND_STATES, State
from postoffice.secret import Secret

__all__ = ["ClientConnection"]

# RFC 1939 §7, RFC 2449 §5: which commands answer with a multi-line reply.
_MULTILINE_ALWAYS = frozenset({"CAPA", "RETR", "TOP"})
_MULTILINE_WITHOUT_ARGUMENT = frozenset({"LIST", "UIDL"})
# Nothing may be pipelined after these until their reply is read: they change the state,
# the connection's security, or end the session.
_BARRIERS = frozenset({"PASS", "APOP", "AUTH", "STLS", "QUIT"})
_LOGINS = frozenset({"PASS", "APOP", "AUTH"})
_FORBIDDEN_IN_ARGUMENT = re.compile(r"[\x00\r\n]")
_TIMESTAMP = re.compile(r"<[^<>\s]*@[^<>\s]*>")  # RFC 1939 §7 APOP: a msg-id
_CODE = re.compile(r"\[([^\]\s]{1,64})\]\s?")


@dataclass(slots=True)
class _Pending:
    request: Request
    multiline: bool


class ClientConnection:
    """One POP3 session, client side. Owns no socket, clock or file."""

    def __init__(self, *, max_line_octets: int = 16384, max_chunk: int = 1 << 16) -> None:
        # RFC 1939 §3 caps replies at 512 octets; real servers exceed it (SASL challenges,
        # long greetings), so the default is generous but still bounded.
        self.max_line_octets = max_line_octets
        self.max_chunk = max_chunk
        self.state = State.AUTHORIZATION
        self.greeted = False
        self.paused = False
        self._buffer = bytearray()
        self._eof = False
        self._queue: deque[_Pending] = deque()
        self._decoder: MultilineDecoder | None = None
        self._end_pending: MultilineEnd | None = None
        self._awaiting_sasl_response = False

    # -- output ----------------------------------------------------------------------

    def send(self, request: Request | SaslResponse) -> bytes:
        """The octets for ``request``; its reply is expected after all earlier ones."""
        if isinstance(request, SaslResponse):
            return self._send_sasl(request)
        keyword = request.keyword.upper()
        self._require_sendable(keyword)
        words = [keyword]
        for argument in request.arguments:
            text = argument.reveal() if isinstance(argument, Secret) else argument
            if not text or _FORBIDDEN_IN_ARGUMENT.search(text):
                raise LocalProtocolError(f"{keyword}: empty argument or one with CR, LF or NUL")
            words.append(text)
        line = " ".join(words).encode("utf-8") + b"\r\n"
        if len(line) > 255 and keyword not in ("AUTH", "PASS"):
            raise LocalProtocolError(f"{keyword}: command longer than 255 octets")  # RFC 2449 §4
        multiline = keyword in _MULTILINE_ALWAYS or (
            keyword in _MULTILINE_WITHOUT_ARGUMENT and not request.arguments
        )
        if keyword != request.keyword:  # the reply names the command as it was sent
            request = Request(keyword=keyword, arguments=request.arguments)
        self._queue.append(_Pending(request, multiline))
        return line

    def _send_sasl(self, response: SaslResponse) -> bytes:
        if not self._awaiting_sasl_response:
            raise LocalProtocolError("no AUTH continuation is waiting for an answer")
        text = response.data.reveal()
        if _FORBIDDEN_IN_ARGUMENT.search(text):
            raise LocalProtocolError("SASL response with CR, LF or NUL")
        self._awaiting_sasl_response = False
        return text.encode("ascii") + b"\r\n"

    def _require_sendable(self, keyword: str) -> None:
        if not self.greeted:
            raise LocalProtocolError(f"{keyword}: the server's greeting has not been read")
        if self.paused:
            raise LocalProtocolError(f"{keyword}: waiting for the TLS handshake")
        if self.state is State.CLOSED:
            raise LocalProtocolError(f"{keyword}: the session is closed")
        states = COMMAND_STATES.get(keyword)
        if states is None:
            raise LocalProtocolError(f"{keyword}: not a POP3 command")
        if self.state not in states:
            allowed = " or ".join(sorted(state.value for state in states))
            raise LocalProtocolError(
                f"{keyword} is allowed in {allowed}, not in {self.state.value}"
            )
        if self._queue and self._queue[-1].request.keyword in _BARRIERS:
            barrier = self._queue[-1].request.keyword
            raise LocalProtocolError(f"{keyword}: cannot be pipelined after {barrier}")
        if keyword in ("AUTH", "STLS") and self._queue:
            raise LocalProtocolError(f"{keyword}: must not follow unanswered commands")

    # -- input -----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Octets from the server; ``b""`` means it closed the connection."""
        if not data:
            self._eof = True
        elif self.state is not State.CLOSED:
            self._buffer += data

    @property
    def unparsed(self) -> int:
        """Octets received and not parsed yet (a driver pauses reading while many wait)."""
        return len(self._buffer)

    @property
    def outstanding(self) -> int:
        """Requests sent whose replies have not been completely read."""
        return len(self._queue)

    def take_unread(self) -> bytes:
        """While paused for TLS: the octets received after the STLS ``+OK`` line."""
        if not self.paused:
            raise LocalProtocolError("take_unread is only for the STLS switch")
        unread = bytes(self._buffer)
        self._buffer.clear()
        return unread

    def tls_started(self) -> None:
        """The handshake is done: parse again, from an empty buffer (RFC 2595 §4)."""
        if not self.paused:
            raise LocalProtocolError("not waiting for a TLS handshake")
        self.paused = False
        self._buffer.clear()

    def next_event(self) -> ClientEvent:
        """The next event, ``NEED_DATA``, ``PAUSED`` or ``CLOSED``."""
        if self.paused:
            return PAUSED
        if self._awaiting_sasl_response:
            raise LocalProtocolError("answer the AUTH continuation first")
        if self._end_pending is not None:
            end, self._end_pending = self._end_pending, None
            return end
        if self._decoder is not None:
            return self._body_event(self._decoder)
        line = self._next_line()
        if line is None:
            if self._eof:
                return self._at_eof()
            return NEED_DATA
        if not self.greeted:
            return self._greeting(line)
        if not self._queue:
            if self.state is State.CLOSED:
                return CLOSED
            raise RemoteProtocolError("the server sent a reply to no command")
        return self._reply(line)

    # -- internals -------------------------------------------------------------------

    def _next_line(self) -> str | None:
        buffer = self._buffer
        end = buffer.find(b"\n", 0, self.max_line_octets)
        if end < 0:
            if len(buffer) >= self.max_line_octets:
                raise RemoteProtocolError(f"reply line longer than {self.max_line_octets} octets")
            return None
        raw = bytes(buffer[:end])
        del buffer[: end + 1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        # Reply text is for people; invalid UTF-8 is not worth failing a session over.
        return raw.decode("utf-8", "replace")

    def _at_eof(self) -> ClientEvent:
        if not self.greeted:
            raise RemoteProtocolError("connection closed before the greeting")
        if self._queue:
            keyword = self._queue[0].request.keyword
            if self._buffer:
                raise RemoteProtocolError(f"connection closed inside the reply to {keyword}")
            raise RemoteProtocolError(f"connection closed before the reply to {keyword}")
        self.state = State.CLOSED
        return CLOSED

    def _greeting(self, line: str) -> Greeting:
        ok, text = _status(line)
        if ok is None:
            raise RemoteProtocolError("the greeting is neither +OK nor -ERR")
        self.greeted = True
        if not ok:
            self.state = State.CLOSED
            self._buffer.clear()  # what follows is dropped, however it was split
        found = _TIMESTAMP.search(text)
        return Greeting(ok=ok, text=text, timestamp=found.group(0) if found else None)

    def _reply(self, line: str) -> ClientEvent:
        pending = self._queue[0]
        request = pending.request
        keyword = request.keyword
        ok, text = _status(line)
        if ok is None:
            if keyword == "AUTH" and (line == "+" or line.startswith("+ ")):
                self._awaiting_sasl_response = True  # RFC 5034 §4
                return Continuation(request=request, challenge=line[2:].strip())
            raise RemoteProtocolError(f"reply to {keyword} is neither +OK nor -ERR")
        if ok and pending.multiline:
            self._decoder = MultilineDecoder()
            return MultilineStart(request=request, text=text)
        self._queue.popleft()
        if keyword == "QUIT":
            # RFC 1939 §6: the server closes after answering QUIT, either way.
            self.state = State.CLOSED
            self._buffer.clear()
        elif ok and keyword in _LOGINS:
            self.state = State.TRANSACTION
        elif ok and keyword == "STLS":
            self.paused = True
        code = None
        if not ok:
            match = _CODE.match(text)
            if match:
                code = match.group(1).upper()
                text = text[match.end() :]
        return Reply(request=request, ok=ok, text=text, code=code)

    def _body_event(self, decoder: MultilineDecoder) -> ClientEvent:
        buffer = self._buffer
        while buffer:
            # The decoder consumes from the front of the buffer itself: what follows the
            # reply stays where it is, and the body is copied once.
            unread = len(buffer)
            data = decoder.take(buffer, self.max_chunk)
            if decoder.done:
                self._decoder = None
                end = MultilineEnd(request=self._queue.popleft().request, octets=decoder.octets)
                if data:
                    self._end_pending = end
                    return BodyData(data=data)
                return end
            if data:
                return BodyData(data=data)
            if len(buffer) == unread:
                break  # a possible terminator cut short: wait for the rest
        if self._eof:
            keyword = self._queue[0].request.keyword
            raise RemoteProtocolError(f"connection closed inside the reply to {keyword}")
        return NEED_DATA


def _status(line: str) -> tuple[bool | None, str]:
    """(True, text) for ``+OK``, (False, text) for ``-ERR``, (None, line) otherwise."""
    if line.startswith("+OK "):  # the usual reply, told at once
        return True, line[4:]
    for status, ok in (("+OK", True), ("-ERR", False)):
        # RFC 1939 §3 wants upper case; some servers do not, and it costs nothing to accept.
        if line[: len(status)].upper() == status:
            rest = line[len(status) :]
            if not rest:
                return ok, ""
            if rest[0] == " ":
                return ok, rest[1:]
    return None, line
