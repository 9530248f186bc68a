"""Whole sessions against the server protocol machine: a short Hypothesis run per test run.

``make fuzz`` runs the same property for a long time: coverage-guided with atheris when
it is installed (``tests/fuzz/atheris_main.py``), else as many Hypothesis examples as
``POSTOFFICE_FUZZ_EXAMPLES`` asks for.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, event, given, settings

from postoffice.proto.server import ServerSettings
from tests.fuzz.sessions import InvariantError, Session, check_session, sessions
from tests.proto.driver import Message

EXAMPLES = int(os.environ.get("POSTOFFICE_FUZZ_EXAMPLES", "100"))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(sessions())
def test_whole_sessions_keep_the_invariants(session: Session) -> None:
    for label in check_session(session):
        event(label)  # pytest --hypothesis-show-statistics shows what the sessions reached


MESSAGES = (Message(uid="u1", data=b"Subject: m1\n\n.dot\n"), Message(uid="u2", data=b"x"))


def test_a_pipelined_session_with_dele_and_quit_passes() -> None:
    check_session(
        Session(
            settings=ServerSettings(),
            messages=MESSAGES,
            stream=b"USER alice\r\nPASS secret\r\nLIST\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n",
            cuts=(3, 20, 21, 40),
            seed=1,
        )
    )


def test_commands_after_stls_in_the_same_chunk_are_compared_without_them() -> None:
    """The pipelined run drops ``CAPA`` (sent with STLS); the lockstep run never sent it."""
    check_session(
        Session(
            settings=ServerSettings(stls=True),
            messages=MESSAGES,
            stream=b"STLS\r\nCAPA\r\nUSER alice\r\nPASS secret\r\nSTAT\r\nQUIT\r\n",
            cuts=(12, 19),
            seed=7,
        )
    )


def test_the_checker_catches_a_reply_out_of_place() -> None:
    """A machine that answered NOOP twice would break the reply shape."""
    from postoffice.proto.server import ServerConnection

    original = ServerConnection._dispatch

    def doubled(self: ServerConnection[Message], command: object) -> object:
        result = original(self, command)  # type: ignore[arg-type]
        if getattr(command, "keyword", "") == "NOOP":
            self._reply(b"+OK\r\n")
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ServerConnection, "_dispatch", doubled)
        with pytest.raises(InvariantError, match="extra line"):
            check_session(
                Session(
                    settings=ServerSettings(),
                    messages=MESSAGES,
                    stream=b"USER alice\r\nPASS secret\r\nNOOP\r\nQUIT\r\n",
                    cuts=(),
                    seed=3,
                )
            )
