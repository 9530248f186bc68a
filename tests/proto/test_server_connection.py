"""The server machine, command by command: exact bytes for each state and input."""

from __future__ import annotations

import pytest

from postoffice.errors import LocalProtocolError
from postoffice.proto.events import NEED_DATA, MessageRequest, PasswordLogin
from postoffice.proto.server import ServerConnection, ServerSettings
from postoffice.proto.states import State

from .driver import Driver, Message, login

GREETING = b"+OK postoffice ready\r\n"


def three_messages() -> list[Message]:
    return [
        Message("uid-one", b"Subject: one\n\nbody one\n"),
        Message("uid-two", b"Subject: two\r\n\r\n.dotted\r\nline\r\n"),
        Message("uid-three", b"Subject: three\n\nno final newline"),
    ]


def session(*lines: bytes, messages: list[Message] | None = None) -> list[bytes]:
    """Log in, send each line separately, return the reply to each."""
    driver = Driver(messages=three_messages() if messages is None else messages)
    driver.feed(b"")
    login(driver)
    return [driver.feed(line + b"\r\n") for line in lines]


def test_greeting_is_sent_first() -> None:
    assert Driver().feed(b"") == GREETING


def test_login_with_user_and_pass() -> None:
    driver = Driver(messages=three_messages())
    driver.feed(b"")
    assert driver.feed(b"USER alice\r\n") == b"+OK send PASS\r\n"
    assert driver.feed(b"PASS secret\r\n") == b"+OK maildrop has 3 messages (93 octets)\r\n"
    assert driver.connection.state is State.TRANSACTION


def test_user_answers_ok_for_unknown_names() -> None:
    driver = Driver()
    driver.feed(b"")
    assert driver.feed(b"USER nobody\r\n") == b"+OK send PASS\r\n"
    assert driver.feed(b"PASS x\r\n") == b"-ERR [AUTH] authentication failed\r\n"


def test_wrong_password_and_unknown_user_get_the_same_reply() -> None:
    replies = []
    for user in (b"alice", b"mallory"):
        driver = Driver()
        driver.feed(b"")
        replies.append(driver.feed(b"USER " + user + b"\r\nPASS wrong\r\n"))
    assert replies[0] == replies[1]


def test_password_may_contain_spaces() -> None:
    driver = Driver(passwords={"bob": "correct horse  battery "})
    driver.feed(b"")
    reply = driver.feed(b"USER bob\r\nPASS correct horse  battery \r\n")
    assert reply.endswith(b"+OK maildrop has 0 messages (0 octets)\r\n")


def test_pass_without_user_is_refused() -> None:
    driver = Driver()
    driver.feed(b"")
    assert driver.feed(b"PASS secret\r\n") == b"-ERR send USER first\r\n"


def test_in_use_reply() -> None:
    driver = Driver(locked=True)
    driver.feed(b"")
    reply = login(driver)
    assert reply.endswith(b"-ERR [IN-USE] maildrop is locked by another session\r\n")
    assert driver.connection.state is State.AUTHORIZATION


def test_too_many_login_failures_close_the_connection() -> None:
    driver = Driver()
    driver.feed(b"")
    driver.feed(b"USER a\r\nPASS b\r\n" * 3)
    assert driver.closed == "too many failed logins"


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"STAT", b"+OK 3 93\r\n"),
        (b"LIST", b"+OK 3 messages (93 octets)\r\n1 26\r\n2 31\r\n3 36\r\n.\r\n"),
        (b"LIST 2", b"+OK 2 31\r\n"),
        (
            b"UIDL",
            b"+OK unique-id listing follows\r\n1 uid-one\r\n2 uid-two\r\n3 uid-three\r\n.\r\n",
        ),
        (b"UIDL 3", b"+OK 3 uid-three\r\n"),
        (b"NOOP", b"+OK\r\n"),
        (b"RETR 1", b"+OK 26 octets\r\nSubject: one\r\n\r\nbody one\r\n.\r\n"),
        (b"RETR 2", b"+OK 31 octets\r\nSubject: two\r\n\r\n..dotted\r\nline\r\n.\r\n"),
        (b"RETR 3", b"+OK 36 octets\r\nSubject: three\r\n\r\nno final newline\r\n.\r\n"),
        (b"TOP 2 0", b"+OK top of message follows\r\nSubject: two\r\n\r\n.\r\n"),
        (b"TOP 2 1", b"+OK top of message follows\r\nSubject: two\r\n\r\n..dotted\r\n.\r\n"),
        (b"TOP 1 99", b"+OK top of message follows\r\nSubject: one\r\n\r\nbody one\r\n.\r\n"),
        (b"DELE 1", b"+OK message 1 deleted\r\n"),
        (b"RSET", b"+OK maildrop has 3 messages (93 octets)\r\n"),
        (b"stat", b"+OK 3 93\r\n"),
        (b"LiSt 1", b"+OK 1 26\r\n"),
    ],
)
def test_transaction_commands(line: bytes, reply: bytes) -> None:
    assert session(line) == [reply]


