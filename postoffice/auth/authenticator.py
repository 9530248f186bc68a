"""Checks a user name and password against the user database, off the event loop.

Theory of operation: a password hash (Argon2, bcrypt) costs tens to hundreds of
milliseconds of CPU, so each check runs in a small dedicated thread pool; a burst of logins
queues there while the event loop keeps serving sessions. The database lookup runs in the
same job, since a passwd-file reload reads the disk. An invalid or unknown name is checked
against a hash in the database's most common scheme (``typical_hash``; DUMMY_HASH when the
database has none) so that the reply takes as long as for a typical user: timing does not
tell an attacker which names exist.

``verify_now`` gives the same verdict without the trip to a thread when that is cheap: the
database answers from memory (its file unchanged) and either both the user's scheme and the
typical scheme are plaintext or a single digest (microseconds), or the password is the one
verified for this user and stored hash a short while ago (``verified_cache.py``).
Otherwise it says ``NOT_CURRENT`` and the caller uses ``verify``. This module logs user
names only after they passed the allow-list, and never a password.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
from concurrent.futures import Executor, ThreadPoolExecutor

from postoffice.auth.base import (
    NOT_CURRENT,
    CachedUserDatabase,
    NotCurrent,
    UserDatabase,
    UserRecord,
)
from postoffice.auth.schemes import (
    dummy_hash,
    is_cheap_scheme,
    plaintext_password,
    verify_password,
)
from postoffice.auth.usernames import validate_username
from postoffice.auth.verified_cache import VerifiedPasswords
from postoffice.errors import InvalidUsernameError, UnknownSchemeError
from postoffice.secret import Secret

_log = logging.getLogger(__name__)

_APOP_DIGEST = re.compile(r"[0-9a-fA-F]{32}")


def _burn(database: CachedUserDatabase | None, password: Secret) -> None:
    """Spend the work of a typical check, for names that have no password to check."""
    typical = database.typical_hash if database is not None else None
    with contextlib.suppress(UnknownSchemeError):  # a malformed hash still cost its parse
        verify_password(typical or dummy_hash(), password)


def apop_digest(timestamp: str, password: Secret) -> str:
    """RFC 1939 section 7: lower-case hex MD5 of the greeting timestamp and the password."""
    data = (timestamp + password.reveal()).encode("utf-8", "surrogateescape")
    return hashlib.md5(data, usedforsecurity=False).hexdigest()  # APOP is MD5 by definition


class Authenticator:
    """Verifies logins against a UserDatabase in a bounded thread pool.

    ``executor``, if given, is used instead of a private pool and is not shut down by
    ``close``. Database errors (AuthError, e.g. an unreadable passwd-file) propagate: the
    caller answers with a temporary failure rather than "wrong password".
    """

    def __init__(
        self,
        database: UserDatabase,
        *,
        max_concurrent_hashes: int = 4,
        executor: Executor | None = None,
        verified: VerifiedPasswords | None = None,
    ) -> None:
        """``verified``: where passwords checked against an expensive hash are remembered
        (None: every login pays the full check)."""
        if max_concurrent_hashes < 1:
            raise ValueError("max_concurrent_hashes must be at least 1")
        self._database = database
        self._owns_executor = executor is None
        self._executor: Executor = executor or ThreadPoolExecutor(
            max_workers=max_concurrent_hashes, thread_name_prefix="postoffice-auth"
        )
        # Checked once: isinstance against a runtime Protocol is slow on a hot path.
        self._cached = database if isinstance(database, CachedUserDatabase) else None
        self._verified = verified

    async def verify(self, username: str, password: Secret) -> UserRecord | None:
        """The user's record if ``password`` is right, else None (same work either way)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._verify, username, password)

    def verify_now(self, username: str, password: Secret) -> UserRecord | NotCurrent | None:
        """``verify``'s verdict if it is cheap to reach on the event loop, else
        ``NOT_CURRENT`` (see the module docstring)."""
        database = self._cached
        if database is None:
            return NOT_CURRENT
        typical = database.typical_hash
        cheap = typical is not None and is_cheap_scheme(typical)
        verified = self._verified
        if not cheap and (verified is None or not len(verified)):
            return NOT_CURRENT
        try:
            validate_username(username)
        except InvalidUsernameError:
            record = None
        else:
            found = database.lookup_if_current(username)
            if isinstance(found, NotCurrent):
                return NOT_CURRENT
            record = found
        if record is not None and not is_cheap_scheme(record.password_hash):
            # Only expensive schemes are ever remembered: a cheap one is checked below.
            if verified is not None and verified.knows(record, password):
                return record
            return NOT_CURRENT
        if not cheap:
            return NOT_CURRENT
        return self._check(record, password)

    async def verify_apop(self, username: str, timestamp: str, digest: str) -> UserRecord | None:
        """The user's record if ``digest`` is the APOP digest of ``timestamp`` and the
        password, else None. Only users with a plaintext stored password can use APOP."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._verify_apop, username, timestamp, digest
        )

    async def lookup(self, username: str) -> UserRecord | None:
        """The user's record without any password check (SCRAM, bearer tokens)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._lookup, username)

    def close(self) -> None:
        """Shut the private thread pool down; queued checks are cancelled."""
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # The methods below run in the executor's threads.

    def _lookup(self, username: str) -> UserRecord | None:
        try:
            validate_username(username)
        except InvalidUsernameError:
            return None
        return self._database.lookup(username)

    def _verify(self, username: str, password: Secret) -> UserRecord | None:
        return self._check(self._lookup(username), password, verified=self._verified)

    def _check(
        self,
        record: UserRecord | None,
        password: Secret,
        *,
        verified: VerifiedPasswords | None = None,
    ) -> UserRecord | None:
        """The verdict; ``verified``: the cache to consult and fill (``verify_now`` passes
        none: it asked the cache already, or the scheme is cheap)."""
        if record is None:
            _burn(self._cached, password)
            return None
        if verified is not None and is_cheap_scheme(record.password_hash):
            verified = None  # never remembered: checking costs less than the cache
        if verified is not None and verified.knows(record, password):
            return record
        try:
            ok = verify_password(record.password_hash, password)
        except UnknownSchemeError as exc:
            _log.warning("user %s cannot log in: %s", record.name, exc)
            _burn(self._cached, password)
            return None
        if not ok:
            return None
        if verified is not None:
            verified.remember(record, password)
        return record

    def _verify_apop(self, username: str, timestamp: str, digest: str) -> UserRecord | None:
        record = self._lookup(username)
        plain = plaintext_password(record.password_hash) if record is not None else None
        # Compute a digest even without a password, so timing says nothing about the user.
        expected = apop_digest(timestamp, plain or Secret(secrets.token_hex(16)))
        if not _APOP_DIGEST.fullmatch(digest):
            return None
        matches = hmac.compare_digest(expected.encode("ascii"), digest.lower().encode("ascii"))
        if record is None:
            return None
        if plain is None:
            _log.info("user %s tried APOP but has no plaintext password", record.name)
            return None
        return record if matches else None
