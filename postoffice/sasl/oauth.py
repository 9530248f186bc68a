"""OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's older format): bearer tokens.

Neither mechanism judges a token: the server parses the client's message and asks the
caller with ValidateToken. If the caller answers TokenRejected, the server sends the
RFC 7628 §3.2.2 JSON error as a challenge, the client answers (``%x01`` for OAUTHBEARER,
``%x01`` or empty for XOAUTH2), and only then does the exchange fail. A bearer token is as
good as a password to whoever sees it: both mechanisms need TLS (RFC 7628 §5), and the
registry flags them like PLAIN.

::

    OAUTHBEARER  client-resp = gs2-header %x01 *(key "=" value %x01) %x01
                 e.g.  n,a=user@example.com,^Ahost=...^Aport=...^Aauth=Bearer <token>^A^A
    XOAUTH2      user=<user>^Aauth=Bearer <token>^A^A
"""

from __future__ import annotations

import abc
import json
import re
from dataclasses import dataclass

from postoffice.sasl.errors import MalformedSaslError
from postoffice.sasl.events import (
    Answer,
    Challenge,
    Failure,
    FailureReason,
    ServerStep,
    TokenAccepted,
    TokenRejected,
    ValidateToken,
)
from postoffice.sasl.gs2 import make_gs2_header, parse_gs2_header
from postoffice.sasl.mechanism import (
    ClientCredentials,
    ClientMechanism,
    ServerMechanism,
    ServerOptions,
    decode_utf8,
    success,
)
from postoffice.secret import Secret

KVSEP = "\x01"
_KEY = re.compile(r"[A-Za-z]+")  # RFC 7628 §3.1
_VALUE = re.compile(r"[\x21-\x7e \t\r\n]*")
# RFC 7628 §3.1: auth = scheme SP b64token (RFC 6750 §2.1); the scheme is case-insensitive.
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def _pairs(text: str, what: str) -> dict[str, str]:
    """``key=value^A`` pairs, each ended by KVSEP; duplicate keys are malformed."""
    if not text:
        return {}
    if not text.endswith(KVSEP):
        raise MalformedSaslError(f"{what}: a key=value pair is not ended by ^A")
    pairs: dict[str, str] = {}
    for item in text[:-1].split(KVSEP):
        key, equals, value = item.partition("=")
        if not equals or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            raise MalformedSaslError(f"{what}: malformed key=value pair")
        if key in pairs:
            raise MalformedSaslError(f"{what}: duplicate key")
        pairs[key] = value
    return pairs


def _bearer(pairs: dict[str, str], what: str) -> Secret:
    found = _BEARER.fullmatch(pairs.get("auth", ""))
    if found is None:
        raise MalformedSaslError(f"{what}: no 'auth=Bearer <token>'")
    return Secret(found.group(1))


def error_challenge(rejected: TokenRejected) -> bytes:
    """The RFC 7628 §3.2.2 JSON error, e.g. ``{"status":"invalid_token"}``."""
    body = {"status": rejected.status}
    if rejected.scope is not None:
        body["scope"] = rejected.scope
    if rejected.openid_configuration is not None:
        body["openid-configuration"] = rejected.openid_configuration
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


class _TokenServer(ServerMechanism):
    _acknowledgements: tuple[bytes, ...] = (KVSEP.encode(),)

    def __init__(self, options: ServerOptions | None = None) -> None:
        super().__init__(options)
        self._user = ""
        self._rejected = False

    def _start(self, initial_response: bytes | None) -> ServerStep:
        if initial_response is None:
            return Challenge(data=b"")  # RFC 4422 §5: the client speaks first
        return self._receive(initial_response)

    def _receive(self, response: bytes) -> ServerStep:
        if self._rejected:
            # RFC 7628 §3.2.3: the client acknowledges the error with a lone %x01.
            if response not in self._acknowledgements:
                raise MalformedSaslError(f"{self.name}: expected the error acknowledgement")
            return Failure(reason=FailureReason.INVALID_TOKEN)
        request = self._parse(decode_utf8(response, f"{self.name} message"))
        self._user = request.user
        return request

    def _answer(self, answer: Answer) -> ServerStep:
        if isinstance(answer, TokenRejected):
            self._rejected = True
            return Challenge(data=error_challenge(answer))
        assert isinstance(answer, TokenAccepted)
        authzid = "" if self._user == answer.identity else self._user
        if authzid and not self.options.allow_authzid:
            return Failure(reason=FailureReason.AUTHZID_DENIED)
        return success(authzid, answer.identity)

    @abc.abstractmethod
    def _parse(self, text: str) -> ValidateToken: ...


