"""Listing ``new/`` and ``cur/`` against what the index cache already knows.

Known keys (names are immutable content) keep their cached sizes, UIDLs and order; only
unknown names are measured and merged in, and a UIDL already handed out is never given to
a newcomer: a newcomer whose UIDL is taken gets a digest of its base name.

*Size.* The exact RETR size (``wire.py``). A name carrying ``,S=<s>,W=<w>`` (our own
deliveries, Dovecot's) is believed without opening or even stat-ing the file when
``0 < s <= w <= 2s``, as Dovecot does; any other file is read and counted. A tag that lies
is found out when RETR sends the file: the session compares the octets it sent with the
listed size and ``MaildirMaildrop.correct_size`` records the truth in the index.

*Order.* Oldest first (``maildir_names.parse_name``), or the old server's order under a
migration UIDL scheme (``uidl.py``), which is read only when there are new names.

*Speed.* A maildrop of 100,000 messages is listed cold in about 0.25-0.3 s of CPU time
on a slow shared machine, with no Python-level loop over the names: each directory's
names are sorted (later passes then run through memory in order, and names with equally
long time prefixes are then already oldest first, which ``_Parsed.in_time_order`` checks
on the digit strings) and joined, ``sub/`` before each, a few thousand at a time into
one key a line (``_Keys``). When every line has the usual shape, one ``split`` by a
regular expression gives a flat list holding, per line, the key itself and its fields,
whose slices are the columns: no tuple per name, no separate pass to make the keys; S
and W are read by one ``json.loads`` call; microseconds are read only if two neighbours
share a second. Working piece by piece, what a piece drops is reused by the next instead
of new pages being faulted in (about 12,700 page faults for such a listing, not 17,600).
Tags are checked column-wise. Only listings with a name of another shape take the general
pattern (``findall``), and only such names a per-name path. A few new names among many
known ones are inserted by bisection into copies of the known columns.

A file that exists but cannot be read raises (the snapshot fails rather than hide mail);
a file that vanishes while we list is skipped.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import json
import operator
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple, TypeVar

from postoffice.storage.maildir_index import Columns
from postoffice.storage.maildir_names import (
    CUR,
    NEW,
    alternate_uid,
    digest_uid,
    parse_name,
    valid_uid,
)
from postoffice.storage.uidl import LegacyUidls, OrderKey, UidlScheme, served_uid
from postoffice.storage.wire import WireSizeCounter

__all__ = ["READ_FLAGS", "Listing", "count_file", "list_maildir"]

_CHUNK = 1 << 16
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

# Delivery time as one integer: seconds * _TICKS + (microseconds + 1), so that it orders
# like (seconds, microseconds) with "no microseconds" (-1) first within its second.
_TICKS = 1_000_001

# One key per line, in the shape of maildir_names._FAST_NAME_RE; any other line matches
# the last group whole and is parsed by parse_name. Groups: unique part (the natural UIDL
# once checked by _fix_uids), seconds, microseconds, S, W, other.
# Possessive quantifiers (*+, {m,n}+): giving characters back could never lead to a match,
# so the engine is told not to try.
_KEY_LINE = re.compile(
    r"^(?:(?:new|cur)/((\d{1,18}+)\.(?:M(\d{1,6}+)(?!\d))?[^,:\n]*+)"
    r"(?:,S=(\d{1,18}+))?(?:,W=(\d{1,18}+))?(?::[^\n]*+)?"
    r"|([^\n]*+))$",
    re.MULTILINE | re.ASCII,
)

# The usual shape alone (microseconds and both tags present, a unique part of characters a
# UIDL may hold), for ``split``: per line the whole key, then the unique part, the seconds,
# and S and W in one ("S,W=W"); between two lines "\n" (a cached one-character string). A
# flat list of strings, not a tuple per line, and the key made by the same pass (module
# docstring). The microseconds are not taken: only neighbours in one second need them
# (_USUAL_MICROS).
_USUAL_KEY_LINE = re.compile(
    r"^((?:new|cur)/((\d{1,18}+)\.M\d{1,6}+(?!\d)[\x21-\x2b\x2d-\x39\x3b-\x7e]*+)"
    r",S=(\d{1,18}+,W=\d{1,18}+)(?::[^\n]*+)?)$",
    re.MULTILINE | re.ASCII,
)
_USUAL_GROUPS = 4
# The microseconds of keys of the usual shape, one match a key (a line).
_USUAL_MICROS = re.compile(r"(?:new|cur)/\d++\.M(\d++)[^\n]*+", re.ASCII)

_UIDL_OCTETS = bytes(range(0x21, 0x7F))  # RFC 1939 §7

_T = TypeVar("_T")

# A new file, when it must be merged with known ones: (time, base, key, disk, wire, uid).
_Row = tuple[int, str, str, int, int, str]


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


def _names(directory: Path) -> list[str]:
    """The regular files of ``directory`` whose names do not start with a dot, sorted.

    Listed through a descriptor: ``os.scandir`` then makes no path string per entry.
    """
    fd = os.open(directory, _DIRECTORY_FLAGS)
    try:
        with os.scandir(fd) as it:
            names = [entry.name for entry in it if entry.is_file(follow_symlinks=False)]
    finally:
        os.close(fd)
    names.sort()
    # Names starting with a dot are one run of the sorted list: [".", "/").
    del names[bisect.bisect_left(names, ".") : bisect.bisect_left(names, "/")]
    return names


def _sane(s: int, w: int) -> bool:
    return 0 < s <= w <= 2 * s


def _fix_uids(uids: list[str], *, printable: bool = False) -> list[str]:
    """Unique parts that are no valid UIDL (RFC 1939 §7) replaced by their digest.

    ``printable``: every character is known to be one a UIDL may hold (0x21-0x7E).
    """
    if printable and (not uids or max(map(len, uids)) <= 70):
        return uids
    try:
        outside = "".join(uids).encode("ascii").translate(None, _UIDL_OCTETS)
    except UnicodeEncodeError:
        outside = b"\x80"
    if not outside and (not uids or max(map(len, uids)) <= 70):
        return uids
    return [uid if valid_uid(uid) else digest_uid(uid) for uid in uids]


class _Keys:
    """Keys in name order, as groups of names after one prefix (``cur/``, ``new/``; or
    ``""`` for keys listed whole): the list of keys is made only when asked for, which a
    cold listing of usual names never does (``_split_usual`` makes them)."""

    __slots__ = ("_groups", "_keys", "count")

    def __init__(self, groups: list[tuple[str, list[str]]]) -> None:
        self._groups = [(prefix, names) for prefix, names in groups if names]
        self.count = sum(len(names) for _, names in self._groups)
        self._keys = groups[0][1] if len(groups) == 1 and not groups[0][0] else None

    def list(self) -> list[str]:
        if self._keys is None:
            keys: list[str] = []
            for prefix, names in self._groups:
                keys += map(prefix.__add__, names)
            self._keys = keys
        return self._keys

    def pieces(self) -> Iterator[tuple[str, int]]:
        """(text, count): ``_PIECE`` keys or fewer at a time, one a line."""
        for prefix, names in self._groups:
            for start in range(0, len(names), _PIECE):
                piece = names[start : start + _PIECE]
                # The first name with its prefix: the join then makes the text in one piece.
                piece[0] = prefix + piece[0]
                yield ("\n" + prefix).join(piece), len(piece)


def _read_keys(path: Path, unchanged: tuple[bool, bool]) -> _Keys:
    """The keys of new/ and cur/ (but not of a directory passed as unchanged)."""
    # new/ first, then cur/: a message moved between the two listings is then seen
    # twice rather than not at all; _dedupe keeps the cur/ name.
    new = [] if unchanged[0] else _names(path / NEW)
    cur = [] if unchanged[1] else _names(path / CUR)
    # cur/ keys sort before new/ ones: in this order the keys are in name order.
    return _Keys([(f"{CUR}/", cur), (f"{NEW}/", new)])


# Usual names are split this many at a time: what each piece makes and drops (the list
# of parts, the S and W text) is made again in the memory the last piece freed, not in
# fresh pages, and the piece's work stays in the processor's caches.
_PIECE = 2048


_UsualColumns = tuple[list[str], list[str], list[str], list[int]]


def _split_usual(listed: _Keys) -> _UsualColumns | None:
    """Key, unique part and seconds of every key, if every key has the usual shape
    (``_USUAL_KEY_LINE``), and the flat S and W values; else None."""
    step = _USUAL_GROUPS + 1
    # Made whole first and filled in place: grown piece by piece, each would be copied
    # again and again.
    keys = [""] * listed.count
    uids = keys.copy()
    seconds = keys.copy()
    values = [0] * (2 * listed.count)
    at = 0
    for text, n in listed.pieces():
        parts = _USUAL_KEY_LINE.split(text)
        # The text is exactly n matched lines if the parts are "", n times (groups,
        # "\n") with "" for the last "\n". Then no key holds a line feed: it would make
        # more lines.
        if not (
            len(parts) == step * n + 1
            and not parts[0]
            and not parts[-1]
            and parts[step:-1:step].count("\n") == n - 1
        ):
            return None
        keys[at : at + n] = parts[1::step]
        uids[at : at + n] = parts[2::step]
        seconds[at : at + n] = parts[3::step]
        values[2 * at : 2 * (at + n)] = _tag_values(parts[4::step])
        at += n
    return keys, uids, seconds, values


def _sizes(tags: list[str]) -> list[int]:
    """A tag's digits as a number, 0 for no tag."""
    return list(map(int, tags)) if all(tags) else [int(x) if x else 0 for x in tags]


