"""Deciding a login: throttling, password checks, plaintext policy, and opening the maildrop.

Every path that refuses a password costs the same: the per-address failure delay first,
then one password-hash verification (against a dummy hash when the user is unknown or
plaintext login is not allowed here), so neither names nor policy can be told apart by
timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from postoffice.auth.base import NotCurrent, UserRecord
from postoffice.config import Config
from postoffice.errors import AuthError, MaildropInUseError, PostofficeError, StorageError
from postoffice.proto.server import LoginFailure
from postoffice.secret import Secret
from postoffice.server.context import ServerContext
from postoffice.storage.base import StoredMessage
from postoffice.storage.maildir import MaildirMaildrop
from postoffice.storage.paths import maildir_path_for

LAST_LOGIN_FILE = "postoffice-last-login"
LOGIN_DELAY_ALLOWANCE = 0.1
"""Share of LOGIN-DELAY forgiven, for clients that poll a little early in bursts."""
_FINGERPRINT_KEY = secrets.token_bytes(32)  # so failed-password fingerprints mean nothing outside


@dataclass(slots=True)
class OpenedMaildrop:
    maildrop: MaildirMaildrop
    messages: Sequence[StoredMessage]


class Authorizer:
    """Login decisions for one session."""

    def __init__(
        self, context: ServerContext, peer_ip: str, log: logging.LoggerAdapter[logging.Logger]
    ) -> None:
        self.context = context
        self.peer_ip = peer_ip
        self.log = log

    async def wait_penalty(self) -> None:
        delay = self.context.throttle.delay_for(self.peer_ip)
        if delay > 0:
            await asyncio.sleep(delay)

    async def check_password(
        self, username: str, password: Secret, *, plaintext_allowed: bool
    ) -> UserRecord | bytes:
        """The user, or the ``LoginFailure`` line to send."""
        await self.wait_penalty()
        if not plaintext_allowed:
            # A random password against the user's own hash (or the dummy one): the work of
            # a wrong password, and the password sent is never checked.
            with contextlib.suppress(AuthError):
                await self._verify(username, Secret(secrets.token_urlsafe(24)))
            self.log.info("plaintext login refused before TLS for %r", username)
            return LoginFailure.NOT_ALLOWED
        try:
            record = await self._verify(username, password)
        except AuthError as error:
            self.log.error("user database unavailable: %s", error)
            return LoginFailure.TEMPORARY
        fingerprint = hashlib.blake2b(
            password.reveal().encode("utf-8", "surrogateescape"), key=_FINGERPRINT_KEY
        ).digest()
        return self.judged(username, record, fingerprint)

    async def _verify(self, username: str, password: Secret) -> UserRecord | None:
        authenticator = self.context.authenticator
        verdict = authenticator.verify_now(username, password)
        if isinstance(verdict, NotCurrent):
            return await authenticator.verify(username, password)
        return verdict

    async def check_apop(self, username: str, timestamp: str, digest: str) -> UserRecord | bytes:
        await self.wait_penalty()
        try:
            record = await self.context.authenticator.verify_apop(username, timestamp, digest)
        except AuthError as error:
            self.log.error("user database unavailable: %s", error)
            return LoginFailure.TEMPORARY
        return self.judged(username, record, digest.encode())

    def judged(
        self, username: str, record: UserRecord | None, fingerprint: bytes
    ) -> UserRecord | bytes:
        """Record a verification's result with the throttle."""
        throttle = self.context.throttle
        if record is None:
            throttle.record_failure(self.peer_ip, username, fingerprint)
            self.log.info("login failed for %r", username)
            return LoginFailure.BAD_CREDENTIALS
        throttle.record_success(self.peer_ip)
        return record

    async def open_maildrop(self, record: UserRecord) -> OpenedMaildrop | bytes:
        """Lock and list the user's maildrop, or the ``LoginFailure`` line to send."""
        config = self.context.config
        places = self.context.maildrop_places
        place = places.get(record)
        if place is None:
            try:
                path = maildir_path_for(config.mail.maildir, data_dir=config.data_dir, user=record)
            except PostofficeError as error:
                self.log.error("no maildrop for %r: %s", record.name, error)
                return LoginFailure.PERMANENT
            if len(places) >= _PLACES_KEPT:
                places.clear()
            place = places[record] = MaildropPlace(path)
        maildrop = MaildirMaildrop(
            place.path,
            flag_updates=not config.mail.no_flag_updates,
            uidl_format=config.mail.uidl_format,
        )
        try:
            if _cheap_to_open(place):
                messages = _lock_and_list(maildrop, config, place)
            else:
                messages = await asyncio.to_thread(_lock_and_list, maildrop, config, place)
        except MaildropInUseError:
            self.log.info("maildrop of %r is in use", record.name)
            return LoginFailure.IN_USE
        except _LoginTooSoon:
            maildrop.unlock()
            return LoginFailure.LOGIN_DELAY
        except (OSError, StorageError) as error:
            maildrop.unlock()
            self.log.error("cannot open maildrop of %r: %s", record.name, error)
            return LoginFailure.TEMPORARY
        return OpenedMaildrop(maildrop=maildrop, messages=messages)