@pytest.mark.parametrize(
    "line",
    [
        b"LIST 0",
        b"LIST 4",
        b"RETR 0",
        b"DELE 4",
        b"UIDL 4",
    ],
)
def test_no_such_message(line: bytes) -> None:
    assert session(line) == [b"-ERR no such message\r\n"]


@pytest.mark.parametrize(
    "line",
    [
        b"LIST +1",
        b"LIST -1",
        b"LIST 1_0",
        b"LIST  1",
        b"LIST 1 ",
        b"LIST 1 2",
        b"LIST \xd9\xa1",  # ARABIC-INDIC DIGIT ONE
        b"LIST 1.0",
        b"LIST 0x1",
        b"LIST 99999999999",
        b"RETR",
        b"RETR 1 2",
        b"TOP 1",
        b"TOP 1 -1",
        b"TOP 1 x",
        b"STAT 1",
        b"NOOP x",
        b"QUIT now",
        b"XYZZY",
        b"LISTX",
        b"\x00\x01",
        b"",
        b"USER alice",
        b"PASS secret",
        b"APOP alice 0123456789abcdef0123456789abcdef",
    ],
)
def test_bad_syntax_or_wrong_state_is_an_error(line: bytes) -> None:
    (reply,) = session(line)
    assert reply.startswith(b"-ERR ")
    assert reply.endswith(b"\r\n") and reply.count(b"\r\n") == 1
    assert all(32 <= octet < 127 for octet in reply[:-2])


@pytest.mark.parametrize(
    "line", [b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"NOOP", b"RSET", b"UIDL"]
)
def test_transaction_commands_are_refused_before_login(line: bytes) -> None:
    driver = Driver(messages=three_messages())
    driver.feed(b"")
    assert driver.feed(line + b"\r\n") == (
        b"-ERR " + line.split()[0] + b" is not allowed in the AUTHORIZATION state\r\n"
    )


def test_deleted_messages_disappear_from_listings_and_cannot_be_used() -> None:
    replies = session(b"DELE 2", b"DELE 2", b"RETR 2", b"LIST 2", b"STAT", b"LIST", b"UIDL")
    assert replies == [
        b"+OK message 2 deleted\r\n",
        b"-ERR message 2 already deleted\r\n",
        b"-ERR message 2 already deleted\r\n",
        b"-ERR message 2 already deleted\r\n",
        b"+OK 2 62\r\n",
        b"+OK 2 messages (62 octets)\r\n1 26\r\n3 36\r\n.\r\n",
        b"+OK unique-id listing follows\r\n1 uid-one\r\n3 uid-three\r\n.\r\n",
    ]


def test_rset_unmarks_deleted_messages() -> None:
    replies = session(b"DELE 1", b"RSET", b"LIST 1")
    assert replies[2] == b"+OK 1 26\r\n"


def test_quit_commits_only_marked_messages() -> None:
    driver = Driver(messages=three_messages())
    driver.feed(b"")
    login(driver)
    driver.feed(b"DELE 1\r\nDELE 3\r\nDELE 3\r\nRSET\r\nDELE 3\r\n")
    assert driver.feed(b"QUIT\r\n") == b"+OK postoffice signing off (2 messages left)\r\n"
    assert driver.committed == ["uid-three"]
    assert driver.closed == "quit"


def test_quit_reply_when_the_maildrop_is_emptied() -> None:
    driver = Driver(messages=three_messages()[:1])
    driver.feed(b"")
    login(driver)
    reply = driver.feed(b"DELE 1\r\nQUIT\r\n")
    assert reply.endswith(b"+OK postoffice signing off (maildrop empty)\r\n")


def test_quit_in_authorization_deletes_nothing() -> None:
    driver = Driver()
    driver.feed(b"")
    assert driver.feed(b"QUIT\r\n") == b"+OK postoffice signing off\r\n"
    assert driver.committed is None
    assert driver.closed == "quit"


def test_input_after_quit_is_ignored() -> None:
    driver = Driver()
    driver.feed(b"")
    assert driver.feed(b"QUIT\r\nNOOP\r\nSTAT\r\n") == b"+OK postoffice signing off\r\n"


def test_capa_in_both_states_is_spelled_exactly() -> None:
    expected = (
        b"+OK capability list follows\r\nTOP\r\nUSER\r\nUIDL\r\nRESP-CODES\r\n"
        b"AUTH-RESP-CODE\r\nPIPELINING\r\nEXPIRE NEVER\r\n.\r\n"
    )
    driver = Driver()
    driver.feed(b"")
    assert driver.feed(b"CAPA\r\n") == expected
    login(driver)
    assert driver.feed(b"CAPA\r\n") == expected