def _tag_values(tags: list[str]) -> list[int]:
    """S and W of each "S,W=W" (digits only), flat: S, W, S, W...

    Read by the JSON decoder: one C call for all the numbers, not one ``int`` per number.
    """
    numbers = ",".join(tags).replace(",W=", ",")
    try:
        values: list[int] = json.loads(f"[{numbers}]")
    except ValueError:  # a number with a leading zero, which JSON does not allow
        values = list(map(int, numbers.split(",")))
    return values


class _Parsed:
    """New keys of one listing, in name order, parsed column-wise (module docstring)."""

    __slots__ = (
        "_micros",
        "_odd",
        "_seconds",
        "_times",
        "_uid_prefixes",
        "keys",
        "measured",
        "s",
        "uids",
        "w",
    )

    def __init__(self, listed: _Keys) -> None:
        self.measured = 0  # names whose size was counted by reading the file
        n = listed.count
        usual = _split_usual(listed) if n else None
        others: list[str] = []
        is_usual = usual is not None
        self._micros: list[str] | None = None  # for usual names, read when first needed
        if usual is not None:
            self.keys, uids, self._seconds, values = usual
            self.s, self.w = values[0::2], values[1::2]
            del usual, values
        else:
            keys = self.keys = listed.list()
            # Each match is one whole line, so as many matches as keys means every key
            # matched.
            lines: list[tuple[str, ...]] = _KEY_LINE.findall("\n".join(keys)) if n else []
            if len(lines) != n:  # a name with a line feed: parse every name alone
                lines = [("", "", "", "", "", key) for key in keys]
            columns = [list(column) for column in zip(*lines, strict=True)]
            del lines  # early: its memory is reused below
            if not columns:
                columns = [[] for _ in range(6)]
            uids, self._seconds, self._micros, s_tags, w_tags, others = columns
            self.s = _sizes(s_tags)
            self.w = _sizes(w_tags)
            del s_tags, w_tags
        self._times: list[int] | None = None
        self.uids = _fix_uids(uids, printable=is_usual)
        # Each UIDL is its key's unique part, the text up to the first comma (distinct_uids).
        self._uid_prefixes = is_usual and self.uids is uids
        # Names not of the usual shape: the same values, one name at a time.
        self._odd: dict[int, int] = {}  # position -> time
        for i in [i for i, other in enumerate(others) if other] if any(others) else []:
            secs, mics, _, uid, tags = parse_name(self.keys[i][4:])
            self._odd[i] = secs * _TICKS + mics + 1
            self._seconds[i] = "0"
            self.uids[i] = uid
            self.s[i], self.w[i] = tags if tags is not None else (0, 0)

    @property
    def micros(self) -> list[str]:
        """The microseconds of each key ("" for none)."""
        if self._micros is None:
            keys, micros = self.keys, []
            for start in range(0, len(keys), _PIECE):  # a piece at a time, as they were split
                micros += _USUAL_MICROS.findall("\n".join(keys[start : start + _PIECE]))
            self._micros = micros
        return self._micros

    def _micros_at(self, i: int) -> str:
        if self._micros is not None:
            return self._micros[i]
        usual = _USUAL_MICROS.match(self.keys[i])
        return "" if usual is None else usual[1]

    @property
    def times(self) -> list[int]:
        """Delivery times (see ``_TICKS``), computed when first needed."""
        if self._times is None:
            seconds, micros = self._seconds, self.micros
            times = map(_TICKS.__mul__, map(int, seconds))
            if all(micros):
                self._times = list(map(operator.add, times, map((1).__add__, map(int, micros))))
            else:
                self._times = [
                    t + (int(m) + 1 if m else 0) for t, m in zip(times, micros, strict=True)
                ]
            for i, time in self._odd.items():
                self._times[i] = time
        return self._times

    def in_time_order(self) -> bool:
        """Whether the keys, sorted by name, are in strictly increasing delivery-time order.

        Decided on the digit strings, without converting them: within one directory, names
        whose time prefixes have one length sort by name as by seconds; only neighbours in
        the same second compare microseconds, and the last cur/ name the first new/ one.
        """
        seconds, keys = self._seconds, self.keys
        if self._odd or len(set(map(len, seconds))) > 1:
            return False
        boundary = bisect.bisect_left(keys, f"{NEW}/") - 1  # the last cur/ key
        same = map(operator.eq, seconds, itertools.islice(seconds, 1, None))
        for i in itertools.compress(itertools.count(), same):
            micros = self.micros
            if not (micros[i] and micros[i + 1] and int(micros[i]) < int(micros[i + 1])):
                return False
        if 0 <= boundary < len(keys) - 1:
            at = (int(seconds[boundary]), int(self._micros_at(boundary) or -1))
            after = (int(seconds[boundary + 1]), int(self._micros_at(boundary + 1) or -1))
            return at < after
        return True

    def stamp_order(self) -> list[int] | None:
        """Positions in delivery-time order, if every key has microseconds, the seconds
        are equally long and no two keys have one time; else None.

        Seconds and microseconds padded to six digits, one string per key, sort as the
        times: no integer arithmetic, and name order (nearly time order) makes the sort
        quick. The usual case of names of the usual shape not in time order: microseconds
        of unequal length within one second (Dovecot does not pad them).
        """
        seconds, micros = self._seconds, self.micros
        if self._odd or not all(micros) or len(set(map(len, seconds))) > 1:
            return None
        stamps = list(map(operator.add, seconds, map(str.zfill, micros, itertools.repeat(6))))
        if len(set(stamps)) != len(stamps):
            return None  # equal times: ordered by base name and key as well (_new_maildrop)
        return sorted(range(len(stamps)), key=stamps.__getitem__)

    def distinct_uids(self) -> bool:
        """Whether no two keys have one UIDL (a base name listed twice has one)."""
        uids = self.uids
        if not self._uid_prefixes:
            return len(set(uids)) == len(uids)
        # In name order, the keys of one directory with one UIDL are neighbours: they all
        # start with "sub/UIDL,", and so does any key sorted between two of them.
        if any(map(operator.eq, uids, itertools.islice(uids, 1, None))):
            return False
        boundary = bisect.bisect_left(self.keys, f"{NEW}/")  # the first new/ key
        if 0 < boundary < len(uids):
            return set(itertools.islice(uids, boundary, None)).isdisjoint(
                itertools.islice(uids, boundary)
            )
        return True

    def bases(self) -> list[str]:
        return [key[4:].partition(":")[0] for key in self.keys]

    def measure(self, path: Path) -> None:
        """Sizes from trusted tags, else by reading; a file gone meanwhile is dropped."""
        s, w = self.s, self.w
        if s and min(s) > 0:
            # s <= w <= 2s as 0 <= w - s <= s: one subtraction a name, whose result (the
            # line feeds) is mostly a cached small integer, instead of a product and two
            # comparisons.
            line_feeds = list(map(operator.sub, w, s))
            if min(line_feeds) >= 0 and all(map(operator.le, line_feeds, s)):
                return  # every tag is trusted
        gone: set[int] = set()
        for i, trusted in enumerate(map(_sane, s, w)):
            if not trusted:
                measured = count_file(path / self.keys[i])
                self.measured += 1
                if measured is None:
                    gone.add(i)
                else:
                    s[i], w[i] = measured
        if gone:
            self.take([i for i in range(len(s)) if i not in gone])

    def take(self, positions: list[int]) -> None:
        """Keep only ``positions``, in that order."""
        times = self.times
        self._times = list(map(times.__getitem__, positions))
        self._odd = {}
        for name in ("keys", "s", "uids", "w", "_seconds", "_micros"):
            column = getattr(self, name)
            if column is not None:  # _micros of usual names, before they are read
                setattr(self, name, list(map(column.__getitem__, positions)))

    def rows(self) -> list[_Row]:
        return list(
            zip(self.times, self.bases(), self.keys, self.s, self.w, self.uids, strict=True)
        )


