"""Courier's UIDLs for a Maildir: ``courierpop3dsizelist``.

Courier's pop3d (``courier-libs/imap/pop3dserver.c``) keeps one line per message it has
listed, by file name, and serves ``UID<n>-<uidvalidity>`` (``UID<n>`` when the
UIDVALIDITY is 0). The file::

    /<version> <next uid> <uidvalidity>          version 2 or 3
    <file name> <size> <uid>:<uidvalidity>       version 2
    <file name> <size> <uid>:<uidvalidity>:<utf8> version 3

The file name may hold spaces, so a line is split from the right. Courier matches names
up to the ``:`` that starts the flags, and so do we. A record with UID 0 (never written by
a current Courier) means the old "version 0" UIDL: the base name with characters outside
0x21-0x7E and ``'``, ``"``, ``+`` written as ``+XX``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from postoffice.storage.legacy_file import read_state_file

__all__ = ["SIZELIST_NAME", "CourierSizelist", "parse_sizelist", "read_sizelist"]

SIZELIST_NAME = "courierpop3dsizelist"


@dataclass(frozen=True, slots=True)
class CourierSizelist:
    next_uid: int
    uidvalidity: int
    uidls: dict[str, str] = field(default_factory=dict)
    """The UIDL Courier serves, by base name."""


def read_sizelist(maildir: Path) -> CourierSizelist | None:
    """The maildir's ``courierpop3dsizelist``; None if there is none (``StorageError`` if
    it cannot be read or its header is not one Courier writes)."""
    return read_state_file(maildir / SIZELIST_NAME, parse_sizelist)


def parse_sizelist(data: bytes) -> CourierSizelist:
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    head = lines[0].split()
    if len(head) < 2 or head[0] not in ("/2", "/3") or not all(h.isdigit() for h in head[1:3]):
        raise ValueError(f"unknown header {lines[0][:40]!r}")
    next_uid = int(head[1])
    uidvalidity = int(head[2]) if len(head) > 2 else 0
    uidls: dict[str, str] = {}
    for line in lines[1:]:
        parts = line.rsplit(" ", 2)
        if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
            continue
        name, _size, ids = parts
        numbers = ids.split(":")
        if len(numbers) < 2 or not (numbers[0].isdigit() and numbers[1].isdigit()):
            continue
        uid, uidv = int(numbers[0]), int(numbers[1])
        base = name.partition(":")[0]
        if uid == 0:
            uidl = _version0_uidl(base)
        elif uidv:
            uidl = f"UID{uid}-{uidv}"
        else:
            uidl = f"UID{uid}"
        uidls.setdefault(base, uidl)
    return CourierSizelist(next_uid=next_uid, uidvalidity=uidvalidity, uidls=uidls)


def _version0_uidl(base: str) -> str:
    out = []
    for byte in base.encode("utf-8", "surrogateescape"):
        if byte < 0x21 or byte > 0x7E or byte in b"'\"+":
            out.append(f"+{byte:02X}")
        else:
            out.append(chr(byte))
    return "".join(out)
