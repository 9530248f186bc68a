"""Maildir file names: the base name, the natural UIDL, size tags, order and flags.

A file name is ``UNIQUE[,KEY=value...][:2,FLAGS]``. The part before ``:`` (the *base
name*) never changes: other programs only move ``new/X`` to ``cur/X:2,`` and change the
flags. Pure functions on strings, except ``ensure_maildir``, which makes the folders (kept
here, in a module that imports almost nothing, for the fetcher's start-up too).

*Natural UIDL* (``uidl_format = "postoffice"``): the base name without ``,KEY=value``
tags, so it survives moves and flag changes. A name outside RFC 1939 §7 (1-70 characters
in 0x21-0x7E) gets ``"D"`` + 40 base32 characters of its SHA-256 (``digest_uid``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
from pathlib import Path

__all__ = [
    "CUR",
    "NEW",
    "TMP",
    "ParsedName",
    "alternate_uid",
    "base_name",
    "digest_uid",
    "natural_uid",
    "parse_name",
    "seen_name",
    "size_tags",
    "valid_key",
    "valid_uid",
]

NEW, CUR, TMP = "new", "cur", "tmp"


def ensure_maildir(path: Path) -> None:
    """Create ``path`` with ``cur/ new/ tmp/`` (mode 0700) where missing."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    for sub in (CUR, NEW, TMP):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path / sub, mode=0o700)


_UID_RE = re.compile(r"[\x21-\x7e]{1,70}")
_FAST_NAME_RE = re.compile(
    r"((\d{1,18})\.(?:M(\d{1,6})(?!\d))?[\x21-\x2b\x2d-\x39\x3b-\x7e]*)"  # unique: a valid UIDL
    r"(?:,S=(\d{1,18}))?(?:,W=(\d{1,18}))?(:.*)?",
    re.DOTALL | re.ASCII,
)
_MICROS_RE = re.compile(r"M([0-9]{1,6})(?![0-9])")
_TAG_RE = re.compile(r"[A-Za-z]+=.*", re.DOTALL)

# (seconds, microseconds or -1, base name, natural UIDL, (S, W) tags or None)
ParsedName = tuple[int, int, str, str, tuple[int, int] | None]


def valid_uid(uid: str) -> bool:
    """1-70 characters in 0x21-0x7E (RFC 1939 §7)."""
    return _UID_RE.fullmatch(uid) is not None


def base_name(name: str) -> str:
    return name.partition(":")[0]


def natural_uid(base: str) -> str:
    """The UIDL of a base name: tags removed, digested if not a valid RFC 1939 UIDL."""
    uid = base
    if "," in base:
        first, *rest = base.split(",")
        uid = ",".join([first, *(part for part in rest if not _TAG_RE.fullmatch(part))])
    if _UID_RE.fullmatch(uid):
        return uid
    return digest_uid(uid)


def digest_uid(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()
    return "D" + base64.b32encode(digest).decode("ascii")[:40]


def alternate_uid(base: str, taken: set[str]) -> str:
    """A digest UIDL for ``base`` that is not in ``taken``: for the later of two duplicates."""
    uid = digest_uid(base)
    n = 1
    while uid in taken:
        uid = digest_uid(f"{base}\0{n}")
        n += 1
    return uid


def size_tags(base: str) -> tuple[int, int] | None:
    """``(s, w)`` from ``,S=<s>`` and ``,W=<w>`` tags, if both are present."""
    if ",S=" not in base or ",W=" not in base:
        return None
    s = w = None
    for part in base.split(",")[1:]:
        value = part[2:]
        if not (value.isascii() and value.isdigit()):
            continue
        if part.startswith("S="):
            s = int(value)
        elif part.startswith("W="):
            w = int(value)
    if s is None or w is None:
        return None
    return s, w


def parse_name(name: str) -> ParsedName:
    """(seconds, microseconds or -1, base name, natural UIDL, (S, W) tags) of a file name.

    Oldest first means: the delivery time before the first ``.``, then, within one second,
    an ``M<microseconds>`` right after the dot (our names, Dovecot's), then the base name.
    """
    match = _FAST_NAME_RE.fullmatch(name)
    if match is not None:  # the usual shape, parsed by one regex
        unique, seconds, micros, s, w, info = match.groups()
        base = name if info is None else name[: match.start(6)]
        natural = unique if len(unique) <= 70 else digest_uid(unique)
        tags = (int(s), int(w)) if s is not None and w is not None else None
        return int(seconds), -1 if micros is None else int(micros), base, natural, tags
    base = base_name(name)
    head, _, rest = base.partition(".")
    # A name without a time prefix cannot be dated; it sorts as oldest.
    seconds_ = int(head) if head.isascii() and head.isdigit() else 0
    micros_match = _MICROS_RE.match(rest)
    micros_ = int(micros_match[1]) if micros_match else -1
    return seconds_, micros_, base, natural_uid(base), size_tags(base)


def seen_name(name: str) -> str | None:
    """The name with the Seen flag (``:2,`` flags kept sorted); None for unknown info."""
    base, sep, info = name.partition(":")
    if not sep:
        return base + ":2,S"
    if not info.startswith("2,"):
        return None
    flags = info[2:]
    if "S" in flags:
        return name
    return f"{base}:2,{''.join(sorted({*flags, 'S'}))}"


def valid_key(key: object) -> bool:
    """A key (``new/NAME`` or ``cur/NAME``) that cannot lead outside ``new/`` and ``cur/``."""
    return (
        isinstance(key, str)
        and key[:4] in ("new/", "cur/")
        and len(key) > 4
        and "/" not in key[4:]
        and "\0" not in key
        and not key.startswith(".", 4)
    )
