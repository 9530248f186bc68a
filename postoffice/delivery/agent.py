"""``postoffice deliver USER...``: the local delivery agent an MTA pipes a message into.

For Postfix ``mailbox_command`` or Exim's ``pipe`` transport. Exit codes follow sysexits,
which MTAs read as the delivery status: 0 delivered; 67 (EX_NOUSER) unknown user, a
bounce; 73 (EX_CANTCREAT) over quota, a bounce; 75 (EX_TEMPFAIL) disk full, I/O error
or user database trouble: the MTA keeps the message and tries again; 78 (EX_CONFIG) a
configuration error (handled by the command line).

Every user is looked up before anything is written, so an unknown name delivers nothing.
With several users the message is delivered to each in turn; if one fails temporarily,
the others are still delivered and the exit status is 75 (even if another user is over
quota), so a retry may give those a second copy (the MTA retries the whole pipe) but
never loses one. The message is stored
as it came, and durably before the exit status is 0 (``maildir.py``).
"""

from __future__ import annotations

import logging
from typing import BinaryIO, TextIO

from postoffice.auth.base import UserRecord
from postoffice.auth.passwd_file import PasswdFile
from postoffice.config import Config
from postoffice.delivery.local import (
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    NO_SUCH_USER,
    USERDB_TROUBLE,
    LocalDelivery,
    Outcome,
)
from postoffice.errors import AuthError

__all__ = ["deliver_from_stream"]

log = logging.getLogger(__name__)


def deliver_from_stream(config: Config, users: list[str], source: BinaryIO, err: TextIO) -> int:
    """Deliver the message in ``source`` to ``users``; the sysexits status to exit with."""
    database = PasswdFile(config.auth.passwd_file, lowercase_names=config.auth.lowercase_names)
    delivery = LocalDelivery(config, database)
    records: list[UserRecord] = []
    for name in users:
        try:
            record = delivery.resolve(name)
        except AuthError as error:
            log.error("user database unavailable: %s", error)
            _report(err, name, USERDB_TROUBLE)
            return USERDB_TROUBLE.exit_code
        if record is None:
            _report(err, name, NO_SUCH_USER)
            return NO_SUCH_USER.exit_code
        records.append(record)
    message = source.read()
    status = EX_OK
    done: set[str] = set()
    for record in records:
        if record.name in done:
            continue
        done.add(record.name)
        outcome = delivery.deliver(record, message)
        if not outcome.ok:
            _report(err, record.name, outcome)
            # A temporary failure outranks a permanent one: a bounce would lose the mail
            # of the user whose delivery may still succeed.
            if status == EX_OK or outcome.exit_code == EX_TEMPFAIL:
                status = outcome.exit_code
    return status


def _report(err: TextIO, name: str, outcome: Outcome) -> None:
    text = "no such user" if outcome.exit_code == EX_NOUSER else outcome.text
    err.write(f"postoffice deliver: {name!r}: {text} ({outcome.status})\n")