def test_capa_shows_configured_login_delay_and_implementation() -> None:
    settings = ServerSettings(login_delay=300, implementation="postoffice\x07 1.0", expire="30")
    driver = Driver(settings=settings)
    driver.feed(b"")
    reply = driver.feed(b"CAPA\r\n")
    assert b"\r\nLOGIN-DELAY 300\r\n" in reply
    assert b"\r\nIMPLEMENTATION postoffice 1.0\r\n" in reply
    assert b"\r\nEXPIRE 30\r\n" in reply


def test_apop_greeting_carries_the_timestamp() -> None:
    settings = ServerSettings(apop_timestamp="<1896.697170952@example.org>")
    driver = Driver(settings=settings)
    assert driver.feed(b"") == b"+OK postoffice ready <1896.697170952@example.org>\r\n"


def test_apop_is_refused_when_not_enabled() -> None:
    driver = Driver()
    driver.feed(b"")
    reply = driver.feed(b"APOP alice c4c9334bac560ecc979e58001b3e22fb\r\n")
    assert reply == b"-ERR APOP is not enabled\r\n"


def test_bare_lf_line_ends_are_accepted() -> None:
    driver = Driver(messages=three_messages())
    driver.feed(b"")
    assert driver.feed(b"USER alice\nPASS secret\nSTAT\n").endswith(b"+OK 3 93\r\n")


def test_255_octet_line_is_accepted_and_256_is_not() -> None:
    driver = Driver()
    driver.feed(b"")
    longest = b"USER " + b"a" * (255 - 7) + b"\r\n"
    assert len(longest) == 255
    assert driver.feed(longest) == b"+OK send PASS\r\n"
    assert driver.feed(b"USER " + b"a" * (256 - 7) + b"\r\n") == b"-ERR line too long\r\n"
    # The session is still usable, and the over-long line did not act.
    assert driver.feed(b"PASS secret\r\n") == b"-ERR [AUTH] authentication failed\r\n"


def test_long_line_split_over_many_segments_is_refused_once() -> None:
    driver = Driver()
    driver.feed(b"")
    replies = b"".join(driver.feed(b"x" * 100) for _ in range(10))
    assert replies == b""
    assert driver.feed(b"\r\nNOOP\r\n").startswith(b"-ERR line too long\r\n")


def test_flood_without_line_end_closes_the_connection() -> None:
    driver = Driver()
    driver.feed(b"")
    out = b""
    for _ in range(40):
        out += driver.feed(b"y" * 4096)
        if driver.closed:
            break
    assert out == b"-ERR line too long, closing connection\r\n"
    assert driver.closed == "line flood"
    assert driver.connection.buffered == 0


def test_too_many_bad_commands_close_the_connection() -> None:
    driver = Driver(settings=ServerSettings(max_bad_commands=3))
    driver.feed(b"")
    reply = driver.feed(b"X\r\nY\r\nZ\r\nNOOP\r\n")
    assert reply.endswith(b"-ERR too many bad commands, closing connection\r\n")
    assert driver.closed == "too many bad commands"


def test_pipelined_commands_are_answered_in_order() -> None:
    driver = Driver(messages=three_messages())
    driver.feed(b"")
    burst = b"USER alice\r\nPASS secret\r\n" + b"NOOP\r\nRETR 1\r\n" * 500 + b"QUIT\r\n"
    reply = driver.feed(burst)
    body = b"+OK 26 octets\r\nSubject: one\r\n\r\nbody one\r\n.\r\n"
    assert reply == (
        b"+OK send PASS\r\n+OK maildrop has 3 messages (93 octets)\r\n"
        + (b"+OK\r\n" + body) * 500
        + b"+OK postoffice signing off (3 messages left)\r\n"
    )


def test_next_event_refuses_while_an_answer_is_pending() -> None:
    connection: ServerConnection[object] = ServerConnection()  # type: ignore[type-var]
    connection.receive_data(b"USER a\r\nPASS b\r\nNOOP\r\n")
    assert isinstance(connection.next_event(), PasswordLogin)
    with pytest.raises(LocalProtocolError):
        connection.next_event()
    connection.login_rejected()
    assert connection.next_event() is NEED_DATA