class MaildropPlace:
    """Where a user's maildrop is, and whether it opened quickly last time: kept per user
    record (``ServerContext.maildrop_places``), so a login makes no path."""

    __slots__ = ("opens_quickly", "path")

    def __init__(self, path: str) -> None:
        self.path = path  # a string: a Path with its parts would cost ~400 octets a user
        self.opens_quickly: bool | None = None
        """Whether its last lock and listing took under INLINE_OPEN_SECONDS; None: not
        opened yet."""


_PLACES_KEPT = 100_000


class _LoginTooSoon(Exception):
    """LOGIN-DELAY: the last login to this maildrop was too recent."""


INLINE_OPEN_SECONDS = 0.002
"""A maildrop whose last lock and listing took less than this is opened on the event loop
(a thread trip costs more); after a slow one, in a thread (see ``_cheap_to_open``)."""
SMALL_DIRECTORIES_OCTETS = 16384
"""new/ and cur/ together no larger than this (a few hundred names): cheap the first time."""


def _cheap_to_open(place: MaildropPlace) -> bool:
    """Whether locking and listing the maildrop costs less than a trip to a thread: it did
    last time, or (first time) its new/ and cur/ are small directories. A directory's size
    grows with its entries on every common filesystem, and a stat is cheap."""
    if place.opens_quickly is not None:
        return place.opens_quickly
    path = place.path
    try:
        # String joins: a first login's hot path (a Path per join costs more than the stat).
        size = (
            os.stat(os.path.join(path, "cur")).st_size + os.stat(os.path.join(path, "new")).st_size
        )
    except OSError:
        return False  # to be created, or unreadable: the thread finds out
    return size <= SMALL_DIRECTORIES_OCTETS


def _lock_and_list(
    maildrop: MaildirMaildrop, config: Config, place: MaildropPlace
) -> Sequence[StoredMessage]:
    started = time.perf_counter()
    try:
        return _lock_and_list_now(maildrop, config)
    finally:
        place.opens_quickly = time.perf_counter() - started < INLINE_OPEN_SECONDS


def _lock_and_list_now(maildrop: MaildirMaildrop, config: Config) -> Sequence[StoredMessage]:
    maildrop.lock()
    delay = config.pop3.login_delay
    if delay:
        # The marker lives in the maildrop so every server process sees the same time.
        marker = maildrop.path / LAST_LOGIN_FILE
        now = time.time()
        try:
            last = marker.stat().st_mtime
        except FileNotFoundError:
            last = 0.0
        if now - last < delay * (1 - LOGIN_DELAY_ALLOWANCE):
            raise _LoginTooSoon
        marker.touch()  # its mtime is this login's time
    # A large listing's index is written after the login is answered (the session).
    return maildrop.snapshot(defer_index_write=True)