def _count_prefixed(keys: list[str], prefixes: tuple[str, ...]) -> int:
    """How many of ``keys`` start with one of ``prefixes``, by counting in one string."""
    joined = "\n" + "\n".join(keys)
    return sum(joined.count("\n" + prefix) for prefix in prefixes)


def _shares_base(keys: list[str], bases: list[str]) -> bool:
    """Whether a key (``new/NAME`` or ``cur/NAME``) has one of ``bases``, at C speed."""
    if len(bases) <= 20:
        # A few bases: search one string; "/" occurs in a key only after new or cur.
        joined = "\n".join(keys) + "\n"
        return any(f"/{base}:" in joined or f"/{base}\n" in joined for base in bases)
    prefixed = set(map(operator.itemgetter(0), map(str.partition, keys, itertools.repeat(":"))))
    return not (
        prefixed.isdisjoint(map(f"{NEW}/".__add__, bases))
        and prefixed.isdisjoint(map(f"{CUR}/".__add__, bases))
    )


def _wins(key: str, other: str) -> bool:
    """Of two names of one message, the cur/ one, else the smaller, is served."""
    if key[:4] != other[:4]:
        return key.startswith("cur/")
    return key < other


def _dedupe(keys: list[str], kept: list[int], rows: list[_Row]) -> tuple[list[int], list[_Row]]:
    """One entry per base name (a message moved while we listed is seen twice)."""
    best: dict[str, _Row] = {}
    for row in rows:
        previous = best.get(row[1])
        if previous is None or _wins(row[2], previous[2]):
            best[row[1]] = row
    known_base = {keys[i][4:].partition(":")[0]: i for i in kept}
    dropped: set[int] = set()
    result = []
    for base, row in best.items():
        i = known_base.get(base)
        if i is None or _wins(row[2], keys[i]):
            result.append(row)
            if i is not None:
                dropped.add(i)
    if dropped:
        kept = [i for i in kept if i not in dropped]
    return kept, result


