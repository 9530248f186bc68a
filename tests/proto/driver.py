"""A minimal in-memory driver for ServerConnection, used by the pure protocol tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from postoffice.proto.events import (
    NEED_DATA,
    ApopLogin,
    CloseConnection,
    MessageRequest,
    PasswordLogin,
    UpdateRequest,
)
from postoffice.proto.framing import MessageEncoder, TopFilter
from postoffice.proto.server import LoginFailure, ServerConnection, ServerSettings


@dataclass(frozen=True, slots=True)
class Message:
    uid: str
    data: bytes

    @property
    def size(self) -> int:
        encoder = MessageEncoder()
        encoder.encode(self.data)
        encoder.finish()
        return encoder.octets


@dataclass
class Driver:
    """Answers events from fixed users and messages; records what happened."""

    messages: list[Message] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=lambda: {"alice": "secret"})
    locked: bool = False
    settings: ServerSettings = field(default_factory=ServerSettings)
    committed: list[str] | None = None
    closed: str | None = None
    events: list[object] = field(default_factory=list)
    snapshot: Callable[[list[Message]], Sequence[Message]] = list
    """What a login hands the machine, made from the messages."""
    quick: bool = False
    """Offer each piece fed to ``quick_reply`` first, as the server's sessions do."""

    def __post_init__(self) -> None:
        self.connection: ServerConnection[Message] = ServerConnection(self.settings)

    def feed(self, data: bytes) -> bytes:
        """Feed octets, run every event, return everything the server sent."""
        connection = self.connection
        if self.quick:
            reply = connection.quick_reply(data)
            if reply is not None:
                return reply
        connection.receive_data(data)
        out = [connection.data_to_send()]
        while True:
            event = connection.next_event()
            self.events.append(event)
            if event is NEED_DATA:
                break
            if isinstance(event, CloseConnection):
                self.closed = event.reason
                break
            if isinstance(event, PasswordLogin):
                if self.passwords.get(event.username) != event.password.reveal():
                    connection.login_rejected(LoginFailure.BAD_CREDENTIALS)
                elif self.locked:
                    connection.login_rejected(LoginFailure.IN_USE)
                else:
                    connection.login_accepted(self.snapshot(self.messages))
            elif isinstance(event, ApopLogin):
                connection.login_rejected(LoginFailure.BAD_CREDENTIALS)
            elif isinstance(event, MessageRequest):
                connection.message_follows()
                out.append(connection.data_to_send())
                encoder = MessageEncoder()
                data_in = event.message.data
                if event.body_lines is not None:
                    data_in = TopFilter(event.body_lines).feed(data_in)
                out.append(encoder.encode(data_in) + encoder.finish())
                connection.message_sent()
            elif isinstance(event, UpdateRequest):
                self.committed = [message.uid for message in event.deleted]
                remaining = len(self.messages) - len(event.deleted)
                connection.update_done(removed_all=True, remaining=remaining)
            out.append(connection.data_to_send())
        out.append(connection.data_to_send())
        return b"".join(out)


def login(driver: Driver) -> bytes:
    return driver.feed(b"USER alice\r\nPASS secret\r\n")
