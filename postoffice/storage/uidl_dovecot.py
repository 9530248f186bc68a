"""Dovecot's UIDLs for a Maildir: ``dovecot-uidlist`` and ``pop3_uidl_format``.

Dovecot gives every message in a Maildir an IMAP UID, kept in ``dovecot-uidlist`` by base
name (the file name before ``:``), and serves as POP3 UIDL either a *saved* UIDL (the
record's ``P`` field, written by ``pop3_save_uidl`` or the pop3-migration plugin) or
``pop3_uidl_format`` expanded for the message (default ``%08Xu%08Xv``: the UID and the
UIDVALIDITY, each as 8 lower-case hex digits). POP3 lists messages in UID order, or by the
``O`` field (a POP3 order saved by a migration) where there is one.

The file (Dovecot's ``src/lib-storage/index/maildir/maildir-uidlist.c``) is::

    version 1:  "1 <uidvalidity> <next uid>"      records "<uid> <file name>"
    version 2:  like 1, records "<uid> <flags> <file name>"
    version 3:  "3 [<key><value> ...]"             records "<uid> [<key><value> ...] :<file name>"

with header keys ``V`` (UIDVALIDITY), ``N`` (next UID), ``G`` (mailbox GUID) and record
keys ``P`` (saved POP3 UIDL), ``O`` (POP3 order), ``G`` (GUID), ``W``/``S`` (sizes).
Dovecot appends records and rewrites the file through a rename, so a reader sees a whole
file, at worst without a record still being appended (a last line without its newline is
ignored).

``pop3_uidl_format`` variables (Dovecot's ``var_expand``): ``%u`` UID, ``%v`` UIDVALIDITY,
``%f`` the file's base name, ``%g`` the GUID (for Maildir: the base name unless the record
has a ``G``), and the long forms ``%{uid}``, ``%{uidvalidity}``, ``%{filename}``,
``%{guid}``; ``%%`` is a percent sign. Before the variable: ``<offset>.`` and a width (a
leading ``0`` pads with zeros instead of truncating) and the modifiers ``X`` (hexadecimal,
lower-case as Dovecot prints it), ``L`` and ``U`` (case). ``%m`` (header MD5) is refused:
Dovecot itself cannot serve it from a Maildir.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from postoffice.storage.legacy_file import read_state_file

__all__ = [
    "DEFAULT_POP3_UIDL_FORMAT",
    "UIDLIST_NAME",
    "DovecotFormat",
    "DovecotRecord",
    "DovecotUidlist",
    "parse_uidlist",
    "read_uidlist",
]

UIDLIST_NAME = "dovecot-uidlist"
DEFAULT_POP3_UIDL_FORMAT = "%08Xu%08Xv"


@dataclass(frozen=True, slots=True)
class DovecotRecord:
    uid: int
    pop3_uidl: str | None = None
    """The saved UIDL (``P``), served instead of the format when present."""
    pop3_order: int | None = None
    guid: str | None = None


@dataclass(frozen=True, slots=True)
class DovecotUidlist:
    uidvalidity: int
    next_uid: int
    records: dict[str, DovecotRecord] = field(default_factory=dict)
    """By base name (the file name before ``:``)."""


def read_uidlist(maildir: Path) -> DovecotUidlist | None:
    """The maildir's ``dovecot-uidlist``; None if there is none.

    An unreadable or malformed file raises ``StorageError``: serving other UIDLs instead
    would make every client download everything again.
    """
    return read_state_file(maildir / UIDLIST_NAME, parse_uidlist)


def parse_uidlist(data: bytes) -> DovecotUidlist:
    """Parse the file's bytes; ``ValueError`` for a header Dovecot would not accept."""
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if lines and lines[-1]:
        lines.pop()  # a record still being appended
    if not lines or not lines[0]:
        raise ValueError("empty dovecot-uidlist")
    head = lines[0].split(" ")
    version = head[0]
    uidvalidity = next_uid = 0
    if version in ("1", "2"):
        if len(head) < 3 or not (head[1].isdigit() and head[2].isdigit()):
            raise ValueError(f"malformed version {version} header")
        uidvalidity, next_uid = int(head[1]), int(head[2])
    elif version == "3":
        for item in head[1:]:
            key, value = item[:1], item[1:]
            if key == "V" and value.isdigit():
                uidvalidity = int(value)
            elif key == "N" and value.isdigit():
                next_uid = int(value)
    else:
        raise ValueError(f"unknown dovecot-uidlist version {version!r}")
    if uidvalidity == 0:
        raise ValueError("dovecot-uidlist has no UIDVALIDITY")
    records: dict[str, DovecotRecord] = {}
    for line in lines[1:]:
        parsed = _parse_record(line, version)
        if parsed is not None:
            name, record = parsed
            records.setdefault(name.partition(":")[0], record)
    return DovecotUidlist(uidvalidity=uidvalidity, next_uid=next_uid, records=records)