def _key_order(key: str) -> tuple[int, str, str]:
    seconds, micros, base, _, _ = parse_name(key[4:])
    return (seconds * _TICKS + micros + 1, base, key)


def _known_order(keys: list[str], i: int) -> tuple[int, str, str]:
    return _key_order(keys[i])


def _order(keys: list[str], item: int | _Row) -> tuple[int, str, str]:
    """The sort key of a known key (by position) or of a new row."""
    return _known_order(keys, item) if isinstance(item, int) else item[:3]


def _legacy_order(legacy: LegacyUidls, keys: list[str], item: int | _Row) -> OrderKey:
    time, base, key = _order(keys, item)
    seconds, micros = divmod(time, _TICKS)
    return legacy.order(base, seconds, micros - 1, key)


class Listing(NamedTuple):
    """What ``list_maildir`` found."""

    columns: Columns
    alternates: bool
    """A newcomer got a digest UIDL because its natural one was taken."""
    read: int
    """Names read from the directories (none from a directory passed as unchanged)."""
    measured: int
    """Newcomers whose size was counted by reading the file (no trustworthy tags)."""


def list_maildir(
    path: Path,
    known: Columns,
    scheme: UidlScheme,
    unchanged: tuple[bool, bool] = (False, False),
    *,
    natural: bool = False,
) -> Listing:
    """List new/ and cur/; known keys keep their cached sizes, UIDs and order.

    ``unchanged``: for new/ and cur/, whether the known keys of that directory are still
    exactly what it holds (``Index.trusted_dirs``); such a directory is not read.
    ``natural``: every known UID is the natural UIDL of its name (the postoffice scheme, an
    index that is not pinned), so a newcomer whose UIDL no known key has shares no base
    name with a known key, and only newcomers whose UIDL is taken need that check. Also says
    whether a newcomer got a digest UIDL because its natural one was taken: such a UIDL
    depends on the order names were first seen, not on the name alone.
    """
    listed = _read_keys(path, unchanged)
    columns, alternates, measured = _merge(path, known, scheme, unchanged, natural, listed)
    return Listing(columns, alternates, listed.count, measured)


