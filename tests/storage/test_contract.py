"""The Maildrop contract (storage/base.py), checked against every backend alike."""

from __future__ import annotations

import itertools
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postoffice.delivery.maildir import deliver_to_maildir
from postoffice.errors import MaildropInUseError, MessageVanishedError
from postoffice.storage.base import Maildrop, StoredMessage
from postoffice.storage.maildir import MaildirMaildrop
from postoffice.storage.memory import MemoryStore
from postoffice.storage.wire import wire_size

UID_RE = re.compile(r"[\x21-\x7e]{1,70}")

SAMPLES = [
    b"Subject: lf\n\nbody\n",
    b"Subject: crlf\r\n\r\nbody\r\n",
    b"Subject: no final newline\n\nbody",
    b"Subject: mixed\r\n\nline\n.dot\r\n",
    b"",
]


class Backend(Protocol):
    """What the contract tests need from a backend besides the Maildrop itself."""

    def session(self) -> Maildrop: ...
    def add(self, data: bytes) -> None: ...
    def stored(self) -> list[bytes]: ...
    def remove_externally(self, message: StoredMessage) -> None: ...


class MaildirBackend:
    """A Maildir in a directory; ``tagged`` adds mail through deliver_to_maildir."""

    def __init__(self, path: Path, *, tagged: bool) -> None:
        self.path = path
        self.tagged = tagged
        self._seq = itertools.count()

    def session(self) -> Maildrop:
        return MaildirMaildrop(self.path)

    def add(self, data: bytes) -> None:
        if self.tagged:
            deliver_to_maildir(self.path, data)
            return
        # A plain writer (no size tags): sizes must be counted from the file.
        n = next(self._seq)
        (self.path / "new").mkdir(parents=True, exist_ok=True)
        (self.path / "new" / f"{1_600_000_000 + n}.P1Q{n}.test").write_bytes(data)

    def stored(self) -> list[bytes]:
        return sorted(
            p.read_bytes()
            for sub in ("new", "cur")
            if (self.path / sub).is_dir()
            for p in (self.path / sub).iterdir()
        )

    def remove_externally(self, message: StoredMessage) -> None:
        os.unlink(self.path / message.key)


class MemoryBackend:
    def __init__(self) -> None:
        self.store = MemoryStore()

    def session(self) -> Maildrop:
        return self.store.maildrop("alice")

    def add(self, data: bytes) -> None:
        self.store.deliver("alice", data)

    def stored(self) -> list[bytes]:
        return sorted(self.store.messages("alice").values())

    def remove_externally(self, message: StoredMessage) -> None:
        self.store.remove("alice", message.uid)


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "maildir": lambda path: MaildirBackend(path, tagged=False),
    "maildir-delivered": lambda path: MaildirBackend(path, tagged=True),
    "memory": lambda path: MemoryBackend(),
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return BACKENDS[request.param](tmp_path / "Maildir")


def open_session(backend: Backend) -> tuple[Maildrop, Sequence[StoredMessage]]:
    maildrop = backend.session()
    maildrop.lock()
    return maildrop, maildrop.snapshot()


def read(maildrop: Maildrop, message: StoredMessage) -> bytes:
    with maildrop.open(message) as f:
        return f.read()


def test_lock_is_exclusive(backend: Backend) -> None:
    """A second session cannot lock until the first unlocks; unlock twice is harmless."""
    first = backend.session()
    first.lock()
    second = backend.session()
    with pytest.raises(MaildropInUseError):
        second.lock()
    first.unlock()
    first.unlock()
    second.lock()
    with pytest.raises(MaildropInUseError):
        first.lock()
    second.unlock()


def test_sizes_are_exact_wire_sizes(backend: Backend) -> None:
    """LF, CRLF, mixed, unterminated and empty messages list their exact RETR size."""
    for data in SAMPLES:
        backend.add(data)
    maildrop, messages = open_session(backend)
    assert [read(maildrop, m) for m in messages] == SAMPLES
    assert [m.size for m in messages] == [wire_size(d) for d in SAMPLES]
    assert [m.size for m in messages] == [21, 23, 35, 30, 2]


def test_snapshot_is_stable_within_and_across_sessions(backend: Backend) -> None:
    """Repeated snapshots and later sessions give the same keys, UIDs, sizes and order."""
    for data in SAMPLES:
        backend.add(data)
    maildrop, messages = open_session(backend)
    assert maildrop.snapshot() == messages
    maildrop.unlock()
    again, later = open_session(backend)
    assert later == messages
    again.unlock()


def test_uids_are_valid_and_unique(backend: Backend) -> None:
    """Every UID is 1-70 characters in 0x21-0x7E and unique in the snapshot."""
    for data in SAMPLES * 3:
        backend.add(data)
    maildrop, messages = open_session(backend)
    uids = [m.uid for m in messages]
    assert all(UID_RE.fullmatch(uid) for uid in uids)
    assert len(set(uids)) == len(uids) == 15
    maildrop.unlock()


