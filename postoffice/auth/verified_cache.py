"""Passwords recently verified against an expensive hash, so a client that polls every few
minutes does not pay an Argon2 or bcrypt check at each login.

Theory of operation
-------------------
POP3 clients log in for every poll. With the default Argon2id parameters (64 MiB, three
passes) a check costs about a fifth of a second of CPU on a small machine, so a few hundred
polling users keep a core busy with the same checks. After a check against an expensive
scheme succeeds, the cache keeps an HMAC-SHA256 of the password under a key made at random
when the cache is made (never written anywhere), for ``ttl`` seconds. A later login whose
password gives the same HMAC is accepted without the expensive check.

What keeps it safe:

- The entry is keyed by the user's name *and stored hash*: a password changed in the
  passwd-file (or a user removed from it) finds no entry, at once.
- Only successes are kept. A password that does not match an entry is checked the slow way,
  so guessing costs what it costs without the cache; the throttle sees every failure.
- Cheap schemes (plaintext, one digest) are never kept: checking them costs less.
- Bounded: at most ``max_entries`` users, the oldest dropped first; an expired entry is
  dropped when met.

Dovecot's authentication cache does the same with a SHA1 of the password
(``auth_cache_ttl``); here the digest is keyed, so a copy of the cache alone is of no use
for guessing.

Worker processes share the key (the cache is made before they are forked) and tell each
other of what they verify (``on_remember``, carried by ``server/index_news.py``), so a
user's next login finds the entry whichever worker the kernel hands it to.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable

from postoffice.auth.base import UserRecord
from postoffice.secret import Secret

__all__ = ["DIGEST_OCTETS", "VerifiedPasswords"]

DIGEST_OCTETS = 32
"""An HMAC-SHA256."""


class VerifiedPasswords:
    """Users whose password was verified against an expensive hash in the last ``ttl`` s."""

    __slots__ = ("_clock", "_entries", "_key", "_lock", "max_entries", "on_remember", "ttl")

    def __init__(
        self,
        ttl: float,
        max_entries: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("a cache needs a positive ttl and room for one entry")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._key = secrets.token_bytes(32)
        # (name, stored hash) -> (HMAC of the password, when it expires); insertion order is
        # the order of the last verification, so the first entry is the oldest.
        self._entries: dict[tuple[str, str], tuple[bytes, float]] = {}
        self._lock = threading.Lock()  # remembered in the hashing threads, read on the loop
        self.on_remember: Callable[[str, str, bytes, float], None] | None = None
        """Called with (name, stored hash, digest, expiry) after each ``remember`` (from the
        thread that verified), to tell other processes that share the key."""

    def __len__(self) -> int:
        return len(self._entries)

    def _digest(self, password: Secret) -> bytes:
        data = password.reveal().encode("utf-8", "surrogateescape")
        return hmac.digest(self._key, data, "sha256")

    def knows(self, record: UserRecord, password: Secret) -> bool:
        """Whether ``password`` is the one verified for ``record`` less than ``ttl`` ago."""
        key = (record.name, record.password_hash)
        entry = self._entries.get(key)
        if entry is None:
            return False
        digest, expires = entry
        if self._clock() >= expires:
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
            return False
        return hmac.compare_digest(digest, self._digest(password))

    def remember(self, record: UserRecord, password: Secret) -> None:
        """``password`` was just verified for ``record`` against its stored hash."""
        digest, expires = self._digest(password), self._clock() + self.ttl
        self._store(record.name, record.password_hash, digest, expires)
        tell = self.on_remember
        if tell is not None:
            tell(record.name, record.password_hash, digest, expires)

    def learn(self, name: str, stored_hash: str, digest: bytes, expires: float) -> None:
        """What another process sharing the key verified (``on_remember`` there). The
        expiry is on the same clock: ``time.monotonic`` is the system's, not a process's."""
        if len(digest) == DIGEST_OCTETS and expires > self._clock():
            self._store(name, stored_hash, digest, min(expires, self._clock() + self.ttl))

    def _store(self, name: str, stored_hash: str, digest: bytes, expires: float) -> None:
        key = (name, stored_hash)
        with self._lock:
            entries = self._entries
            entries.pop(key, None)  # re-inserted last: the newest
            entries[key] = (digest, expires)
            while len(entries) > self.max_entries:
                del entries[next(iter(entries))]
