"""Tests for VerifiedPasswords: what it remembers, for how long, and what it forgets."""

from __future__ import annotations

import pytest

from postoffice.auth.base import UserRecord
from postoffice.auth.verified_cache import VerifiedPasswords
from postoffice.secret import Secret

ALICE = UserRecord(name="alice", password_hash="{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$a$b")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_remembered_password_is_known_and_no_other() -> None:
    cache = VerifiedPasswords(60, 10)
    assert not cache.knows(ALICE, Secret("right"))
    cache.remember(ALICE, Secret("right"))
    assert cache.knows(ALICE, Secret("right"))
    assert not cache.knows(ALICE, Secret("wrong"))
    assert not cache.knows(ALICE, Secret("right "))


def test_a_changed_stored_hash_or_another_user_finds_nothing() -> None:
    cache = VerifiedPasswords(60, 10)
    cache.remember(ALICE, Secret("right"))
    changed = UserRecord(name="alice", password_hash=ALICE.password_hash + "x")
    assert not cache.knows(changed, Secret("right"))
    bob = UserRecord(name="bob", password_hash=ALICE.password_hash)
    assert not cache.knows(bob, Secret("right"))


def test_an_entry_expires_after_the_ttl_and_is_dropped() -> None:
    clock = Clock()
    cache = VerifiedPasswords(60, 10, clock=clock)
    cache.remember(ALICE, Secret("right"))
    clock.now += 59.9
    assert cache.knows(ALICE, Secret("right"))
    clock.now += 0.1
    assert not cache.knows(ALICE, Secret("right"))
    assert len(cache) == 0


def test_verifying_again_restarts_the_ttl() -> None:
    clock = Clock()
    cache = VerifiedPasswords(60, 10, clock=clock)
    cache.remember(ALICE, Secret("right"))
    clock.now += 50
    cache.remember(ALICE, Secret("right"))
    clock.now += 50
    assert cache.knows(ALICE, Secret("right"))


def test_the_oldest_verification_goes_first_when_full() -> None:
    cache = VerifiedPasswords(60, 2)
    users = [UserRecord(name=f"u{n}", password_hash="{BLF-CRYPT}$2b$x") for n in range(3)]
    cache.remember(users[0], Secret("p"))
    cache.remember(users[1], Secret("p"))
    cache.remember(users[0], Secret("p"))  # now the newest
    cache.remember(users[2], Secret("p"))
    assert len(cache) == 2
    assert cache.knows(users[0], Secret("p"))
    assert not cache.knows(users[1], Secret("p"))
    assert cache.knows(users[2], Secret("p"))


def test_the_key_is_per_cache_so_a_digest_means_nothing_elsewhere() -> None:
    first, second = VerifiedPasswords(60, 10), VerifiedPasswords(60, 10)
    first.remember(ALICE, Secret("right"))
    second.remember(ALICE, Secret("right"))
    assert first._entries != second._entries


@pytest.mark.parametrize(("ttl", "entries"), [(0, 10), (-1, 10), (60, 0)])
def test_a_cache_needs_a_ttl_and_room(ttl: float, entries: int) -> None:
    with pytest.raises(ValueError, match="positive ttl"):
        VerifiedPasswords(ttl, entries)


def test_what_is_remembered_is_told_and_what_is_told_is_learnt() -> None:
    clock = Clock()
    told: list[tuple[str, str, bytes, float]] = []
    here = VerifiedPasswords(60, 10, clock=clock)
    here.on_remember = lambda *news: told.append(news)
    here.remember(ALICE, Secret("right"))
    [(name, stored, digest, expires)] = told
    assert (name, stored, expires) == ("alice", ALICE.password_hash, clock.now + 60)
    there = VerifiedPasswords(60, 10, clock=clock)
    there._key = here._key  # as after a fork
    there.learn(name, stored, digest, expires)
    assert there.knows(ALICE, Secret("right"))
    assert not there.knows(ALICE, Secret("wrong"))


def test_news_expired_malformed_or_too_long_lived_is_bounded() -> None:
    clock = Clock()
    cache = VerifiedPasswords(60, 10, clock=clock)
    digest = b"\0" * 32
    cache.learn("alice", ALICE.password_hash, digest, clock.now)  # already expired
    cache.learn("alice", ALICE.password_hash, b"short", clock.now + 30)
    assert len(cache) == 0
    cache.learn("alice", ALICE.password_hash, digest, clock.now + 10_000)
    assert cache._entries[("alice", ALICE.password_hash)][1] == clock.now + 60
