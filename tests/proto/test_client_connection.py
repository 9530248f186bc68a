"""The client machine: exact bytes in, events out; and a client talking to the server machine."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.errors import LocalProtocolError, RemoteProtocolError
from postoffice.proto.client import ClientConnection
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
from postoffice.proto.framing import encode_message
from postoffice.proto.listings import (
    parse_capabilities,
    parse_scan_listing,
    parse_uidl_listing,
)
from postoffice.proto.states import State
from postoffice.secret import Secret

from .driver import Driver, Message


def events(client: ClientConnection, data: bytes = b"") -> list[ClientEvent]:
    """Feed ``data`` and collect events until NEED_DATA, PAUSED or CLOSED."""
    if data:
        client.receive_data(data)
    out: list[ClientEvent] = []
    while True:
        event = client.next_event()
        out.append(event)
        if event in (NEED_DATA, PAUSED, CLOSED) or isinstance(event, Continuation):
            return out


def greeted(greeting: bytes = b"+OK ready\r\n") -> ClientConnection:
    client = ClientConnection()
    events(client, greeting)
    return client


def logged_in() -> ClientConnection:
    client = greeted()
    client.send(Request(keyword="USER", arguments=("alice",)))
    client.send(Request(keyword="PASS", arguments=(Secret("secret"),)))
    events(client, b"+OK\r\n+OK logged in\r\n")
    assert client.state is State.TRANSACTION
    return client


def body_of(evs: list[ClientEvent]) -> bytes:
    return b"".join(event.data for event in evs if isinstance(event, BodyData))


def test_greeting_carries_the_apop_timestamp() -> None:
    client = ClientConnection()
    (greeting, need) = events(client, b"+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>\r\n")
    assert greeting == Greeting(
        ok=True,
        text="POP3 ready <1896.697170952@dbc.mtview.ca.us>",
        timestamp="<1896.697170952@dbc.mtview.ca.us>",
    )
    assert need is NEED_DATA


def test_negative_greeting_closes_the_session() -> None:
    client = ClientConnection()
    (greeting, _) = events(client, b"-ERR busy\r\n")
    assert isinstance(greeting, Greeting) and not greeting.ok
    with pytest.raises(LocalProtocolError, match="closed"):
        client.send(Request(keyword="QUIT"))


def test_commands_wait_for_the_greeting() -> None:
    with pytest.raises(LocalProtocolError, match="greeting"):
        ClientConnection().send(Request(keyword="CAPA"))


def test_send_returns_the_command_line() -> None:
    client = greeted()
    assert client.send(Request(keyword="user", arguments=("alice",))) == b"USER alice\r\n"
    assert client.send(Request(keyword="PASS", arguments=(Secret("a b"),))) == b"PASS a b\r\n"


def test_arguments_cannot_inject_a_second_command() -> None:
    client = greeted()
    with pytest.raises(LocalProtocolError, match="CR, LF"):
        client.send(Request(keyword="USER", arguments=("alice\r\nDELE 1",)))


def test_error_reply_with_response_code() -> None:
    client = greeted()
    request = Request(keyword="USER", arguments=("alice",))
    client.send(request)
    client.send(Request(keyword="PASS", arguments=(Secret("hunter2"),)))
    evs = events(client, b"+OK\r\n-ERR [IN-USE] locked\r\n")
    assert evs[1] == Reply(
        request=Request(keyword="PASS", arguments=(Secret("hunter2"),)),
        ok=False,
        text="locked",
        code="IN-USE",
    )
    assert client.state is State.AUTHORIZATION
    assert "hunter2" not in repr(evs[1])


def test_nothing_is_pipelined_after_pass() -> None:
    client = greeted()
    client.send(Request(keyword="USER", arguments=("alice",)))
    client.send(Request(keyword="PASS", arguments=(Secret("x"),)))
    with pytest.raises(LocalProtocolError, match="after PASS"):
        client.send(Request(keyword="CAPA"))


def test_transaction_commands_need_a_login() -> None:
    with pytest.raises(LocalProtocolError, match="allowed in TRANSACTION, not in AUTHORIZATION"):
        greeted().send(Request(keyword="RETR", arguments=("1",)))


def test_retr_body_is_unstuffed_and_counted() -> None:
    client = logged_in()
    client.send(Request(keyword="RETR", arguments=("1",)))
    wire = b"+OK 24 octets\r\n" + encode_message(b"A: b\r\n\r\n.dot\r\nend\r\n")
    evs = events(client, wire)
    assert isinstance(evs[0], MultilineStart)
    assert evs[0].text == "24 octets"
    assert body_of(evs) == b"A: b\r\n\r\n.dot\r\nend\r\n"
    end = evs[-2]
    assert isinstance(end, MultilineEnd) and end.octets == 19
    assert evs[-1] is NEED_DATA


def test_error_to_a_multiline_command_is_a_single_line() -> None:
    client = logged_in()
    client.send(Request(keyword="RETR", arguments=("9",)))
    client.send(Request(keyword="NOOP"))
    evs = events(client, b"-ERR no such message\r\n+OK\r\n")
    assert [type(event) for event in evs] == [Reply, Reply, type(NEED_DATA)]


def test_list_with_argument_is_single_line() -> None:
    client = logged_in()
    client.send(Request(keyword="LIST", arguments=("1",)))
    client.send(Request(keyword="LIST"))
    evs = events(client, b"+OK 1 120\r\n+OK\r\n1 120\r\n2 7\r\n.\r\n")
    assert isinstance(evs[0], Reply) and evs[0].text == "1 120"
    assert isinstance(evs[1], MultilineStart)
    assert parse_scan_listing(body_of(evs)) == {1: 120, 2: 7}


def test_pipelined_replies_in_one_segment_come_out_in_order() -> None:
    client = logged_in()
    for keyword in ("UIDL", "LIST", "CAPA"):
        client.send(Request(keyword=keyword))
    wire = (
        b"+OK\r\n1 a\r\n2 b\r\n.\r\n"
        b"+OK\r\n1 10\r\n2 20\r\n.\r\n"
        b"+OK\r\nUIDL\r\nPIPELINING\r\nSASL PLAIN login\r\n.\r\n"
    )
    evs = events(client, wire)
    ends = [event for event in evs if isinstance(event, MultilineEnd)]
    assert [end.request.keyword for end in ends] == ["UIDL", "LIST", "CAPA"]
    assert client.outstanding == 0


def test_listing_parsers() -> None:
    assert parse_uidl_listing(b"1 abc\r\n2 def\r\n") == {1: "abc", 2: "def"}
    with pytest.raises(RemoteProtocolError, match="twice"):
        parse_uidl_listing(b"1 abc\r\n2 abc\r\n")
    capabilities = parse_capabilities(b"UIDL\r\nSASL PLAIN login\r\nexpire 0\r\n")
    assert "uidl" in capabilities
    assert capabilities.sasl == ("PLAIN", "LOGIN")
    assert capabilities.arguments("EXPIRE") == ("0",)


def test_sasl_exchange_with_continuations() -> None:
    client = greeted()
    client.send(Request(keyword="AUTH", arguments=("LOGIN",)))
    (challenge, *_) = events(client, b"+ VXNlcm5hbWU6\r\n")
    assert isinstance(challenge, Continuation) and challenge.challenge == "VXNlcm5hbWU6"
    with pytest.raises(LocalProtocolError, match="continuation"):
        client.next_event()
    assert client.send(SaslResponse(data=Secret("YWxpY2U="))) == b"YWxpY2U=\r\n"
    (empty, *_) = events(client, b"+\r\n")
    assert isinstance(empty, Continuation) and empty.challenge == ""
    client.send(SaslResponse(data=Secret("c2VjcmV0")))
    (done, _) = events(client, b"+OK logged in\r\n")
    assert isinstance(done, Reply) and done.ok
    assert client.state is State.TRANSACTION


def test_sasl_response_without_continuation_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        greeted().send(SaslResponse(data=Secret("x")))


def test_stls_pauses_and_hands_back_injected_bytes() -> None:
    client = greeted()
    client.send(Request(keyword="STLS"))
    evs = events(client, b"+OK begin TLS\r\n+OK injected\r\n")
    assert isinstance(evs[0], Reply) and evs[0].ok
    assert evs[1] is PAUSED
    with pytest.raises(LocalProtocolError, match="TLS"):
        client.send(Request(keyword="CAPA"))
    assert client.take_unread() == b"+OK injected\r\n"
    client.tls_started()
    client.send(Request(keyword="CAPA"))
    evs = events(client, b"+OK\r\nSTLS\r\n.\r\n")
    assert isinstance(evs[-2], MultilineEnd)


def test_stls_must_not_follow_unanswered_commands() -> None:
    client = greeted()
    client.send(Request(keyword="CAPA"))
    with pytest.raises(LocalProtocolError, match="unanswered"):
        client.send(Request(keyword="STLS"))


def test_quit_closes_and_eof_after_it_is_clean() -> None:
    client = logged_in()
    client.send(Request(keyword="QUIT"))
    evs = events(client, b"+OK bye\r\n")
    assert isinstance(evs[0], Reply) and client.state is State.CLOSED
    client.receive_data(b"")
    assert client.next_event() is CLOSED


def test_eof_inside_a_body_is_a_remote_error() -> None:
    client = logged_in()
    client.send(Request(keyword="RETR", arguments=("1",)))
    evs = events(client, b"+OK\r\nhalf a mess")
    assert body_of(evs) == b"half a mess"
    client.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="inside the reply to RETR"):
        client.next_event()


def test_eof_before_a_reply_is_a_remote_error() -> None:
    client = logged_in()
    client.send(Request(keyword="NOOP"))
    client.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="before the reply to NOOP"):
        client.next_event()


def test_unsolicited_reply_is_a_remote_error() -> None:
    with pytest.raises(RemoteProtocolError, match="no command"):
        events(greeted(), b"+OK surprise\r\n")


def test_overlong_status_line_is_a_remote_error() -> None:
    client = ClientConnection(max_line_octets=100)
    with pytest.raises(RemoteProtocolError, match="longer than 100"):
        events(client, b"+OK " + b"x" * 200)


def test_long_body_lines_are_fine_and_chunks_are_bounded() -> None:
    client = ClientConnection(max_line_octets=100, max_chunk=1000)
    events(client, b"+OK\r\n")
    client.send(Request(keyword="USER", arguments=("a",)))
    client.send(Request(keyword="PASS", arguments=(Secret("b"),)))
    events(client, b"+OK\r\n+OK\r\n")
    client.send(Request(keyword="RETR", arguments=("1",)))
    data = b"x" * 10_000 + b"\r\n"
    evs = events(client, b"+OK\r\n" + data + b".\r\n")
    chunks = [event.data for event in evs if isinstance(event, BodyData)]
    assert b"".join(chunks) == data
    assert max(len(chunk) for chunk in chunks) <= 1000


# -- a client machine talking to the server machine ------------------------------------


def test_client_and_server_machines_talk() -> None:
    messages = [
        Message("uid-1", b"Subject: one\n\n.leading dot\n"),
        Message("uid-2", b"Subject: two\r\n\r\nbody"),
    ]
    server = Driver(messages=messages)
    client = ClientConnection()
    received: list[ClientEvent] = []

    def exchange(*requests: Request) -> list[ClientEvent]:
        wire = b"".join(client.send(request) for request in requests)
        return events(client, server.feed(wire))

    received += events(client, server.feed(b""))
    assert isinstance(received[0], Greeting)
    capa = exchange(Request(keyword="CAPA"))
    assert "PIPELINING" in parse_capabilities(body_of(capa))
    exchange(Request(keyword="USER", arguments=("alice",)))
    exchange(Request(keyword="PASS", arguments=(Secret("secret"),)))
    assert client.state is State.TRANSACTION
    uidl = exchange(Request(keyword="UIDL"))
    assert parse_uidl_listing(body_of(uidl)) == {1: "uid-1", 2: "uid-2"}
    listing = exchange(Request(keyword="LIST"))
    sizes = parse_scan_listing(body_of(listing))
    pipelined = exchange(
        Request(keyword="RETR", arguments=("1",)),
        Request(keyword="RETR", arguments=("2",)),
        Request(keyword="DELE", arguments=("1",)),
    )
    ends = [event for event in pipelined if isinstance(event, MultilineEnd)]
    assert [end.octets for end in ends] == [sizes[1], sizes[2]]
    first_body = pipelined[1]
    assert isinstance(first_body, BodyData)
    assert body_of(pipelined).startswith(b"Subject: one\r\n\r\n.leading dot\r\n")
    (quit_reply, _) = exchange(Request(keyword="QUIT"))
    assert isinstance(quit_reply, Reply) and quit_reply.ok
    assert server.committed == ["uid-1"]


# -- properties --------------------------------------------------------------------------


def _run(chunks: list[bytes]) -> list[object]:
    """Events (with body data merged) or the error, for a fixed request script."""
    client = ClientConnection(max_line_octets=200)
    out: list[object] = []
    body = bytearray()
    script = [
        Request(keyword="USER", arguments=("a",)),
        Request(keyword="PASS", arguments=(Secret("b"),)),
    ]
    transaction = [
        Request(keyword="UIDL"),
        Request(keyword="RETR", arguments=("1",)),
        Request(keyword="NOOP"),
        Request(keyword="TOP", arguments=("1", "0")),
        Request(keyword="QUIT"),
    ]
    try:
        for chunk in [*chunks, b""]:  # b"": the server closes at the end
            client.receive_data(chunk)
            while True:
                event = client.next_event()
                if event is NEED_DATA:
                    break
                if event is CLOSED:
                    out.append(event)
                    break
                if isinstance(event, BodyData):
                    body += event.data
                    continue
                if body:
                    out.append(bytes(body))
                    body.clear()
                out.append(event)
                if isinstance(event, Greeting) and event.ok:
                    for request in script:
                        client.send(request)
                if isinstance(event, Reply) and event.request.keyword == "PASS" and event.ok:
                    for request in transaction:
                        client.send(request)
    except RemoteProtocolError as error:
        out.append(("error", str(error)))
    if body:
        out.append(bytes(body))
    return out


wire_parts = st.sampled_from(
    [
        b"+OK hi <1.2@x>\r\n",
        b"+OK\r\n",
        b"-ERR [SYS/TEMP] no\r\n",
        b"1 uid\r\n",
        b"..stuffed\r\n",
        b".\r\n",
        b"\r\n",
        b".",
        b"\r",
        b"\n",
        b"x" * 250,
    ]
)
wires = st.lists(wire_parts | st.binary(max_size=20), max_size=25).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(wires)
def test_byte_by_byte_equals_whole(wire: bytes) -> None:
    whole = _run([wire])
    single = _run([wire[i : i + 1] for i in range(len(wire))])
    assert single == whole


@settings(max_examples=200, deadline=None)
@given(wires, st.integers(min_value=1, max_value=7))
def test_any_split_equals_whole(wire: bytes, step: int) -> None:
    assert _run([wire[i : i + step] for i in range(0, len(wire), step)]) == _run([wire])
