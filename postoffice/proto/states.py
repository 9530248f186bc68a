"""The POP3 session states and which command is allowed in which (RFC 1939 §3-§6, RFC 2449).

Every rule that moves a server session between states is listed here; the connection
machine consults these tables and treats anything missing as "not allowed in this state".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


class Pending(enum.Enum):
    """What the connection waits for from its driver before it reads the next command."""

    NOTHING = "NOTHING"
    LOGIN = "LOGIN"  # PASS, APOP or AUTH: is the login right, can the maildrop be locked?
    TLS = "TLS"  # STLS: the driver runs the TLS handshake
    MESSAGE = "MESSAGE"  # RETR or TOP: the driver streams the message
    UPDATE = "UPDATE"  # QUIT in TRANSACTION: the driver commits the deletions


# Tuples, not sets: ``state in states`` is then an identity check, where a set would call
# Enum's hash (Python code) on every command.
_AUTHORIZATION = (State.AUTHORIZATION,)
_TRANSACTION = (State.TRANSACTION,)
_BOTH = (State.AUTHORIZATION, State.TRANSACTION)

COMMAND_STATES: Mapping[str, tuple[State, ...]] = {
    # RFC 1939 §7 (optional) and §4
    "USER": _AUTHORIZATION,
    "PASS": _AUTHORIZATION,
    "APOP": _AUTHORIZATION,
    # RFC 5034, RFC 2595
    "AUTH": _AUTHORIZATION,
    "STLS": _AUTHORIZATION,
    # RFC 1939 §5, §7
    "STAT": _TRANSACTION,
    "LIST": _TRANSACTION,
    "RETR": _TRANSACTION,
    "DELE": _TRANSACTION,
    "NOOP": _TRANSACTION,
    "RSET": _TRANSACTION,
    "TOP": _TRANSACTION,
    "UIDL": _TRANSACTION,
    # RFC 1939 §4, §6; RFC 2449 §5
    "QUIT": _BOTH,
    "CAPA": _BOTH,
}
