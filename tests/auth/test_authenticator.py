"""Tests for the Authenticator: right, wrong and unknown logins, APOP, and the thread pool."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from postoffice.auth.authenticator import Authenticator, apop_digest
from postoffice.auth.base import NOT_CURRENT, UserRecord
from postoffice.auth.passwd_file import PasswdFile
from postoffice.auth.schemes import DUMMY_HASH, hash_password
from postoffice.auth.verified_cache import VerifiedPasswords
from postoffice.errors import PasswdFileError
from postoffice.secret import Secret

# Cheap Argon2 parameters: these tests check behaviour, not cost.
ALICE_HASH = hash_password(Secret("alice pässword"), rounds=1, memory_kib=1024)


class FakeDatabase:
    """A UserDatabase in a dict that remembers which names were looked up, and by which thread."""

    def __init__(self, *records: UserRecord) -> None:
        self.records = {record.name: record for record in records}
        self.looked_up: list[str] = []
        self.threads: set[int] = set()
        self._lock = threading.Lock()

    def lookup(self, name: str) -> UserRecord | None:
        with self._lock:
            self.looked_up.append(name)
            self.threads.add(threading.get_ident())
        return self.records.get(name)


class BrokenDatabase:
    def lookup(self, name: str) -> UserRecord | None:
        raise PasswdFileError("cannot read passwd-file /nowhere: Permission denied")


@pytest.fixture
def database() -> FakeDatabase:
    return FakeDatabase(
        UserRecord(name="alice", password_hash=ALICE_HASH, home="/home/alice"),
        UserRecord(name="plain", password_hash="{PLAIN}tanstaaf"),
        UserRecord(name="odd", password_hash="{CRAM-MD5}00ff"),
    )


@pytest.fixture
def auth(database: FakeDatabase) -> Iterator[Authenticator]:
    authenticator = Authenticator(database, max_concurrent_hashes=2)
    yield authenticator
    authenticator.close()


async def test_right_password_returns_the_record(auth: Authenticator) -> None:
    """The right password gives the user's record."""
    record = await auth.verify("alice", Secret("alice pässword"))
    assert record is not None
    assert record.home == "/home/alice"


async def test_wrong_password_returns_none(auth: Authenticator) -> None:
    """A wrong password gives None."""
    assert await auth.verify("alice", Secret("alice password")) is None


async def test_unknown_user_spends_a_dummy_check(
    auth: Authenticator, checked_hashes: list[str]
) -> None:
    """An unknown user gives None after verifying against DUMMY_HASH."""
    assert await auth.verify("bob", Secret("alice pässword")) is None
    assert checked_hashes == [DUMMY_HASH]


@pytest.mark.parametrize("name", ["../alice", "", "al ice", "alice\0", "ålice"])
async def test_invalid_name_spends_a_dummy_check_without_lookup(
    auth: Authenticator, database: FakeDatabase, checked_hashes: list[str], name: str
) -> None:
    """A name outside the allow-list never reaches the database but costs the same work."""
    assert await auth.verify(name, Secret("alice pässword")) is None
    assert database.looked_up == []
    assert checked_hashes == [DUMMY_HASH]