def _merge(
    path: Path,
    known: Columns,
    scheme: UidlScheme,
    unchanged: tuple[bool, bool],
    natural: bool,
    listed: _Keys,
) -> tuple[Columns, bool, int]:
    """``list_maildir`` once the directories are read: (columns, alternates, measured)."""
    keys, disk, wire, uids = known
    read = tuple(f"{sub}/" for sub, same in zip((NEW, CUR), unchanged, strict=True) if not same)
    if keys and not _count_prefixed(keys, read):
        # No known key is in a directory we read (a delivery into an empty new/): every
        # known key stays and every listed one is new.
        kept, added = list(range(len(keys))), listed
    elif keys:
        listed_keys = listed.list()
        here = set(listed_keys)
        present: Iterable[bool] = map(here.__contains__, keys)
        trusted = tuple(f"{sub}/" for sub, same in zip((NEW, CUR), unchanged, strict=True) if same)
        if trusted:  # the known keys of an unread directory are there
            present = map(
                operator.or_, present, map(operator.methodcaller("startswith", trusted), keys)
            )
        kept = list(itertools.compress(range(len(keys)), present))
        known_here = here.intersection(keys)
        new_keys = [key for key in listed_keys if key not in known_here]
        added = _Keys([("", new_keys)])
    else:
        kept, added = [], listed
    if not added.count:
        if len(kept) == len(keys):
            return known, False, 0
        columns = (
            [keys[i] for i in kept],
            [disk[i] for i in kept],
            [wire[i] for i in kept],
            [uids[i] for i in kept],
        )
        return columns, False, 0

    legacy = scheme.load(path)
    # In name order (as read) the work below runs through memory in order, and the names
    # are then nearly in delivery-time order already (one run of each directory).
    parsed = _Parsed(added)
    parsed.measure(path)
    # Equal base names have equal natural UIDLs, so distinct UIDLs need no base names.
    maybe_twice = not parsed.distinct_uids()
    if not kept and legacy is None and not maybe_twice:
        return (*_new_maildrop(parsed), parsed.measured)
    if legacy is not None:
        bases = parsed.bases()
        for i, key in enumerate(parsed.keys):
            old = legacy.uid(bases[i], path / key)
            if old is not None:
                parsed.uids[i] = served_uid(old)
    rows = parsed.rows()
    taken: set[str] | None = None
    if natural and kept and not maybe_twice:
        # Equal base names have equal natural UIDLs: only a newcomer whose UIDL a known
        # key has can share its base name (one set, not a search through every key).
        taken = set(uids) if len(kept) == len(keys) else set(map(uids.__getitem__, kept))
        clashing = [row for row in rows if row[5] in taken]
        if clashing and _shares_base([keys[i] for i in kept], [r[1] for r in clashing]):
            kept, rows = _dedupe(keys, kept, rows)
            taken = None  # kept changed
    elif maybe_twice or (kept and _shares_base([keys[i] for i in kept], [r[1] for r in rows])):
        kept, rows = _dedupe(keys, kept, rows)

    items: list[int | _Row] = [*kept, *rows]
    if legacy is not None:
        items.sort(key=lambda item: _legacy_order(legacy, keys, item))
    elif scheme.kind != "postoffice":
        # The old server's records are gone: keep its order, newcomers after it.
        items[len(kept) :] = sorted(rows)
    elif len(rows) * 20 < len(kept):
        return (*_insert_few(known, kept, rows, taken), parsed.measured)
    else:
        items.sort(key=lambda item: _order(keys, item))

    # A UID handed out before stays; a new file whose UID is taken gets a digest.
    taken = {uids[i] for i in kept}
    out_keys: list[str] = []
    out_disk: list[int] = []
    out_wire: list[int] = []
    out_uids: list[str] = []
    alternates = False
    for item in items:
        if isinstance(item, int):
            out_keys.append(keys[item])
            out_disk.append(disk[item])
            out_wire.append(wire[item])
            out_uids.append(uids[item])
            continue
        uid = item[5]
        if uid in taken:
            uid = alternate_uid(item[1], taken)
            alternates = True
        taken.add(uid)
        out_keys.append(item[2])
        out_disk.append(item[3])
        out_wire.append(item[4])
        out_uids.append(uid)
    return (out_keys, out_disk, out_wire, out_uids), alternates, parsed.measured


