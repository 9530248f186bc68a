"""Local delivery: recipient address to user, quota, and the outcome for each recipient.

Shared by the LMTP listener (``lmtp.py``) and ``postoffice deliver``; the outcome of each
recipient is an ``Outcome`` carrying its SMTP reply code, RFC 3463 enhanced status code
and the sysexits code ``postoffice deliver`` exits with.

*Recipients.* ``alice@example.org`` is looked up as ``alice@example.org``, then
``alice``, then (for ``alice+tag``) ``alice``: the first name the user database knows
wins. A name outside the user-name allow-list is never looked up.

*Quota* (``mail.quota``, or per user a passwd-file extra field
``userdb_quota_rule=*:storage=<size>`` as Dovecot spells it, 0 meaning none): the octets
in ``new/`` and ``cur/`` (from ``,S=`` tags, else the file size) plus the new message
must not exceed it. Exceeding it is permanent (552 5.2.2); a full disk (ENOSPC) or a
filesystem quota (EDQUOT) is temporary (452), any other storage error too (451), so the
MTA keeps the mail and retries.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from postoffice.auth.base import UserDatabase, UserRecord
from postoffice.auth.usernames import validate_username
from postoffice.config import Config
from postoffice.delivery.maildir import deliver_to_maildir
from postoffice.errors import (
    AuthError,
    InvalidUsernameError,
    PostofficeError,
    TemporaryDeliveryError,
)
from postoffice.storage.maildir_names import size_tags
from postoffice.storage.paths import maildir_for

__all__ = [
    "EX_CANTCREAT",
    "EX_NOUSER",
    "EX_OK",
    "EX_TEMPFAIL",
    "LocalDelivery",
    "Outcome",
    "parse_quota_rule",
]

log = logging.getLogger(__name__)

EX_OK = 0
EX_NOUSER = 67
EX_CANTCREAT = 73
EX_TEMPFAIL = 75

_QUOTA_RULE = re.compile(r"(?:userdb_)?quota_rule=\*:storage=(\S+)")
_DOVECOT_SIZE = re.compile(r"([0-9]+)([bkmgt]?)b?", re.IGNORECASE)
_DOVECOT_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one recipient."""

    code: int
    """The SMTP/LMTP reply code."""
    status: str
    """The RFC 3463 enhanced status code."""
    text: str
    exit_code: int
    """The sysexits code for ``postoffice deliver``."""

    def reply(self, address: str) -> str:
        return f"{self.code} {self.status} <{address}> {self.text}"

    @property
    def ok(self) -> bool:
        return self.code < 300


DELIVERED = Outcome(250, "2.0.0", "delivered", EX_OK)
ACCEPTED = Outcome(250, "2.1.5", "OK", EX_OK)
NO_SUCH_USER = Outcome(550, "5.1.1", "no such user", EX_NOUSER)
MAILBOX_FULL = Outcome(552, "5.2.2", "mailbox full", EX_CANTCREAT)
USERDB_TROUBLE = Outcome(451, "4.3.0", "user database unavailable, try again later", EX_TEMPFAIL)
DISK_FULL = Outcome(452, "4.3.1", "insufficient system storage, try again later", EX_TEMPFAIL)
FS_QUOTA = Outcome(452, "4.2.2", "mailbox temporarily full, try again later", EX_TEMPFAIL)
LOCAL_TROUBLE = Outcome(451, "4.3.0", "temporary local problem, try again later", EX_TEMPFAIL)


def parse_quota_rule(extra_fields: str) -> int | None:
    """The storage limit of a ``userdb_quota_rule=*:storage=<size>`` extra field, if any.

    Sizes as Dovecot writes them: a number of bytes, or with ``k``, ``M``, ``G``, ``T``
    (powers of 1024, an optional trailing ``B``). Unreadable values are ignored (logged).
    """
    for field_ in extra_fields.split():
        match = _QUOTA_RULE.fullmatch(field_)
        if match is None:
            continue
        size = _DOVECOT_SIZE.fullmatch(match[1])
        if size is None:
            log.warning("ignoring unreadable quota rule %r", field_)
            return None
        return int(size[1]) * _DOVECOT_UNITS[size[2].lower()]
    return None


def maildir_usage(maildir: Path) -> int:
    """Octets stored in ``new/`` and ``cur/`` (size tags believed, else the file size)."""
    total = 0
    for sub in ("new", "cur"):
        try:
            entries = os.scandir(maildir / sub)
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                tags = size_tags(entry.name.partition(":")[0])
                if tags is not None:
                    total += tags[0]
                    continue
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
    return total


def _storage_outcome(error: BaseException) -> Outcome:
    cause = error.__cause__ if isinstance(error, TemporaryDeliveryError) else error
    number = cause.errno if isinstance(cause, OSError) else None
    if number == errno.ENOSPC:
        return DISK_FULL
    if number == errno.EDQUOT:
        return FS_QUOTA
    return LOCAL_TROUBLE


class LocalDelivery:
    """Finds users and delivers into their maildrops as ``config`` says. Blocking."""

    def __init__(self, config: Config, database: UserDatabase) -> None:
        self.config = config
        self.database = database

    def resolve(self, address: str) -> UserRecord | None:
        """The user an address belongs to, or None. ``AuthError`` if the database fails."""
        candidates = [address]
        localpart, at, _domain = address.rpartition("@")
        if at:
            candidates.append(localpart)
        base, plus, _detail = candidates[-1].partition("+")
        if plus and base:
            candidates.append(base)
        for candidate in candidates:
            try:
                name = validate_username(candidate)
            except InvalidUsernameError:
                continue
            record = self.database.lookup(name)
            if record is not None:
                return record
        return None

    def check(self, address: str) -> tuple[UserRecord | None, Outcome]:
        """RCPT time: is this a user whose maildrop can take mail now?"""
        try:
            record = self.resolve(address)
        except AuthError as error:
            log.error("user database unavailable for <%s>: %s", address, error)
            return None, USERDB_TROUBLE
        if record is None:
            return None, NO_SUCH_USER
        try:
            if self._over_quota(record, 0):
                return record, MAILBOX_FULL
        except (OSError, PostofficeError) as error:
            log.error("cannot check the quota of %s: %s", record.name, error)
            return record, _storage_outcome(error)
        return record, ACCEPTED

    def quota_of(self, record: UserRecord) -> int:
        rule = parse_quota_rule(record.extra_fields)
        return self.config.mail.quota if rule is None else rule

    def maildir_of(self, record: UserRecord) -> Path:
        return maildir_for(self.config.mail.maildir, data_dir=self.config.data_dir, user=record)

    def _over_quota(self, record: UserRecord, size: int) -> bool:
        quota = self.quota_of(record)
        if not quota:
            return False
        used = maildir_usage(self.maildir_of(record))
        return used + size > quota if size else used >= quota

    def deliver(self, record: UserRecord, message: bytes) -> Outcome:
        """Deliver ``message`` durably to ``record``'s maildrop; the outcome to report."""
        try:
            if self._over_quota(record, len(message)):
                log.info(
                    "%s is over quota; message of %d octets refused", record.name, len(message)
                )
                return MAILBOX_FULL
            name = deliver_to_maildir(self.maildir_of(record), message)
        except TemporaryDeliveryError as error:
            log.error("delivery to %s failed: %s", record.name, error)
            return _storage_outcome(error)
        except (OSError, PostofficeError) as error:
            log.error("delivery to %s failed: %s", record.name, error)
            return _storage_outcome(error)
        log.info("delivered %d octets to %s as %s", len(message), record.name, name)
        return DELIVERED
