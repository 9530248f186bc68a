"""What a server mechanism hands its driver, and what the driver hands back.

A server step is an outcome (``Challenge``, ``Success``, ``Failure``) or a request for
credentials (``VerifyPassword``, ``LookupScram``, ``ValidateToken``). Each request takes
exactly the answers listed in its docstring, given to ``ServerMechanism.answer``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from postoffice.secret import Secret

# --- outcomes ------------------------------------------------------------------------------


class FailureReason(enum.Enum):
    """Why an exchange failed. Malformed data is not here: it raises MalformedSaslError."""

    CANCELLED = "cancelled"
    """The client sent ``*`` (RFC 5034 §4), or the driver gave up."""
    BAD_CREDENTIALS = "bad-credentials"
    """Wrong password or proof, or no such user: the three look the same on purpose."""
    AUTHZID_DENIED = "authzid-denied"
    """The client asked to act as another user, and that is not allowed."""
    CHANNEL_BINDING = "channel-binding"
    """SCRAM channel binding: data mismatch, unknown type, or a downgrade (RFC 5802 §6)."""
    INVALID_TOKEN = "invalid-token"  # noqa: S105 - a reason, not a token
    """The bearer token was refused (RFC 7628 §3.2.2)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """Send ``data`` as a challenge (``+ base64``) and give the client's answer to ``receive``."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Success:
    """Authenticated: ``authcid`` proved its credentials and acts as ``identity``."""

    identity: str
    """The user to log in as: the authzid if one was given and allowed, else the authcid."""
    authcid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """The exchange failed; the server answers ``-ERR``."""

    reason: FailureReason


# --- requests ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyPassword:
    """PLAIN, LOGIN: check this password. Answer ``PasswordVerdict``.

    ``authzid`` is empty unless ServerOptions.allow_authzid is set and the client asked to
    act as another user; the verdict must then also say whether ``authcid`` may do that.
    """

    authcid: str
    password: Secret
    authzid: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupScram:
    """SCRAM: give the stored verifier of ``authcid``. Answer ``ScramCredentials`` or
    ``NO_CREDENTIALS`` (no such user, or no SCRAM verifier stored for this hash).

    ``authzid`` is as for VerifyPassword; with NO_CREDENTIALS for a forbidden authzid the
    exchange fails like a wrong password.
    """

    authcid: str
    hash_name: str
    """The hashlib name of the mechanism's hash, e.g. ``sha256`` for SCRAM-SHA-256."""
    authzid: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidateToken:
    """OAUTHBEARER, XOAUTH2: validate this bearer token, for ``user`` if not empty.

    Answer ``TokenAccepted`` with the identity the token proves, or ``TokenRejected``.
    """

    mechanism: str
    user: str
    """The user the client names (OAUTHBEARER's authzid, XOAUTH2's ``user=``); may be empty."""
    token: Secret
    host: str | None = None
    port: int | None = None


# --- answers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PasswordVerdict:
    ok: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ScramCredentials:
    """A SCRAM verifier (RFC 5802 §3): what the server stores instead of the password."""

    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not self.salt or self.iterations < 1 or not self.stored_key or not self.server_key:
            raise ValueError("SCRAM credentials need a salt, iterations >= 1 and both keys")


@dataclass(frozen=True, slots=True, kw_only=True)
class NoCredentials:
    """No such user, or no SCRAM verifier: the exchange goes on with made-up credentials
    and fails at the proof, so that a client cannot tell which users exist."""


NO_CREDENTIALS = NoCredentials()


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenAccepted:
    """The token is valid and proves ``identity``."""

    identity: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRejected:
    """The token is refused; the fields become the RFC 7628 §3.2.2 JSON error challenge."""

    status: str = "invalid_token"
    scope: str | None = None
    openid_configuration: str | None = None


ServerOutcome = Challenge | Success | Failure
ServerRequest = VerifyPassword | LookupScram | ValidateToken
ServerStep = ServerOutcome | ServerRequest
Answer = PasswordVerdict | ScramCredentials | NoCredentials | TokenAccepted | TokenRejected

# Which answers each request takes: a missing pair is the driver's bug.
ANSWERS: dict[type[ServerRequest], tuple[type[Answer], ...]] = {
    VerifyPassword: (PasswordVerdict,),
    LookupScram: (ScramCredentials, NoCredentials),
    ValidateToken: (TokenAccepted, TokenRejected),
}
