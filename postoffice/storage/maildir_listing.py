"""Listing ``new/`` and ``cur/`` against what the index cache already knows.

Known keys (names are immutable content) keep their cached sizes, UIDLs and order; only
unknown names are measured and merged in, and a UIDL already handed out is never given to
a newcomer: a newcomer whose UIDL is taken gets a digest of its base name.

*Size.* The exact RETR size (``wire.py``). A name carrying ``,S=<s>,W=<w>`` (our own
deliveries, Dovecot's) is believed only if ``s`` is the file's size and ``s <= w <= 2s``;
otherwise the file is read and counted.

*Order.* Oldest first (``maildir_names.parse_name``), or the old server's order under a
migration UIDL scheme (``uidl.py``), which is read only when there are new names.

A file that exists but cannot be read raises (the snapshot fails rather than hide mail);
a file that vanishes while we list is skipped.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import os
import stat
from pathlib import Path

from postoffice.storage.maildir_index import Columns
from postoffice.storage.maildir_names import CUR, NEW, alternate_uid, parse_name
from postoffice.storage.uidl import LegacyUidls, OrderKey, UidlScheme, served_uid
from postoffice.storage.wire import WireSizeCounter

__all__ = ["READ_FLAGS", "count_file", "list_maildir"]

_CHUNK = 1 << 16
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC

# A new file while listing: (seconds, microseconds, base, key, disk, wire, uid).
_Row = tuple[int, int, str, str, int, int, str]


def count_file(path: Path) -> tuple[int, int] | None:
    """``(disk size, wire size)`` by reading; None if it is gone or not a regular file."""
    try:
        fd = os.open(path, READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink: never served
            return None
        raise
    with open(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        counter = WireSizeCounter()
        while chunk := f.read(_CHUNK):
            counter.update(chunk)
        return counter.octets, counter.size


def _measure(entry: os.DirEntry[str], tags: tuple[int, int] | None) -> tuple[int, int] | None:
    """(disk size, wire size) from trustworthy tags or by reading; None if not servable."""
    if tags is not None:
        s, w = tags
        if 0 < s <= w <= 2 * s:
            try:
                if entry.stat(follow_symlinks=False).st_size == s:
                    return s, w
            except FileNotFoundError:
                return None
    return count_file(Path(entry.path))


def _order(keys: list[str], item: int | _Row) -> tuple[int, int, str, str]:
    """The sort key of a known key (by position) or of a new row."""
    if isinstance(item, int):
        key = keys[item]
        seconds, micros, base, _, _ = parse_name(key[4:])
        return (seconds, micros, base, key)
    return item[:4]


def _legacy_order(legacy: LegacyUidls, keys: list[str], item: int | _Row) -> OrderKey:
    seconds, micros, base, key = _order(keys, item)
    return legacy.order(base, seconds, micros, key)


def _wins(key: str, other: str) -> bool:
    """Of two names of one message, the cur/ one, else the smaller, is served."""
    if key[:4] != other[:4]:
        return key.startswith("cur/")
    return key < other


def _dedupe(keys: list[str], kept: list[int], rows: list[_Row]) -> tuple[list[int], list[_Row]]:
    """One entry per base name (a message moved while we listed is seen twice)."""
    best: dict[str, _Row] = {}
    for row in rows:
        previous = best.get(row[2])
        if previous is None or _wins(row[3], previous[3]):
            best[row[2]] = row
    known_base = {keys[i][4:].partition(":")[0]: i for i in kept}
    dropped: set[int] = set()
    result = []
    for base, row in best.items():
        i = known_base.get(base)
        if i is None or _wins(row[3], keys[i]):
            result.append(row)
            if i is not None:
                dropped.add(i)
    if dropped:
        kept = [i for i in kept if i not in dropped]
    return kept, result


def list_maildir(path: Path, known: Columns, scheme: UidlScheme) -> Columns:
    """List new/ and cur/; known keys keep their cached sizes, UIDs and order."""
    keys, disk, wire, uids = known
    position = dict(zip(keys, range(len(keys)), strict=True))
    present = bytearray(len(keys))
    added: list[tuple[str, os.DirEntry[str]]] = []
    # new/ first, then cur/: a message moved between the two listings is then seen
    # twice rather than not at all; _dedupe keeps the cur/ name.
    for sub in (NEW, CUR):
        prefix = sub + "/"
        with os.scandir(path / sub) as it:
            for entry in it:
                name = entry.name
                if name.startswith("."):
                    continue
                key = prefix + name
                i = position.get(key)
                if i is not None:
                    present[i] = 1
                    continue
                try:
                    if entry.is_file(follow_symlinks=False):
                        added.append((key, entry))
                except OSError:
                    continue
    kept = list(itertools.compress(range(len(keys)), present))
    if not added:
        if len(kept) == len(keys):
            return known
        return (
            [keys[i] for i in kept],
            [disk[i] for i in kept],
            [wire[i] for i in kept],
            [uids[i] for i in kept],
        )

    legacy = scheme.load(path)
    rows: list[_Row] = []
    for key, entry in added:
        seconds, micros, base, uid, tags = parse_name(key[4:])
        measured = _measure(entry, tags)
        if measured is None:
            continue
        if legacy is not None:
            old = legacy.uid(base, Path(entry.path))
            if old is not None:
                uid = served_uid(old)
        rows.append((seconds, micros, base, key, *measured, uid))
    kept, rows = _dedupe(keys, kept, rows)

    items: list[int | _Row] = list(kept)
    if legacy is not None:
        items.extend(rows)
        items.sort(key=lambda item: _legacy_order(legacy, keys, item))
    elif scheme.kind != "postoffice":
        # The old server's records are gone: keep its order, newcomers after it.
        items.extend(sorted(rows))
    elif len(rows) * 20 < len(kept):
        # Known rows are in order already; insert a few new ones.
        rows.sort()
        for row in rows:
            at = bisect.bisect_right(items, row[:4], key=lambda item: _order(keys, item))
            items.insert(at, row)
    else:
        items.extend(rows)
        items.sort(key=lambda item: _order(keys, item))

    # A UID handed out before stays; a new file whose UID is taken gets a digest.
    taken = {uids[i] for i in kept}
    out_keys: list[str] = []
    out_disk: list[int] = []
    out_wire: list[int] = []
    out_uids: list[str] = []
    for item in items:
        if isinstance(item, int):
            out_keys.append(keys[item])
            out_disk.append(disk[item])
            out_wire.append(wire[item])
            out_uids.append(uids[item])
            continue
        uid = item[6]
        if uid in taken:
            uid = alternate_uid(item[2], taken)
        taken.add(uid)
        out_keys.append(item[3])
        out_disk.append(item[4])
        out_wire.append(item[5])
        out_uids.append(uid)
    return out_keys, out_disk, out_wire, out_uids