def _parse_record(line: str, version: str) -> tuple[str, DovecotRecord] | None:
    uid_text, _, rest = line.partition(" ")
    if not uid_text.isdigit() or not rest:
        return None
    uid = int(uid_text)
    if version == "1":
        return rest, DovecotRecord(uid=uid)
    if version == "2":
        _flags, _, name = rest.partition(" ")
        return (name, DovecotRecord(uid=uid)) if name else None
    fields: dict[str, str] = {}
    while rest and not rest.startswith(":"):
        item, _, rest = rest.partition(" ")
        if item:
            fields.setdefault(item[0], item[1:])
    name = rest[1:]
    if not name:
        return None
    order = fields.get("O", "")
    return name, DovecotRecord(
        uid=uid,
        pop3_uidl=fields.get("P") or None,
        pop3_order=int(order) if order.isdigit() and int(order) > 0 else None,
        guid=fields.get("G") or None,
    )


# -- pop3_uidl_format ----------------------------------------------------------------------

_LONG_NAMES = {"uid": "u", "uidvalidity": "v", "filename": "f", "guid": "g"}
_SPEC = re.compile(r"%(?:(-?\d+)\.)?(0?)(\d*)([XLU]*)(?:\{([a-z]+)\}|(.))", re.DOTALL)

# Values: (uid, uidvalidity, file base name, guid)
_Values = tuple[int, int, str, str]


@dataclass(frozen=True, slots=True)
class DovecotFormat:
    """A compiled ``pop3_uidl_format``."""

    text: str
    _parts: tuple[str | Callable[[_Values], str], ...]

    @classmethod
    def compile(cls, text: str) -> DovecotFormat:
        """``ValueError`` names what postoffice (or Dovecot on a Maildir) cannot expand."""
        parts: list[str | Callable[[_Values], str]] = []
        position = 0
        while position < len(text):
            percent = text.find("%", position)
            if percent < 0:
                parts.append(text[position:])
                break
            if percent > position:
                parts.append(text[position:percent])
            match = _SPEC.match(text, percent)
            if match is None:
                raise ValueError(f"pop3_uidl_format {text!r} ends with a lone '%'")
            parts.append(_variable(text, match))
            position = match.end()
        if not any(callable(part) for part in parts):
            raise ValueError(f"pop3_uidl_format {text!r} has no variable: every UIDL is equal")
        return cls(text=text, _parts=tuple(parts))

    def expand(self, *, uid: int, uidvalidity: int, filename: str, guid: str) -> str:
        values = (uid, uidvalidity, filename, guid)
        return "".join(part if isinstance(part, str) else part(values) for part in self._parts)


def _variable(text: str, match: re.Match[str]) -> str | Callable[[_Values], str]:
    offset_text, zero, width_text, modifiers, long_name, short = match.groups()
    if short == "%" and not (offset_text or zero or width_text or modifiers):
        return "%"
    name = _LONG_NAMES.get(long_name, "") if long_name else short
    if name == "m" or long_name == "md5":
        raise ValueError("pop3_uidl_format %m (header MD5) is not available for Maildir")
    if name not in ("u", "v", "f", "g"):
        raise ValueError(f"pop3_uidl_format {text!r}: unknown variable {match.group(0)!r}")
    index = "uvfg".index(name)
    offset = int(offset_text) if offset_text else 0
    width = int(width_text) if width_text else None
    pad = bool(zero) and width is not None

    def value(values: _Values) -> str:
        raw = values[index]
        text_value = str(raw)
        for modifier in modifiers:
            if modifier == "X":
                number = raw if isinstance(raw, int) else int(raw) if raw.isdigit() else 0
                text_value = f"{number:x}"
            elif modifier == "L":
                text_value = text_value.lower()
            else:
                text_value = text_value.upper()
        limit = width
        if pad:  # "%04u": padded with zeros, never truncated
            assert width is not None
            text_value = text_value.rjust(width, "0")
            limit = None
        if offset or limit is not None:
            start = offset if offset >= 0 else max(len(text_value) + offset, 0)
            end = None if limit is None else start + limit
            return text_value[start:end]
        return text_value

    return value