def test_commit_removes_exactly_the_marked(backend: Backend) -> None:
    """Only deleted messages go; the rest keep their UIDs in the next session."""
    for data in SAMPLES:
        backend.add(data)
    maildrop, messages = open_session(backend)
    result = maildrop.commit(deleted=[messages[1], messages[3]], retrieved=messages[:3])
    maildrop.unlock()
    assert (result.removed, result.not_removed, result.remaining) == (2, 0, 3)
    assert backend.stored() == sorted([SAMPLES[0], SAMPLES[2], SAMPLES[4]])
    after, remaining = open_session(backend)
    assert [m.uid for m in remaining] == [messages[i].uid for i in (0, 2, 4)]
    assert [read(after, m) for m in remaining] == [SAMPLES[i] for i in (0, 2, 4)]


def test_mail_delivered_after_snapshot_survives_commit(backend: Backend) -> None:
    """A commit deleting everything it saw leaves mail that arrived after its snapshot."""
    backend.add(b"old\n")
    maildrop, messages = open_session(backend)
    backend.add(b"arrived during the session\n")
    result = maildrop.commit(deleted=messages, retrieved=messages)
    maildrop.unlock()
    assert (result.removed, result.remaining) == (1, 0)
    assert backend.stored() == [b"arrived during the session\n"]
    later, listed = open_session(backend)
    assert [read(later, m) for m in listed] == [b"arrived during the session\n"]


def test_nothing_is_removed_without_commit(backend: Backend) -> None:
    """A session that ends without commit removes nothing."""
    for data in SAMPLES:
        backend.add(data)
    maildrop, messages = open_session(backend)
    for message in messages:
        read(maildrop, message)
    maildrop.unlock()
    assert backend.stored() == sorted(SAMPLES)


def test_message_gone_behind_our_back(backend: Backend) -> None:
    """A vanished message raises MessageVanishedError on open and counts as removed."""
    backend.add(b"one\n")
    backend.add(b"two\n")
    maildrop, messages = open_session(backend)
    backend.remove_externally(messages[0])
    with pytest.raises(MessageVanishedError):
        maildrop.open(messages[0])
    result = maildrop.commit(deleted=messages, retrieved=[])
    assert (result.removed, result.not_removed, result.remaining) == (2, 0, 0)
    assert backend.stored() == []


def test_foreign_message_is_refused(backend: Backend) -> None:
    """A message that is not in this session's snapshot cannot be opened or deleted."""
    backend.add(b"one\n")
    _, messages = open_session(backend)
    other = backend.session()
    other.snapshot()
    forged = StoredMessage(key=messages[0].key, uid="forged", size=1)
    with pytest.raises(ValueError):
        other.open(forged)
    with pytest.raises(ValueError):
        other.commit(deleted=[forged], retrieved=[])
    assert backend.stored() == [b"one\n"]


# -- randomized sessions -------------------------------------------------------------------

_messages = st.binary(max_size=40) | st.sampled_from(SAMPLES)
_session = st.fixed_dictionaries(
    {
        "dele": st.lists(st.integers(0, 30), max_size=6),
        "retr": st.lists(st.integers(0, 30), max_size=6),
        "quit": st.booleans(),
        "arrives": st.none() | _messages,
    }
)
_operations = st.lists(st.tuples(st.just("deliver"), _messages) | _session, max_size=8)


@pytest.fixture
def scratch() -> Iterator[Callable[[], Path]]:
    """Fresh directories inside one temporary directory, one per Hypothesis example."""
    with tempfile.TemporaryDirectory() as top:
        counter = itertools.count()
        yield lambda: Path(top) / f"example{next(counter)}"


@pytest.mark.parametrize("kind", sorted(BACKENDS))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=_operations)
def test_random_sessions_keep_the_model(
    kind: str, scratch: Callable[[], Path], operations: list[object]
) -> None:
    """Any sequence of deliveries and sessions (DELE, RETR, QUIT or not) matches a list model.

    The model is the list of (bytes, UID once seen) in delivery order: a snapshot lists it
    exactly, with exact sizes and unchanged UIDs; a commit removes just the marked ones.
    """
    backend = BACKENDS[kind](scratch())
    model: list[tuple[bytes, str | None]] = []
    for op in operations:
        if isinstance(op, tuple):
            backend.add(op[1])
            model.append((op[1], None))
            continue
        assert isinstance(op, dict)
        maildrop, messages = open_session(backend)
        assert [read(maildrop, m) for m in messages] == [data for data, _ in model]
        assert [m.size for m in messages] == [wire_size(data) for data, _ in model]
        for message, (_, uid) in zip(messages, model, strict=True):
            assert uid in (None, message.uid)
            assert UID_RE.fullmatch(message.uid)
        assert len({m.uid for m in messages}) == len(messages)
        model = [(data, m.uid) for (data, _), m in zip(model, messages, strict=True)]
        if op["arrives"] is not None:
            backend.add(op["arrives"])
        deleted = {messages[i % len(messages)].key for i in op["dele"]} if messages else set()
        retrieved = [messages[i % len(messages)] for i in op["retr"]] if messages else []
        if op["quit"]:
            result = maildrop.commit(
                deleted=[m for m in messages if m.key in deleted], retrieved=retrieved
            )
            assert (result.removed, result.not_removed) == (len(deleted), 0)
            assert result.remaining == len(messages) - len(deleted)
            model = [
                entry for entry, m in zip(model, messages, strict=True) if m.key not in deleted
            ]
        maildrop.unlock()
        if op["arrives"] is not None:
            model.append((op["arrives"], None))
    assert backend.stored() == sorted(data for data, _ in model)