def _insert_few(
    known: Columns, kept: list[int], rows: list[_Row], taken: set[str] | None = None
) -> tuple[Columns, bool]:
    """Known rows are in order already: copy them at C speed, insert a few new ones.

    ``taken``: the UIDs of the kept rows, if already made (this function adds to it).
    Newcomers are mostly newer than every known message: they are appended after one
    comparison with the last key, without a bisection that parses a name at each step.
    """
    keys, disk_sizes, wire_sizes, uids = known
    if len(kept) == len(keys):
        out_keys, out_disk, out_wire, out_uids = [*keys], [*disk_sizes], [*wire_sizes], [*uids]
    else:
        out_keys = list(map(keys.__getitem__, kept))
        out_disk = list(map(disk_sizes.__getitem__, kept))
        out_wire = list(map(wire_sizes.__getitem__, kept))
        out_uids = list(map(uids.__getitem__, kept))
    # A UID handed out before stays; a new file whose UID is taken gets a digest.
    if taken is None:
        taken = set(out_uids)
    alternates = False
    rows.sort()
    last = _key_order(out_keys[-1]) if out_keys else None
    for time, base, key, disk, wire, uid in rows:
        if uid in taken:
            uid = alternate_uid(base, taken)
            alternates = True
        taken.add(uid)
        order = (time, base, key)
        if last is None or last < order:
            at = len(out_keys)
            last = order
        else:
            at = bisect.bisect_right(out_keys, order, key=_key_order)
        out_keys.insert(at, key)
        out_disk.insert(at, disk)
        out_wire.insert(at, wire)
        out_uids.insert(at, uid)
    return (out_keys, out_disk, out_wire, out_uids), alternates


