"""PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login-00): the password on the wire.

Both are plaintext mechanisms: the registry flags them so that the server hides them
before TLS. Neither compares passwords itself; each asks the caller with VerifyPassword.
Passwords are decoded like the PASS command's (UTF-8, undecodable octets kept through
``surrogateescape``) except in PLAIN, whose RFC requires UTF-8; user names must be UTF-8.
"""

from __future__ import annotations

from postoffice.sasl.errors import MalformedSaslError
from postoffice.sasl.events import (
    Answer,
    Challenge,
    Failure,
    FailureReason,
    PasswordVerdict,
    ServerStep,
    VerifyPassword,
)
from postoffice.sasl.mechanism import (
    ClientCredentials,
    ClientMechanism,
    ServerMechanism,
    ServerOptions,
    decode_utf8,
    success,
)
from postoffice.secret import Secret


def _password_bytes(password: Secret) -> bytes:
    return password.reveal().encode("utf-8", "surrogateescape")


class _PasswordServer(ServerMechanism):
    """Common ground: check the authzid rule, ask for the password, turn the verdict."""

    def __init__(self, options: ServerOptions | None = None) -> None:
        super().__init__(options)
        self._authcid = ""
        self._authzid = ""

    def _verify(self, authcid: str, password: Secret, authzid: str) -> ServerStep:
        if authzid == authcid:
            authzid = ""
        if authzid and not self.options.allow_authzid:
            return Failure(reason=FailureReason.AUTHZID_DENIED)  # RFC 4616 §2
        self._authcid, self._authzid = authcid, authzid
        return VerifyPassword(authcid=authcid, password=password, authzid=authzid)

    def _answer(self, answer: Answer) -> ServerStep:
        assert isinstance(answer, PasswordVerdict)
        if not answer.ok:
            return Failure(reason=FailureReason.BAD_CREDENTIALS)
        return success(self._authzid, self._authcid)


class PlainServer(_PasswordServer):
    """RFC 4616: one message, ``[authzid] NUL authcid NUL passwd``."""

    name = "PLAIN"

    def _start(self, initial_response: bytes | None) -> ServerStep:
        if initial_response is None:
            return Challenge(data=b"")  # RFC 4422 §5: ask for the initial response
        return self._message(initial_response)

    def _receive(self, response: bytes) -> ServerStep:
        return self._message(response)

    def _message(self, data: bytes) -> ServerStep:
        # RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd, with
        # authcid and passwd 1*SAFE (any UTF-8 but NUL).
        fields = data.split(b"\0")
        if len(fields) != 3:
            raise MalformedSaslError("PLAIN message needs exactly two NUL separators")
        authzid, authcid, password = (decode_utf8(f, "PLAIN field") for f in fields)
        if not authcid or not password:
            raise MalformedSaslError("PLAIN authcid and password must not be empty")
        return self._verify(authcid, Secret(password), authzid)


class LoginServer(_PasswordServer):
    """The LOGIN draft: ``Username:``, then ``Password:``; an initial response is the name."""

    name = "LOGIN"

    def __init__(self, options: ServerOptions | None = None) -> None:
        super().__init__(options)
        self._username: str | None = None

    def _start(self, initial_response: bytes | None) -> ServerStep:
        if initial_response is None:
            return Challenge(data=b"Username:")
        return self._receive(initial_response)

    def _receive(self, response: bytes) -> ServerStep:
        if b"\0" in response:
            raise MalformedSaslError("LOGIN data contains NUL")
        if self._username is None:
            username = decode_utf8(response, "LOGIN user name")
            if not username:
                raise MalformedSaslError("LOGIN user name is empty")
            self._username = username
            return Challenge(data=b"Password:")
        if not response:
            raise MalformedSaslError("LOGIN password is empty")
        password = Secret(response.decode("utf-8", "surrogateescape"))
        return self._verify(self._username, password, "")


class PlainClient(ClientMechanism):
    name = "PLAIN"

    def _initial_response(self) -> bytes:
        credentials = self.credentials
        fields = [
            credentials.authzid.encode("utf-8"),
            credentials.username.encode("utf-8"),
            _password_bytes(credentials.require_password(self.name)),
        ]
        if any(b"\0" in field for field in fields) or not all(fields[1:]):
            raise ValueError("PLAIN needs a non-empty user name and password without NUL")
        return b"\0".join(fields)

    def _respond(self, challenge: bytes) -> bytes:
        raise MalformedSaslError("PLAIN server sent a challenge after the message")


class LoginClient(ClientMechanism):
    """Answers the first challenge with the user name and the second with the password;
    the challenge text is not checked, as servers word it differently."""

    name = "LOGIN"

    def __init__(self, credentials: ClientCredentials) -> None:
        super().__init__(credentials)
        self._answers = 0

    def _initial_response(self) -> None:
        return None

    def _respond(self, challenge: bytes) -> bytes:
        self._answers += 1
        if self._answers == 1:
            return self.credentials.username.encode("utf-8")
        if self._answers == 2:
            return _password_bytes(self.credentials.require_password(self.name))
        raise MalformedSaslError("LOGIN server sent a third challenge")
