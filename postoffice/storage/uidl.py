"""Where a Maildir message's UIDL comes from: ``mail.uidl_format``.

``"postoffice"`` (default)
    The natural UIDL: the base name without ``,KEY=value`` tags (``maildir_names``).
``"dovecot"`` or ``"dovecot:<pop3_uidl_format>"``
    What Dovecot served: a saved ``P`` UIDL, else ``pop3_uidl_format`` (default
    ``%08Xu%08Xv``) expanded from ``dovecot-uidlist`` (``uidl_dovecot``). Messages are
    listed in Dovecot's order (its POP3 order, else its UID).
``"courier"``
    What Courier's pop3d served, from ``courierpop3dsizelist`` (``uidl_courier``).
``"x-uidl"``
    The value of an ``X-UIDL:`` header (from qpopper / UW-era mailboxes, Dovecot's
    ``pop3_reuse_xuidl``).

A message the old server never listed (no record, no header) gets its natural UIDL, and a
value that is no valid RFC 1939 UIDL (1-70 characters in 0x21-0x7E) gets a digest: no
client can have stored it. The scheme only decides the UIDL of a message seen for the
first time; after that the index cache keeps it (``maildir_index``), and an index written
under another scheme is not used.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from postoffice.storage.maildir_names import digest_uid, valid_uid
from postoffice.storage.uidl_courier import read_sizelist
from postoffice.storage.uidl_dovecot import (
    DEFAULT_POP3_UIDL_FORMAT,
    DovecotFormat,
    DovecotUidlist,
    read_uidlist,
)

__all__ = [
    "UIDL_FORMATS",
    "LegacyUidls",
    "OrderKey",
    "UidlScheme",
    "parse_uidl_format",
    "read_x_uidl",
]

UIDL_FORMATS = ("postoffice", "dovecot", "courier", "x-uidl")
_HEADER_LIMIT = 1 << 16
_X_UIDL = re.compile(rb"x-uidl[ \t]*:", re.IGNORECASE)

# A sort key: within one scheme all keys compare (the first element separates kinds).
OrderKey = tuple[int | str, ...]


class LegacyUidls(Protocol):
    """What an old server said about the messages of one maildir, read once per listing."""

    def uid(self, base: str, path: Path) -> str | None:
        """The UIDL the old server served for this message, or None if it never listed it."""

    def order(self, base: str, seconds: int, micros: int, key: str) -> OrderKey:
        """The message's place in the listing."""


@dataclass(frozen=True, slots=True)
class UidlScheme:
    """A parsed ``mail.uidl_format``."""

    kind: str = "postoffice"
    dovecot_format: DovecotFormat | None = None

    @property
    def id(self) -> str:
        """The canonical spelling, stored in the index so a change of scheme is noticed."""
        if self.kind == "dovecot" and self.dovecot_format is not None:
            return f"dovecot:{self.dovecot_format.text}"
        return self.kind

    def load(self, maildir: Path) -> LegacyUidls | None:
        """The old server's UIDLs for ``maildir``; None for the natural scheme."""
        if self.kind == "dovecot":
            assert self.dovecot_format is not None
            uidlist = read_uidlist(maildir)
            return None if uidlist is None else _Dovecot(uidlist, self.dovecot_format)
        if self.kind == "courier":
            sizelist = read_sizelist(maildir)
            return None if sizelist is None else _Courier(sizelist.uidls)
        if self.kind == "x-uidl":
            return _XUidl()
        return None


@functools.lru_cache(maxsize=64)  # every login names its scheme; the answer never changes
def parse_uidl_format(text: str) -> UidlScheme:
    """``"postoffice"``, ``"dovecot"``, ``"dovecot:<format>"``, ``"courier"`` or ``"x-uidl"``.

    ``ValueError`` with a message fit for a configuration error.
    """
    kind, colon, rest = text.partition(":")
    if kind == "dovecot":
        return UidlScheme(
            kind=kind,
            dovecot_format=DovecotFormat.compile(rest if colon else DEFAULT_POP3_UIDL_FORMAT),
        )
    if kind in UIDL_FORMATS and not colon:
        return UidlScheme(kind=kind)
    raise ValueError(
        f'expected "postoffice", "dovecot", "dovecot:<pop3_uidl_format>", "courier" or '
        f'"x-uidl", got {text!r}'
    )


def served_uid(uid: str) -> str:
    """``uid`` if it is a valid UIDL, else its digest (no client can have stored it)."""
    return uid if valid_uid(uid) else digest_uid(uid)


class _Dovecot:
    def __init__(self, uidlist: DovecotUidlist, fmt: DovecotFormat) -> None:
        self._uidlist = uidlist
        self._format = fmt

    def uid(self, base: str, path: Path) -> str | None:
        record = self._uidlist.records.get(base)
        if record is None:
            return None
        if record.pop3_uidl is not None:
            return record.pop3_uidl
        return self._format.expand(
            uid=record.uid,
            uidvalidity=self._uidlist.uidvalidity,
            filename=base,
            guid=record.guid or base,
        )

    def order(self, base: str, seconds: int, micros: int, key: str) -> OrderKey:
        record = self._uidlist.records.get(base)
        if record is None:  # after everything Dovecot knew, as Dovecot would append it
            return (2, seconds, micros, base, key)
        if record.pop3_order is not None:
            return (0, record.pop3_order, key)
        return (1, record.uid, key)


class _Courier:
    def __init__(self, uidls: dict[str, str]) -> None:
        self._uidls = uidls

    def uid(self, base: str, path: Path) -> str | None:
        return self._uidls.get(base)

    def order(self, base: str, seconds: int, micros: int, key: str) -> OrderKey:
        # Courier sorts by the time prefix, then by the name (pop3dserver.c, cmpmsgs).
        return (seconds, base, key)


class _XUidl:
    def uid(self, base: str, path: Path) -> str | None:
        return read_x_uidl(path)

    def order(self, base: str, seconds: int, micros: int, key: str) -> OrderKey:
        return (seconds, micros, base, key)


def read_x_uidl(path: Path) -> str | None:
    """The first ``X-UIDL:`` header's value in the message's header, or None.

    Only the header is read (at most 64 KiB); folded lines are unfolded.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER_LIMIT)
    except FileNotFoundError:
        return None
    end = len(head)
    for separator in (b"\n\n", b"\r\n\r\n"):
        found = head.find(separator)
        if 0 <= found < end:
            end = found
    lines = head[:end].replace(b"\r\n", b"\n").split(b"\n")
    for number, line in enumerate(lines):
        match = _X_UIDL.match(line)
        if match is None:
            continue
        value = line[match.end() :]
        for follow in lines[number + 1 :]:
            if follow[:1] not in (b" ", b"\t"):
                break
            value += follow
        text = value.decode("ascii", "replace").strip()
        return text or None
    return None
