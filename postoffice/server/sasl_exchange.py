"""One AUTH exchange on the server: a pure SASL mechanism answered with real credentials.

The pure machine (``postoffice.sasl``) asks for what it cannot know; this module answers
from the user database, under the same failure delay and throttling as USER/PASS. Before
TLS, where plaintext logins are not allowed, a plaintext mechanism still runs to its
password check, which then costs a dummy verification and fails with the policy's reply.
"""

from __future__ import annotations

import secrets

from postoffice.auth.base import UserRecord
from postoffice.proto.replies import err
from postoffice.proto.server import LoginFailure
from postoffice.sasl import (
    ChannelBinding,
    MalformedSaslError,
)
from postoffice.sasl.events import (
    NO_CREDENTIALS,
    Challenge,
    Failure,
    LookupScram,
    PasswordVerdict,
    ServerStep,
    Success,
    TokenAccepted,
    TokenRejected,
    ValidateToken,
    VerifyPassword,
)
from postoffice.sasl.mechanism import ServerMechanism, ServerOptions
from postoffice.sasl.registry import PLAINTEXT_MECHANISMS, server_mechanism
from postoffice.sasl.stored import scram_credentials
from postoffice.server.login import Authorizer

MALFORMED = err("malformed authentication data")

Outcome = bytes | UserRecord
"""A challenge is ``Challenge``; the end is a ``UserRecord`` or a ``LoginFailure`` line."""


class SaslExchange:
    def __init__(
        self,
        authorizer: Authorizer,
        name: str,
        *,
        enabled: tuple[str, ...],
        plaintext_allowed: bool,
        channel_bindings: tuple[ChannelBinding, ...] = (),
    ) -> None:
        self.authorizer = authorizer
        self.name = name
        self.plaintext_allowed = plaintext_allowed or name not in PLAINTEXT_MECHANISMS
        self.mechanism: ServerMechanism = server_mechanism(
            name, ServerOptions(channel_bindings=channel_bindings), enabled=enabled
        )
        self._record: UserRecord | None = None
        self._failure: bytes = LoginFailure.BAD_CREDENTIALS
        self._authcid = ""
        self._judged = False  # the throttle already heard of this attempt

    async def start(self, initial_response: bytes | None) -> Challenge | Outcome:
        try:
            return await self._resolve(self.mechanism.start(initial_response))
        except MalformedSaslError:
            return MALFORMED

    async def receive(self, data: bytes) -> Challenge | Outcome:
        try:
            return await self._resolve(self.mechanism.receive(data))
        except MalformedSaslError:
            return MALFORMED

    async def _validate(self, request: ValidateToken) -> TokenAccepted | TokenRejected:
        authorizer = self.authorizer
        self._authcid = request.user
        await authorizer.wait_penalty()
        validator = authorizer.context.bearer_validator
        if validator is None or not self.plaintext_allowed:
            if validator is not None:
                self._failure = LoginFailure.NOT_ALLOWED
            return TokenRejected()
        identity = await validator.validate(request.token, request.user)
        record = await authorizer.context.authenticator.lookup(identity) if identity else None
        if record is None:
            return TokenRejected()
        self._record = record
        return TokenAccepted(identity=record.name)

    def cancel(self) -> None:
        if not self.mechanism.done:
            self.mechanism.cancel()

    async def _resolve(self, step: ServerStep) -> Challenge | Outcome:
        authorizer = self.authorizer
        while True:
            if isinstance(step, Challenge):
                return step
            if isinstance(step, VerifyPassword):
                self._authcid = step.authcid
                outcome = await authorizer.check_password(
                    step.authcid, step.password, plaintext_allowed=self.plaintext_allowed
                )
                self._judged = True
                if isinstance(outcome, UserRecord):
                    self._record = outcome
                else:
                    self._failure = outcome
                ok = isinstance(outcome, UserRecord) and not step.authzid
                step = self.mechanism.answer(PasswordVerdict(ok=ok))
            elif isinstance(step, LookupScram):
                self._authcid = step.authcid
                await authorizer.wait_penalty()
                record = await authorizer.context.authenticator.lookup(step.authcid)
                credentials = (
                    scram_credentials(record.password_hash, step.hash_name) if record else None
                )
                if record is not None and credentials is not None and not step.authzid:
                    self._record = record
                step = self.mechanism.answer(credentials or NO_CREDENTIALS)
            elif isinstance(step, ValidateToken):
                step = self.mechanism.answer(await self._validate(step))
            elif isinstance(step, Success):
                record = self._record
                if record is None or step.identity != record.name:
                    return LoginFailure.BAD_CREDENTIALS
                authorizer.context.throttle.record_success(authorizer.peer_ip)
                return record
            elif isinstance(step, Failure):
                if not self._judged:
                    # SCRAM proofs differ every time, so a repeat cannot be recognised.
                    authorizer.judged(self._authcid, None, secrets.token_bytes(16))
                return self._failure
            else:  # pragma: no cover - the mechanism returned something new
                raise TypeError(f"unexpected SASL step {step!r}")