def _pick(column: list[_T], positions: list[int]) -> list[_T]:
    return list(map(column.__getitem__, positions))


def _new_maildrop(parsed: _Parsed) -> tuple[Columns, bool]:
    """Nothing known, natural scheme, distinct UIDLs: sorted by delivery time, column-wise."""
    columns = (parsed.keys, parsed.s, parsed.w, parsed.uids)
    if parsed.in_time_order():
        return columns, False
    order = parsed.stamp_order()
    if order is not None:
        keys, s, w, uids = columns
        return (_pick(keys, order), _pick(s, order), _pick(w, order), _pick(uids, order)), False
    times = parsed.times
    if all(map(operator.lt, times, itertools.islice(times, 1, None))):
        pass
    elif len(set(times)) == len(times):
        # Distinct times decide the order alone; as floats (exact below 2**53) they
        # sort with the fastest comparison Python has.
        exact = max(times) < 1 << 53
        sort_keys: list[int] | list[float] = list(map(float, times)) if exact else times
        parsed.take(sorted(range(len(times)), key=sort_keys.__getitem__))
    else:
        bases = parsed.bases()
        keys = parsed.keys
        parsed.take(sorted(range(len(times)), key=lambda i: (times[i], bases[i], keys[i])))
    return (parsed.keys, parsed.s, parsed.w, parsed.uids), False
