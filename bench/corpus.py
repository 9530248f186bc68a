"""The benchmark data sets: one passwd-file and the Maildirs both servers read.

Built once in a folder under the system's temp dir and reused by later runs (a
``corpus.json`` written last marks a complete build of a given size). Layout::

    ROOT/passwd                       user:{PLAIN}password:uid:gid::home::  (both servers)
    ROOT/users/NAME/Maildir/{cur,new,tmp}

Data sets (full size; ``--quick`` is smaller):

- ``user0000`` .. ``user4999``: small maildrops (5 messages of 1-3 KB, in ``new/``). The login
  storm uses the first 1,000; the idle-session test needs one user per session because
  postoffice locks a maildrop for the whole session.
- ``bulk``: 2,000 MIME messages of 50 KB (a text part and a base64 attachment).
- ``huge``: 100,000 messages of 1.4 KB.
- ``keep``: 10,000 messages of 1.4 KB already retrieved, plus 10 new ones delivered into
  ``new/`` before each keep-mode sync (``add_keep_new``).

Files have LF line endings and Dovecot-style names, ``1700000000.M1P4242.bench,S=1234,W=1270``
(``S`` the file size, ``W`` its size with CRLF line ends); mail that was already read lives in
``cur/`` with ``:2,S``. Everything belongs to the mail user (``nobody``) Dovecot switches to.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

MAIL_USER = "nobody"
FORMAT = 1  # bump when the layout or the messages change, so old corpora are rebuilt


@dataclass(frozen=True, slots=True)
class Spec:
    users: int
    storm_users: int
    small_messages: int
    bulk_messages: int
    bulk_size: int
    huge_messages: int
    huge_size: int
    keep_messages: int
    keep_new: int


FULL = Spec(
    users=5000,
    storm_users=1000,
    small_messages=5,
    bulk_messages=2000,
    bulk_size=50_000,
    huge_messages=100_000,
    huge_size=1400,
    keep_messages=10_000,
    keep_new=10,
)
QUICK = Spec(
    users=1000,
    storm_users=1000,
    small_messages=5,
    bulk_messages=500,
    bulk_size=50_000,
    huge_messages=20_000,
    huge_size=1400,
    keep_messages=10_000,
    keep_new=10,
)

_WORD_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there one all we their been has when who will "
    "more no if out so said what up its about into than them can only other new some time "
    "could these two may then do first any my now such like our over man me even most made "
    "after also did many before must through back years where much your way well down should "
    "because each just those people how too little state good very make world still own see "
    "men work long get here between both life being under never day same another know while "
    "last might us great old year off come since against go came right used take three "
    "meeting report invoice quarterly server backup release schedule budget review deadline"
)
_WORDS = _WORD_TEXT.split()


def _text_lines(rng: random.Random, count: int) -> list[bytes]:
    """A pool of prose lines, 50-72 characters, to cut message bodies from."""
    lines = []
    for _ in range(count):
        words: list[str] = []
        length = rng.randint(50, 72)
        while sum(len(word) + 1 for word in words) < length:
            words.append(rng.choice(_WORDS))
        line = " ".join(words)
        lines.append(line[:1].upper().encode() + line[1:].encode())
    return lines


class _Writer:
    """Writes messages with Dovecot-style names into one Maildir."""

    def __init__(self, maildir: Path, uid: int, gid: int) -> None:
        self.maildir = maildir
        self.uid, self.gid = uid, gid
        for sub in ("", "cur", "new", "tmp"):
            folder = maildir / sub
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, uid, gid)

    def write(self, number: int, data: bytes, *, seen: bool, tag: str = "bench") -> str:
        size, wire = len(data), len(data) + data.count(b"\n")
        base = f"{1700000000 + number}.M{(number * 7919) % 1000000}P4242.{tag},S={size},W={wire}"
        path = self.maildir / ("cur" if seen else "new") / (base + (":2,S" if seen else ""))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fchown(fd, self.uid, self.gid)
        finally:
            os.close(fd)
        return base


class Messages:
    """Deterministic LF messages: plain text of about a given size, and MIME with attachment."""

    def __init__(self, seed: int = 6) -> None:
        self.rng = random.Random(seed)
        self.pool = _text_lines(self.rng, 4000)

    def _headers(self, user: str, number: int, content_type: str) -> bytes:
        date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(1700000000 + number * 37))
        subject = " ".join(self.rng.choice(_WORDS) for _ in range(self.rng.randint(3, 8)))
        mid = f"{number:08x}.{self.rng.getrandbits(48):012x}"
        return (
            f"Return-Path: <sender{number % 97}@example.org>\n"
            f"Delivered-To: {user}@example.com\n"
            f"Received: from mx{number % 7}.example.org (mx{number % 7}.example.org "
            f"[192.0.2.{number % 250 + 1}])\n"
            f"\tby mail.example.com (Postfix) with ESMTPS id {mid[:10].upper()}\n"
            f"\tfor <{user}@example.com>; {date}\n"
            f"From: Sender {number % 97} <sender{number % 97}@example.org>\n"
            f"To: {user}@example.com\n"
            f"Subject: {subject}\n"
            f"Date: {date}\n"
            f"Message-ID: <{mid}@example.org>\n"
            f"MIME-Version: 1.0\n"
            f"Content-Type: {content_type}\n"
        ).encode()

    def _body(self, octets: int, number: int) -> bytes:
        lines: list[bytes] = []
        total = 0
        start = self.rng.randrange(len(self.pool))
        while total < octets:
            line = self.pool[(start + len(lines)) % len(self.pool)]
            lines.append(line)
            total += len(line) + 1
        if number % 10 == 3 and len(lines) > 3:
            lines[2] = b"." + lines[2]  # some lines start with a dot: dot-stuffing happens
        if number % 50 == 7 and len(lines) > 5:
            lines[4] = b"."
        return b"\n".join(lines) + b"\n"

    def text(self, user: str, number: int, octets: int) -> bytes:
        head = self._headers(user, number, "text/plain; charset=utf-8")
        head += b"Content-Transfer-Encoding: 7bit\n\n"
        return head + self._body(max(octets - len(head), 40), number)

    def mime(self, user: str, number: int, octets: int) -> bytes:
        boundary = f"=-bench-{number:06d}-="
        head = self._headers(user, number, f'multipart/mixed; boundary="{boundary}"')
        text = self._body(900, number)
        part1 = (
            f"\nThis is a multi-part message in MIME format.\n\n--{boundary}\n"
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\n"
        ).encode() + text
        part2_head = (
            f'\n--{boundary}\nContent-Type: application/pdf; name="report-{number}.pdf"\n'
            "Content-Transfer-Encoding: base64\n"
            f'Content-Disposition: attachment; filename="report-{number}.pdf"\n\n'
        ).encode()
        tail = f"\n--{boundary}--\n".encode()
        room = octets - len(head) - len(part1) - len(part2_head) - len(tail)
        raw = max(room * 76 // 77 * 3 // 4, 3)  # base64 grows 4/3, plus one LF per 76
        encoded = base64_lines(self.rng.randbytes(raw))
        return head + part1 + part2_head + encoded + tail


def base64_lines(data: bytes) -> bytes:
    text = base64.b64encode(data)
    return b"\n".join(text[i : i + 76] for i in range(0, len(text), 76)) + b"\n"


def small_user(number: int) -> str:
    return f"user{number:04d}"


def password(user: str) -> str:
    return f"pw-{user}"


class Corpus:
    """A built corpus on disk."""

    def __init__(self, root: Path, spec: Spec) -> None:
        self.root = root
        self.spec = spec
        entry = pwd.getpwnam(MAIL_USER)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    @property
    def passwd(self) -> Path:
        return self.root / "passwd"

    def home(self, user: str) -> Path:
        return self.root / "users" / user

    def maildir(self, user: str) -> Path:
        return self.home(user) / "Maildir"

    def users_file(self, count: int, path: Path) -> Path:
        """``name password`` lines for the first ``count`` small users (for the C client)."""
        path.write_text(
            "".join(f"{small_user(n)} {password(small_user(n))}\n" for n in range(count))
        )
        return path

    def forget(self, user: str) -> None:
        """Remove every server's index, cache and lock files from a Maildir, keeping the mail:
        the next login finds a maildrop it has never seen (the page cache stays warm)."""
        maildir = self.maildir(user)
        for entry in os.scandir(maildir):
            if entry.name in ("cur", "new", "tmp"):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)

    def clear_keep_new(self) -> None:
        """Remove the new messages an earlier keep-mode sync added to ``keep``."""
        maildir = self.maildir("keep")
        for sub in ("new", "cur"):
            for name in os.listdir(maildir / sub):
                if ".bench-new" in name:
                    os.unlink(maildir / sub / name)

    def add_keep_new(self, run: int) -> None:
        """Deliver ``keep_new`` new messages (about 5 KB) into ``keep``'s ``new/``.

        The names are new every time (a clock in the tag): Dovecot warns when a name it saw
        expunged comes back."""
        writer = _Writer(self.maildir("keep"), self.uid, self.gid)
        messages = Messages(seed=1000 + run)
        tag = f"bench-new{time.time_ns():x}"
        for k in range(self.spec.keep_new):
            number = 50_000_000 + run * 1000 + k
            writer.write(number, messages.text("keep", number, 5000), seen=False, tag=tag)

    def check(self) -> bool:
        """Cheap test that a reused corpus still holds what it was built with."""
        try:
            counts = {
                user: sum(
                    ".bench-new" not in name for name in os.listdir(self.maildir(user) / "cur")
                )
                for user in ("bulk", "huge", "keep")
            }
        except OSError:
            return False
        return counts == {
            "bulk": self.spec.bulk_messages,
            "huge": self.spec.huge_messages,
            "keep": self.spec.keep_messages,
        }


def default_root(quick: bool) -> Path:
    return (
        Path(tempfile.gettempdir()) / "postoffice-bench" / ("corpus-quick" if quick else "corpus")
    )


def ensure_corpus(root: Path, spec: Spec, *, log: bool = True) -> Corpus:
    """The corpus at ``root``, built (or rebuilt) unless a complete one of ``spec`` is there."""
    marker = root / "corpus.json"
    wanted = {"format": FORMAT, **asdict(spec)}
    if marker.exists():
        try:
            if json.loads(marker.read_text()) == wanted:
                corpus = Corpus(root, spec)
                if corpus.check():
                    return corpus
        except (OSError, ValueError):
            pass
    if log:
        print(f"building the corpus in {root} (once; reused by later runs)...", flush=True)
    started = time.monotonic()
    building = root.with_name(root.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    building.mkdir(parents=True)
    for folder in (building.parent, building):
        folder.chmod(0o755)
    _build(building, spec)
    (building / "corpus.json").write_text(json.dumps(wanted, indent=1) + "\n")
    building.rename(root)
    # The passwd-file names homes inside the folder it was built in: fix them up.
    text = (root / "passwd").read_text().replace(str(building), str(root))
    (root / "passwd").write_text(text)
    if log:
        print(f"corpus built in {time.monotonic() - started:.0f}s", flush=True)
    return Corpus(root, spec)


def _build(root: Path, spec: Spec) -> None:
    corpus = Corpus(root, spec)
    (root / "users").mkdir()
    os.chown(root / "users", corpus.uid, corpus.gid)
    lines = []
    names = [small_user(n) for n in range(spec.users)] + ["bulk", "huge", "keep"]
    for name in names:
        lines.append(
            f"{name}:{{PLAIN}}{password(name)}:{corpus.uid}:{corpus.gid}::{corpus.home(name)}::\n"
        )
        corpus.home(name).mkdir()
        os.chown(corpus.home(name), corpus.uid, corpus.gid)
    (root / "passwd").write_text("".join(lines))
    (root / "passwd").chmod(0o644)  # Dovecot's auth process reads it as its internal user

    messages = Messages()
    number = 0
    for n in range(spec.users):
        user = small_user(n)
        writer = _Writer(corpus.maildir(user), corpus.uid, corpus.gid)
        for _ in range(spec.small_messages):
            number += 1
            size = 1000 + (number * 389) % 2000
            writer.write(number, messages.text(user, number, size), seen=False)
    writer = _Writer(corpus.maildir("bulk"), corpus.uid, corpus.gid)
    for _ in range(spec.bulk_messages):
        number += 1
        writer.write(number, messages.mime("bulk", number, spec.bulk_size), seen=True)
    for user, count in (("huge", spec.huge_messages), ("keep", spec.keep_messages)):
        writer = _Writer(corpus.maildir(user), corpus.uid, corpus.gid)
        for _ in range(count):
            number += 1
            writer.write(number, messages.text(user, number, spec.huge_size), seen=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build (or check) the benchmark corpus.")
    parser.add_argument("--quick", action="store_true", help="the smaller corpus")
    parser.add_argument("--root", type=Path, help="where (default: under the temp dir)")
    args = parser.parse_args()
    built = ensure_corpus(args.root or default_root(args.quick), QUICK if args.quick else FULL)
    print(built.root)