class OAuthBearerServer(_TokenServer):
    """RFC 7628 OAUTHBEARER. Channel binding (flag ``p``) is not part of it (§3.1)."""

    name = "OAUTHBEARER"

    def _parse(self, text: str) -> ValidateToken:
        if text == KVSEP:
            raise MalformedSaslError("OAUTHBEARER: error acknowledgement without an error")
        gs2, rest = parse_gs2_header(text)
        if gs2.flag == "p":
            raise MalformedSaslError("OAUTHBEARER does not do channel binding")
        if not rest.startswith(KVSEP) or not rest.endswith(KVSEP * 2):
            raise MalformedSaslError("OAUTHBEARER: message is not framed by ^A ... ^A^A")
        pairs = _pairs(rest[1:-1], self.name)
        token = _bearer(pairs, self.name)
        port = pairs.get("port")
        if port is not None and (not port.isascii() or not port.isdigit() or len(port) > 5):
            raise MalformedSaslError("OAUTHBEARER: port is not a number")
        return ValidateToken(
            mechanism=self.name,
            user=gs2.authzid,
            token=token,
            host=pairs.get("host"),
            port=int(port) if port is not None else None,
        )


class XOAuth2Server(_TokenServer):
    """Google's XOAUTH2: ``user=...^Aauth=Bearer ...^A^A``. After an error challenge,
    clients answer with an empty response (Google's documentation) or ``%x01``."""

    name = "XOAUTH2"
    _acknowledgements = (b"", KVSEP.encode())

    def _parse(self, text: str) -> ValidateToken:
        if not text.endswith(KVSEP * 2):
            raise MalformedSaslError("XOAUTH2: message does not end with ^A^A")
        pairs = _pairs(text[:-1], self.name)
        user = pairs.get("user", "")
        if not user:
            raise MalformedSaslError("XOAUTH2: no user=")
        return ValidateToken(mechanism=self.name, user=user, token=_bearer(pairs, self.name))


# --- clients -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OAuthError:
    """The server's JSON error challenge (RFC 7628 §3.2.2), as far as it parsed."""

    status: str | None
    scope: str | None = None
    openid_configuration: str | None = None


def parse_error_challenge(data: bytes) -> OAuthError:
    """Read an error challenge leniently: a client answers it whatever it says."""
    try:
        body = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return OAuthError(status=None)
    if not isinstance(body, dict):
        return OAuthError(status=None)

    def text(key: str) -> str | None:
        value = body.get(key)
        return value if isinstance(value, str) else None

    return OAuthError(
        status=text("status"),
        scope=text("scope"),
        openid_configuration=text("openid-configuration"),
    )


class _TokenClient(ClientMechanism):
    _acknowledgement = KVSEP.encode()

    def __init__(self, credentials: ClientCredentials) -> None:
        super().__init__(credentials)
        self.error: OAuthError | None = None
        """The server's error challenge, once it sent one."""

    def _token(self) -> str:
        token = self.credentials.require_token(self.name).reveal()
        if not _TOKEN.fullmatch(token):
            raise ValueError(f"{self.name}: the token is not an RFC 6750 b64token")
        return token

    def _respond(self, challenge: bytes) -> bytes:
        if self.error is not None:
            raise MalformedSaslError(f"{self.name}: a second challenge after the error")
        self.error = parse_error_challenge(challenge)
        return self._acknowledgement


class OAuthBearerClient(_TokenClient):
    """Names ``authzid`` (or else the user name) in the GS2 header, as RFC 7628 §3.1 shows."""

    name = "OAUTHBEARER"

    def _initial_response(self) -> bytes:
        credentials = self.credentials
        token = self._token()
        pairs = []
        if credentials.host is not None:
            pairs.append(f"host={credentials.host}")
        if credentials.port is not None:
            pairs.append(f"port={credentials.port}")
        pairs.append(f"auth=Bearer {token}")
        header = make_gs2_header("n", None, credentials.authzid or credentials.username)
        body = "".join(pair + KVSEP for pair in pairs)
        return f"{header}{KVSEP}{body}{KVSEP}".encode()


class XOAuth2Client(_TokenClient):
    name = "XOAUTH2"
    _acknowledgement = b""

    def _initial_response(self) -> bytes:
        user = self.credentials.username
        if not user or KVSEP in user:
            raise ValueError("XOAUTH2 needs a user name without ^A")
        return f"user={user}{KVSEP}auth=Bearer {self._token()}{KVSEP}{KVSEP}".encode()