def test_quick_reply_answers_only_a_lone_noop_when_nothing_else_waits() -> None:
    connection: ServerConnection[Message] = ServerConnection()
    connection.data_to_send()
    assert connection.quick_reply(b"NOOP\r\n") is None  # AUTHORIZATION: NOOP is refused
    connection.receive_data(b"USER alice\r\nPASS secret\r\n")
    assert isinstance(connection.next_event(), PasswordLogin)
    assert connection.quick_reply(b"NOOP\r\n") is None  # waiting for the password check
    connection.login_accepted(three_messages())
    assert connection.next_event() is NEED_DATA
    assert connection.quick_reply(b"NOOP\r\n") is None  # the login reply is not taken yet
    connection.data_to_send()
    for line in (b"NOOP\r\n", b"noop\r\n", b"NOOP\n", memoryview(b"noop\n")):
        assert connection.quick_reply(line) == b"+OK\r\n"
    assert connection.counters.commands == 2 + 4
    # Other spellings, other commands, more than one line: the usual path.
    for other in (b"Noop\r\n", b"NOOP \r\n", b"NOOP", b"STAT\r\n", b"NOOP\r\nNOOP\r\n"):
        assert connection.quick_reply(other) is None
    connection.receive_data(b"NO")  # part of a line is buffered
    assert connection.quick_reply(b"NOOP\r\n") is None
    connection.receive_data(b"OP\r\nRETR 1\r\n")
    assert isinstance(connection.next_event(), MessageRequest)
    assert connection.quick_reply(b"NOOP\r\n") is None  # a message is being sent
    assert connection.counters.commands == 2 + 4 + 2


def test_quick_reply_waits_for_the_end_of_an_over_long_line() -> None:
    connection: ServerConnection[Message] = ServerConnection()
    connection.receive_data(b"USER alice\r\nPASS secret\r\n")
    assert isinstance(connection.next_event(), PasswordLogin)
    connection.login_accepted(three_messages())
    assert connection.next_event() is NEED_DATA
    connection.data_to_send()
    connection.receive_data(b"x" * 1000)  # too long: dropped until its line ends
    assert connection.next_event() is NEED_DATA
    assert connection.quick_reply(b"NOOP\r\n") is None  # it ends the dropped line
    connection.receive_data(b"NOOP\r\n")
    assert connection.next_event() is NEED_DATA
    assert connection.data_to_send() == b"-ERR line too long\r\n"
    assert connection.quick_reply(b"NOOP\r\n") == b"+OK\r\n"


def test_answer_methods_refuse_the_wrong_moment() -> None:
    connection: ServerConnection[Message] = ServerConnection()
    with pytest.raises(LocalProtocolError):
        connection.login_accepted([])
    with pytest.raises(LocalProtocolError):
        connection.message_follows()
    with pytest.raises(LocalProtocolError):
        connection.update_done(removed_all=True, remaining=0)


def test_update_failure_is_reported_with_sys_temp() -> None:
    connection: ServerConnection[Message] = ServerConnection()
    connection.receive_data(b"USER alice\r\nPASS secret\r\n")
    connection.next_event()
    connection.login_accepted(three_messages())
    connection.receive_data(b"DELE 1\r\nQUIT\r\n")
    connection.next_event()
    connection.data_to_send()
    connection.update_done(removed_all=False, remaining=3)
    assert connection.data_to_send() == b"-ERR [SYS/TEMP] some deleted messages not removed\r\n"


def test_every_reply_line_is_at_most_512_octets() -> None:
    settings = ServerSettings(greeting="x" * 1000)
    driver = Driver(settings=settings)
    first = driver.feed(b"")
    assert len(first) == 512 and first.endswith(b"\r\n")


class ColumnSnapshot(list[Message]):
    """A snapshot that offers its sizes and UIDLs as columns, as the server's large and
    packed ones do; it records what was asked for."""

    asked: list[str]

    def sizes(self) -> list[int]:
        self.asked.append("sizes")
        return [message.size for message in self]

    def uids(self) -> list[str]:
        self.asked.append("uids")
        return [message.uid for message in self]


def test_a_snapshot_offering_columns_is_listed_from_them() -> None:
    """STAT, LIST, UIDL and RSET read the columns, and answer as from a plain list."""
    snapshots: list[ColumnSnapshot] = []

    def columns(messages: list[Message]) -> ColumnSnapshot:
        snapshot = ColumnSnapshot(messages)
        snapshot.asked = []
        snapshots.append(snapshot)
        return snapshot

    commands = (b"STAT", b"LIST", b"UIDL", b"DELE 2", b"LIST", b"UIDL", b"RSET", b"STAT")
    replies = []
    for make in (list, columns):
        driver = Driver(messages=three_messages(), snapshot=make)
        driver.feed(b"")
        replies.append([login(driver)] + [driver.feed(line + b"\r\n") for line in commands])
    assert replies[0] == replies[1]
    assert snapshots[0].asked == ["sizes", "sizes", "uids", "sizes", "uids", "sizes"]