async def test_unknown_scheme_fails_closed_and_warns(
    auth: Authenticator, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored hash in an unknown scheme refuses the login and names the user in a warning."""
    caplog.set_level(logging.WARNING, logger="postoffice.auth.authenticator")
    assert await auth.verify("odd", Secret("pw-never-logged")) is None
    assert "odd" in caplog.text
    assert "pw-never-logged" not in caplog.text
    assert "00ff" not in caplog.text


async def test_weak_scheme_logs_in_without_a_line_per_login(
    auth: Authenticator, caplog: pytest.LogCaptureFixture
) -> None:
    """A plaintext stored password works; the passwd-file counts weak schemes when it is
    read (test_passwd_file.py), so logins log nothing about it."""
    caplog.set_level(logging.WARNING, logger="postoffice.auth.authenticator")
    assert await auth.verify("plain", Secret("tanstaaf")) is not None
    assert await auth.verify("plain", Secret("wrong")) is None
    assert "weak" not in caplog.text
    assert "tanstaaf" not in caplog.text


async def test_database_errors_propagate() -> None:
    """An unreadable database is an error, not a wrong password."""
    auth = Authenticator(BrokenDatabase())
    try:
        with pytest.raises(PasswdFileError):
            await auth.verify("alice", Secret("x"))
    finally:
        auth.close()


async def test_concurrent_logins_queue_without_blocking_the_event_loop() -> None:
    """20 concurrent checks with 2 hash threads: the loop keeps ticking, 2 threads do the work."""
    stored = hash_password(Secret("pw"), rounds=2, memory_kib=16384)
    names = [f"user{n}" for n in range(20)]
    database = FakeDatabase(*(UserRecord(name=n, password_hash=stored) for n in names))
    auth = Authenticator(database, max_concurrent_hashes=2)
    ticks: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.002)

    try:
        ticker_task = asyncio.create_task(ticker())
        await asyncio.sleep(0)  # let the ticker take its first tick
        started = time.perf_counter()
        results = await asyncio.gather(
            *(auth.verify(n, Secret("pw" if i % 2 == 0 else "no")) for i, n in enumerate(names))
        )
        elapsed = time.perf_counter() - started
        done.set()
        await ticker_task
    finally:
        auth.close()

    assert [r is not None for r in results] == [i % 2 == 0 for i in range(20)]
    assert len(database.threads) <= 2
    assert threading.get_ident() not in database.threads
    # Had the hashes run on the loop, the ticker could tick only between two of them (about
    # 20 ticks); off the loop it ticks all along, several times per hash.
    assert len(ticks) >= 3 * len(names)
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < elapsed / 2


async def test_given_executor_is_used_and_left_open(database: FakeDatabase) -> None:
    """A caller's executor does the work and is not shut down by close()."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="callers") as executor:
        auth = Authenticator(database, executor=executor)
        assert await auth.verify("alice", Secret("alice pässword")) is not None
        auth.close()
        assert executor.submit(lambda: 42).result() == 42


async def test_close_stops_further_checks(database: FakeDatabase) -> None:
    """After close() the private pool refuses work."""
    auth = Authenticator(database)
    auth.close()
    with pytest.raises(RuntimeError):
        await auth.verify("alice", Secret("alice pässword"))


def test_max_concurrent_hashes_must_be_positive(database: FakeDatabase) -> None:
    """A pool of zero threads is a configuration mistake."""
    with pytest.raises(ValueError, match="at least 1"):
        Authenticator(database, max_concurrent_hashes=0)


# --- APOP --------------------------------------------------------------------------------

RFC_TIMESTAMP = "<1896.697170952@dbc.mtview.ca.us>"
RFC_DIGEST = "c4c9334bac560ecc979e58001b3e22fb"


def test_apop_digest_matches_rfc_1939_example() -> None:
    """The RFC 1939 section 7 example digest is reproduced."""
    assert apop_digest(RFC_TIMESTAMP, Secret("tanstaaf")) == RFC_DIGEST


async def test_apop_right_digest(auth: Authenticator) -> None:
    """APOP with the right digest (any hex case) gives the record of a plaintext user."""
    assert await auth.verify_apop("plain", RFC_TIMESTAMP, RFC_DIGEST) is not None
    assert await auth.verify_apop("plain", RFC_TIMESTAMP, RFC_DIGEST.upper()) is not None


@pytest.mark.parametrize(
    ("name", "timestamp", "digest"),
    [
        ("plain", RFC_TIMESTAMP, "0" * 32),
        ("plain", "<other@host>", RFC_DIGEST),
        ("plain", RFC_TIMESTAMP, RFC_DIGEST[:-1]),
        ("plain", RFC_TIMESTAMP, RFC_DIGEST + "0"),
        ("plain", RFC_TIMESTAMP, "z" * 32),
        ("alice", RFC_TIMESTAMP, apop_digest(RFC_TIMESTAMP, Secret("alice pässword"))),
        ("nobody", RFC_TIMESTAMP, RFC_DIGEST),
        ("../plain", RFC_TIMESTAMP, RFC_DIGEST),
        ("odd", RFC_TIMESTAMP, RFC_DIGEST),
    ],
)
async def test_apop_refused(auth: Authenticator, name: str, timestamp: str, digest: str) -> None:
    """Wrong digests, unknown users and users without a plaintext password cannot use APOP."""
    assert await auth.verify_apop(name, timestamp, digest) is None


# -- verify_now: the cheap verdict on the event loop ---------------------------------------


def _passwd_file(tmp_path: Path, lines: list[str]) -> PasswdFile:
    path = tmp_path / "passwd"
    path.write_text("".join(line + "\n" for line in lines))
    old = time.time() - 10  # not "racily clean": a stat can tell it is unchanged
    os.utime(path, (old, old))
    return PasswdFile(path)


def test_typical_hash_is_a_hash_in_the_most_common_scheme(tmp_path: Path) -> None:
    database = _passwd_file(
        tmp_path,
        ["a:{PLAIN}one", f"b:{ALICE_HASH}", "c:{PLAIN}three", "d:{SSHA256}x"],
    )
    assert database.typical_hash is None  # nothing read yet
    database.lookup("a")
    assert database.typical_hash == "{PLAIN}one"


def test_verify_now_gives_the_verdict_for_cheap_schemes(tmp_path: Path) -> None:
    database = _passwd_file(tmp_path, ["a:{PLAIN}one", "b:{PLAIN}two", f"c:{ALICE_HASH}"])
    authenticator = Authenticator(database)
    try:
        assert authenticator.verify_now("a", Secret("one")) is NOT_CURRENT  # never read
        database.lookup("a")
        record = authenticator.verify_now("a", Secret("one"))
        assert isinstance(record, UserRecord) and record.name == "a"
        assert authenticator.verify_now("a", Secret("two")) is None
        assert authenticator.verify_now("nobody", Secret("one")) is None
        assert authenticator.verify_now("bad name\r", Secret("one")) is None
        # A user in an expensive scheme goes to the thread pool.
        assert authenticator.verify_now("c", Secret("alice pässword")) is NOT_CURRENT
    finally:
        authenticator.close()


def test_verify_now_defers_when_the_file_changed(tmp_path: Path) -> None:
    database = _passwd_file(tmp_path, ["a:{PLAIN}one"])
    authenticator = Authenticator(database)
    try:
        database.lookup("a")
        assert isinstance(authenticator.verify_now("a", Secret("one")), UserRecord)
        (tmp_path / "passwd").write_text("a:{PLAIN}new\n")
        assert authenticator.verify_now("a", Secret("one")) is NOT_CURRENT
        # The thread path reads the new file; afterwards it is current again.
        assert asyncio.run(authenticator.verify("a", Secret("new"))) is not None
        old = time.time() - 10
        os.utime(tmp_path / "passwd", (old, old))
        database.lookup("a")
        assert isinstance(authenticator.verify_now("a", Secret("new")), UserRecord)
    finally:
        authenticator.close()


def test_verify_now_defers_when_the_typical_scheme_is_expensive(tmp_path: Path) -> None:
    """Unknown names cost what the file's usual scheme costs: no shortcut for them."""
    database = _passwd_file(tmp_path, ["a:{PLAIN}one", f"b:{ALICE_HASH}", f"c:{ALICE_HASH}"])
    authenticator = Authenticator(database)
    try:
        database.lookup("a")
        assert authenticator.verify_now("nobody", Secret("x")) is NOT_CURRENT
        assert authenticator.verify_now("a", Secret("one")) is NOT_CURRENT
    finally:
        authenticator.close()


def test_unknown_names_are_checked_against_the_typical_hash(
    tmp_path: Path, checked_hashes: list[str]
) -> None:
    database = _passwd_file(tmp_path, [f"b:{ALICE_HASH}", f"c:{ALICE_HASH}"])
    authenticator = Authenticator(database)
    try:
        assert asyncio.run(authenticator.verify("nobody", Secret("x"))) is None
    finally:
        authenticator.close()
    assert checked_hashes == [ALICE_HASH]


def test_a_verified_expensive_password_is_not_hashed_again(
    tmp_path: Path, checked_hashes: list[str]
) -> None:
    database = _passwd_file(tmp_path, [f"c:{ALICE_HASH}", f"d:{ALICE_HASH}"])
    authenticator = Authenticator(database, verified=VerifiedPasswords(3600, 100))
    try:
        assert authenticator.verify_now("c", Secret("alice pässword")) is NOT_CURRENT
        assert asyncio.run(authenticator.verify("c", Secret("alice pässword"))) is not None
        assert checked_hashes == [ALICE_HASH]
        # On the event loop, without a thread or a hash.
        record = authenticator.verify_now("c", Secret("alice pässword"))
        assert isinstance(record, UserRecord) and record.name == "c"
        assert asyncio.run(authenticator.verify("c", Secret("alice pässword"))) is not None
        assert checked_hashes == [ALICE_HASH]
        # A wrong password, another user, an unknown name: the full check, as before.
        assert authenticator.verify_now("c", Secret("wrong")) is NOT_CURRENT
        assert asyncio.run(authenticator.verify("c", Secret("wrong"))) is None
        assert authenticator.verify_now("d", Secret("alice pässword")) is NOT_CURRENT
        assert authenticator.verify_now("nobody", Secret("alice pässword")) is NOT_CURRENT
        assert asyncio.run(authenticator.verify("nobody", Secret("x"))) is None
        assert checked_hashes == [ALICE_HASH] * 3
    finally:
        authenticator.close()


def test_a_changed_password_is_checked_again_at_once(
    tmp_path: Path, checked_hashes: list[str]
) -> None:
    database = _passwd_file(tmp_path, [f"c:{ALICE_HASH}"])
    authenticator = Authenticator(database, verified=VerifiedPasswords(3600, 100))
    try:
        assert asyncio.run(authenticator.verify("c", Secret("alice pässword"))) is not None
        new_hash = hash_password(Secret("new"), rounds=1, memory_kib=1024)
        (tmp_path / "passwd").write_text(f"c:{new_hash}\n")
        assert authenticator.verify_now("c", Secret("alice pässword")) is NOT_CURRENT
        assert asyncio.run(authenticator.verify("c", Secret("alice pässword"))) is None
        assert asyncio.run(authenticator.verify("c", Secret("new"))) is not None
        assert checked_hashes == [ALICE_HASH, new_hash, new_hash]
    finally:
        authenticator.close()


def test_cheap_schemes_are_not_remembered(tmp_path: Path) -> None:
    database = _passwd_file(tmp_path, ["a:{PLAIN}one", f"c:{ALICE_HASH}"])
    verified = VerifiedPasswords(3600, 100)
    authenticator = Authenticator(database, verified=verified)
    try:
        assert asyncio.run(authenticator.verify("a", Secret("one"))) is not None
        assert len(verified) == 0
    finally:
        authenticator.close()
