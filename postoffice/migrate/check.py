"""``postoffice migrate check``: would any client see a message under a new UIDL?

For each user, the UIDLs the old server served are worked out from its own records
(Dovecot: ``dovecot-uidlist`` with its saved ``P`` UIDLs and ``pop3_uidl_format``;
Courier: ``courierpop3dsizelist``) and compared, message by message, with the UIDLs
postoffice will serve under the configured ``mail.uidl_format`` (the same listing code a
login uses, including an index postoffice may already have written; nothing is written).

A message the old server has no record of was never listed by it, so no client can have
its UIDL: it is counted, not reported as a change. A UIDL the old server served that
postoffice cannot (longer than 70 characters or outside 0x21-0x7E, RFC 1939 §7; or a
duplicate, which Dovecot allows by default) is reported with the reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from postoffice.auth.base import UserRecord
from postoffice.config import Config
from postoffice.errors import PostofficeError
from postoffice.storage.maildir import MaildirMaildrop
from postoffice.storage.maildir_names import NEW, base_name, valid_uid
from postoffice.storage.paths import maildir_for
from postoffice.storage.uidl import parse_uidl_format
from postoffice.storage.uidl_courier import read_sizelist
from postoffice.storage.uidl_dovecot import DovecotFormat, read_uidlist

__all__ = ["SOURCES", "Change", "UserReport", "check_user", "old_uidls"]

SOURCES = ("dovecot", "courier")


@dataclass(frozen=True, slots=True)
class Change:
    """One message whose UIDL would change."""

    key: str
    old: str
    new: str
    reason: str


@dataclass(slots=True)
class UserReport:
    user: str
    maildir: Path | None = None
    messages: int = 0
    unchanged: int = 0
    unseen: int = 0
    """Messages the old server has no record of (they get new UIDLs either way)."""
    changes: list[Change] = field(default_factory=list)
    problem: str = ""
    """Why this user could not be checked (empty when it was)."""


def old_uidls(source: str, maildir: Path, dovecot_format: DovecotFormat) -> dict[str, str]:
    """What the old server served, by base name (``StorageError`` if unreadable)."""
    if source == "courier":
        sizelist = read_sizelist(maildir)
        return {} if sizelist is None else dict(sizelist.uidls)
    uidlist = read_uidlist(maildir)
    if uidlist is None:
        return {}
    served = {}
    for base, record in uidlist.records.items():
        served[base] = record.pop3_uidl or dovecot_format.expand(
            uid=record.uid,
            uidvalidity=uidlist.uidvalidity,
            filename=base,
            guid=record.guid or base,
        )
    return served


def check_user(
    config: Config, record: UserRecord, source: str, dovecot_format: DovecotFormat
) -> UserReport:
    """Compare what the old server served with what postoffice will serve to ``record``."""
    report = UserReport(user=record.name)
    try:
        maildir = maildir_for(config.mail.maildir, data_dir=config.data_dir, user=record)
    except PostofficeError as error:
        report.problem = str(error)
        return report
    report.maildir = maildir
    if not (maildir / NEW).is_dir():
        return report  # nothing delivered yet: nothing to migrate
    try:
        served = old_uidls(source, maildir, dovecot_format)
        maildrop = MaildirMaildrop(
            maildir, create=False, uidl_format=config.mail.uidl_format, save_index=False
        )
        messages = maildrop.snapshot()
    except (OSError, PostofficeError) as error:
        report.problem = str(error)
        return report
    scheme = parse_uidl_format(config.mail.uidl_format)
    present = {base_name(m.key[4:]) for m in messages}
    repeats = Counter(uid for base, uid in served.items() if base in present)
    report.messages = len(messages)
    for message in messages:
        old = served.get(base_name(message.key[4:]))
        if old is None:
            report.unseen += 1
        elif old == message.uid:
            report.unchanged += 1
        else:
            report.changes.append(
                Change(
                    key=message.key,
                    old=old,
                    new=message.uid,
                    reason=_reason(old, repeats[old], scheme.kind, source),
                )
            )
    return report


def _reason(old: str, repeats: int, kind: str, source: str) -> str:
    if not valid_uid(old):
        return "not a valid UIDL (RFC 1939 section 7), so postoffice serves a digest"
    if repeats > 1:
        return "duplicate UIDL: only the first message keeps it"
    if kind != source:
        return f'mail.uidl_format is "{kind}", not "{source}"'
    return "postoffice listed this message before under another UIDL (see postoffice-index)"
