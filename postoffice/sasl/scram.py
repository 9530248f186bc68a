"""SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 7677, RFC 5802), server and client.

Theory of operation. The server never sees the password: it holds a verifier (salt,
iteration count, StoredKey, ServerKey; RFC 5802 §3) that the caller supplies in answer to
LookupScram. The client proves it knows ClientKey = HMAC(SaltedPassword, "Client Key") by
sending ClientKey XOR HMAC(StoredKey, AuthMessage); the server checks H(ClientKey) ==
StoredKey, then proves itself with HMAC(ServerKey, AuthMessage). In POP3 that last proof
goes out as a challenge which the client answers with an empty line (RFC 5034 §4, RFC 4422
§3.6: no additional data with success).

Unknown users get made-up credentials (a salt keyed from ServerOptions.dummy_key, random
keys) so that the exchange runs to the proof and fails like a wrong password: a client
cannot tell which users exist (RFC 5802 §5.1, §9).

Channel binding (RFC 5802 §6). -PLUS requires flag ``p`` and a binding type the caller
handed in (ServerOptions.channel_bindings); the client-final ``c=`` must then be the GS2
header followed by that data. Without -PLUS, ``p`` fails, and ``y`` fails when the server
offers -PLUS (it has channel bindings): that is a downgrade.

Passwords are used as their UTF-8 octets without SASLprep, as Dovecot does when it makes
the ``{SCRAM-SHA-256}`` verifiers of its passwd-file; for printable ASCII the two agree.

Why not ``scramp``: it refuses the ``tls-exporter`` binding, imports ``ssl``, takes
credentials through a synchronous callback, rejects any authzid and reports unknown users
at the first message. The few hash steps are below; tests check them against scramp.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import ClassVar

from postoffice.sasl.errors import MalformedSaslError, SaslStateError, ServerProofError
from postoffice.sasl.events import (
    Answer,
    Challenge,
    Failure,
    FailureReason,
    LookupScram,
    ScramCredentials,
    ServerStep,
)
from postoffice.sasl.framing import decode_base64, encode_base64
from postoffice.sasl.gs2 import (
    Gs2Header,
    escape_saslname,
    make_gs2_header,
    parse_gs2_header,
    unescape_saslname,
)
from postoffice.sasl.mechanism import (
    ClientCredentials,
    ClientMechanism,
    ServerMechanism,
    ServerOptions,
    decode_utf8,
    success,
)

MIN_ITERATIONS = 4096  # RFC 7677 §4
MAX_ITERATIONS = 10_000_000  # a client's bound on the work a server can ask of it

_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")  # RFC 5802 §7: printable, no comma
_EXTENSION = re.compile(r"[A-Za-z]=[^,\0]+")  # attr-val; the caller split on commas
_DUMMY_ITERATIONS = 4096


# --- the hash steps, RFC 5802 §3 -----------------------------------------------------------


def _hmac(hash_name: str, key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, hash_name)


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def salted_password(hash_name: str, password: bytes, salt: bytes, iterations: int) -> bytes:
    """SaltedPassword := Hi(Normalize(password), salt, i), Hi being PBKDF2 with HMAC."""
    return hashlib.pbkdf2_hmac(hash_name, password, salt, iterations)


def make_credentials(
    hash_name: str, password: bytes, salt: bytes, iterations: int
) -> ScramCredentials:
    """The verifier a server stores for ``password`` (tests and tools; servers read it)."""
    salted = salted_password(hash_name, password, salt, iterations)
    client_key = _hmac(hash_name, salted, b"Client Key")
    return ScramCredentials(
        salt=salt,
        iterations=iterations,
        stored_key=hashlib.new(hash_name, client_key).digest(),
        server_key=_hmac(hash_name, salted, b"Server Key"),
    )


def _attributes(text: str, what: str) -> list[str]:
    attributes = text.split(",")
    if any(len(a) < 2 or a[1] != "=" for a in attributes):
        raise MalformedSaslError(f"SCRAM {what}: an attribute is not 'x=value'")
    return attributes


def _check_extensions(attributes: list[str], what: str) -> None:
    for attribute in attributes:
        if not _EXTENSION.fullmatch(attribute):
            raise MalformedSaslError(f"SCRAM {what}: malformed extension attribute")


def _nonce(value: str, what: str) -> str:
    if not _NONCE.fullmatch(value):
        raise MalformedSaslError(f"SCRAM {what}: nonce has forbidden characters")
    return value


# --- server --------------------------------------------------------------------------------


class ScramServer(ServerMechanism):
    """SCRAM-SHA-256 (RFC 7677) server."""

    name: ClassVar[str] = "SCRAM-SHA-256"
    hash_name: ClassVar[str] = "sha256"
    plus: ClassVar[bool] = False

    def __init__(self, options: ServerOptions | None = None) -> None:
        super().__init__(options)
        self._digest_size = hashlib.new(self.hash_name).digest_size
        self._phase = "client-first"
        self._gs2: Gs2Header | None = None
        self._cbind_data = b""
        self._authcid = ""
        self._authzid = ""
        self._client_first_bare = ""
        self._nonce = ""
        self._server_first = ""
        self._credentials: ScramCredentials | None = None
        self._real = False

    def _start(self, initial_response: bytes | None) -> ServerStep:
        if initial_response is None:
            return Challenge(data=b"")  # RFC 4422 §5: the client speaks first
        return self._client_first(initial_response)

    def _receive(self, response: bytes) -> ServerStep:
        if self._phase == "client-first":
            return self._client_first(response)
        if self._phase == "client-final":
            return self._client_final(response)
        # The empty response to server-final's verifier (RFC 5034 §4).
        if response:
            raise MalformedSaslError("SCRAM: data after the server's final message")
        return success(self._authzid, self._authcid)

    def _client_first(self, data: bytes) -> ServerStep:
        # RFC 5802 §7: client-first-message = gs2-header client-first-message-bare
        gs2, bare = parse_gs2_header(decode_utf8(data, "SCRAM client-first"))
        attributes = _attributes(bare, "client-first")
        if attributes[0].startswith("m="):
            raise MalformedSaslError("SCRAM: mandatory extension not supported")  # §5.1
        if len(attributes) < 2 or attributes[0][:2] != "n=" or attributes[1][:2] != "r=":
            raise MalformedSaslError("SCRAM client-first: expected n= then r=")
        _check_extensions(attributes[2:], "client-first")
        username = unescape_saslname(attributes[0][2:], "SCRAM user name")
        client_nonce = _nonce(attributes[1][2:], "client-first")

        failure = self._channel_binding(gs2)
        if failure is not None:
            return failure
        authzid = "" if gs2.authzid == username else gs2.authzid
        if authzid and not self.options.allow_authzid:
            return Failure(reason=FailureReason.AUTHZID_DENIED)

        server_nonce = self.options.nonce()
        if not _NONCE.fullmatch(server_nonce):
            raise SaslStateError("the server nonce must be printable ASCII without commas")
        self._gs2 = gs2
        self._authcid, self._authzid = username, authzid
        self._client_first_bare = bare
        self._nonce = client_nonce + server_nonce
        self._phase = "lookup"
        return LookupScram(authcid=username, hash_name=self.hash_name, authzid=authzid)

    def _channel_binding(self, gs2: Gs2Header) -> Failure | None:
        """RFC 5802 §6; sets the data the client's ``c=`` must carry after the header."""
        if self.plus:
            binding = None
            if gs2.flag == "p" and gs2.cb_name is not None:
                binding = self.options.channel_binding(gs2.cb_name)
            if binding is None:  # no binding, or a type this connection does not have
                return Failure(reason=FailureReason.CHANNEL_BINDING)
            self._cbind_data = binding.data
            return None
        if gs2.flag == "p" or (gs2.flag == "y" and self.options.channel_bindings):
            return Failure(reason=FailureReason.CHANNEL_BINDING)
        return None

    def _answer(self, answer: Answer) -> ServerStep:
        if isinstance(answer, ScramCredentials):
            if {len(answer.stored_key), len(answer.server_key)} != {self._digest_size}:
                raise SaslStateError(f"SCRAM credentials are not {self.hash_name} keys")
            credentials, self._real = answer, True
        else:
            credentials = self._dummy_credentials()
        self._credentials = credentials
        # RFC 5802 §7: server-first-message = nonce "," salt "," iteration-count
        salt = encode_base64(credentials.salt).decode("ascii")
        self._server_first = f"r={self._nonce},s={salt},i={credentials.iterations}"
        self._phase = "client-final"
        return Challenge(data=self._server_first.encode("ascii"))

    def _dummy_credentials(self) -> ScramCredentials:
        key = self.options.dummy_key
        label = f"scram-salt\0{self.hash_name}\0{self._authcid}".encode("utf-8", "replace")
        return ScramCredentials(
            salt=_hmac("sha256", key, label)[:16],
            iterations=_DUMMY_ITERATIONS,
            stored_key=secrets.token_bytes(self._digest_size),
            server_key=secrets.token_bytes(self._digest_size),
        )

    def _client_final(self, data: bytes) -> ServerStep:
        # RFC 5802 §7: client-final-message = channel-binding "," nonce ["," extensions]
        #                                     "," proof
        text = decode_utf8(data, "SCRAM client-final")
        without_proof, _, proof_attribute = text.rpartition(",")
        attributes = _attributes(without_proof, "client-final")
        if len(attributes) < 2 or attributes[0][:2] != "c=" or attributes[1][:2] != "r=":
            raise MalformedSaslError("SCRAM client-final: expected c= then r=")
        _check_extensions(attributes[2:], "client-final")
        if not proof_attribute.startswith("p="):
            raise MalformedSaslError("SCRAM client-final: the proof must come last")
        cbind_input = decode_base64(attributes[0][2:])
        if attributes[1][2:] != self._nonce:
            raise MalformedSaslError("SCRAM client-final: nonce does not match")
        proof = decode_base64(proof_attribute[2:])
        if len(proof) != self._digest_size:
            raise MalformedSaslError("SCRAM client-final: proof has the wrong length")

        assert self._gs2 is not None and self._credentials is not None
        credentials = self._credentials
        # RFC 5802 §3: AuthMessage, ClientSignature, ClientKey := proof XOR signature.
        auth_message = ",".join((self._client_first_bare, self._server_first, without_proof))
        message = auth_message.encode("utf-8")
        client_signature = _hmac(self.hash_name, credentials.stored_key, message)
        client_key = _xor(proof, client_signature)
        stored_key = hashlib.new(self.hash_name, client_key).digest()
        proof_ok = hmac.compare_digest(stored_key, credentials.stored_key)
        # RFC 5802 §6: c= is base64 of the GS2 header, then the binding data if flag p.
        expected_cbind = self._gs2.raw.encode("utf-8") + self._cbind_data
        if not hmac.compare_digest(cbind_input, expected_cbind):
            return Failure(reason=FailureReason.CHANNEL_BINDING)
        if not (proof_ok and self._real):
            return Failure(reason=FailureReason.BAD_CREDENTIALS)
        # RFC 5802 §7: server-final-message = verifier = "v=" base64(ServerSignature)
        server_signature = _hmac(self.hash_name, credentials.server_key, message)
        self._phase = "acknowledge"
        return Challenge(data=b"v=" + encode_base64(server_signature))


class ScramPlusServer(ScramServer):
    """SCRAM-SHA-256-PLUS: SCRAM-SHA-256 bound to the TLS channel (RFC 5802 §6)."""

    name = "SCRAM-SHA-256-PLUS"
    plus = True


# --- client --------------------------------------------------------------------------------


class ScramClient(ClientMechanism):
    """SCRAM-SHA-256 client. Answering server-first runs PBKDF2 for the iteration count the
    server names (bounded by MIN_ITERATIONS..MAX_ITERATIONS): tens of milliseconds at 4096,
    so an asyncio caller with large counts may want a thread."""

    name: ClassVar[str] = "SCRAM-SHA-256"
    hash_name: ClassVar[str] = "sha256"
    plus: ClassVar[bool] = False
    min_iterations: ClassVar[int] = MIN_ITERATIONS
    max_iterations: ClassVar[int] = MAX_ITERATIONS

    def __init__(self, credentials: ClientCredentials) -> None:
        super().__init__(credentials)
        self._digest_size = hashlib.new(self.hash_name).digest_size
        self._phase = "server-first"
        self._gs2 = ""
        self._cbind_data = b""
        self._client_nonce = ""
        self._client_first_bare = ""
        self._server_signature = b""
        self._verified = False
        self.server_error: str | None = None
        """The ``e=`` value of a failing server-final message (RFC 5802 §7), if any."""

    def _initial_response(self) -> bytes:
        credentials = self.credentials
        credentials.require_password(self.name)
        binding = credentials.channel_binding
        if self.plus:
            if binding is None:
                raise SaslStateError(f"{self.name} needs channel-binding data")
            self._gs2 = make_gs2_header("p", binding.type, credentials.authzid)
            self._cbind_data = binding.data
        else:
            # RFC 5802 §6: "y" says we could bind but believe the server cannot.
            self._gs2 = make_gs2_header("y" if binding else "n", None, credentials.authzid)
        if not credentials.username:
            raise ValueError("SCRAM needs a user name")
        nonce = credentials.nonce()
        if not _NONCE.fullmatch(nonce):
            raise SaslStateError("the client nonce must be printable ASCII without commas")
        self._client_nonce = nonce
        self._client_first_bare = f"n={escape_saslname(credentials.username)},r={nonce}"
        return (self._gs2 + self._client_first_bare).encode("utf-8")

    def _respond(self, challenge: bytes) -> bytes:
        if self._phase == "server-first":
            return self._server_first(challenge)
        if self._phase == "server-final":
            return self._server_final(challenge)
        raise MalformedSaslError("SCRAM server sent a challenge after its final message")

    def _server_first(self, data: bytes) -> bytes:
        text = decode_utf8(data, "SCRAM server-first")
        attributes = _attributes(text, "server-first")
        if attributes[0].startswith("m="):
            raise MalformedSaslError("SCRAM: mandatory extension not supported")
        if len(attributes) < 3 or [a[:2] for a in attributes[:3]] != ["r=", "s=", "i="]:
            raise MalformedSaslError("SCRAM server-first: expected r=, s=, i=")
        _check_extensions(attributes[3:], "server-first")
        nonce = _nonce(attributes[0][2:], "server-first")
        if not nonce.startswith(self._client_nonce) or len(nonce) == len(self._client_nonce):
            raise MalformedSaslError("SCRAM server-first: nonce does not extend ours")
        salt = decode_base64(attributes[1][2:])
        count = attributes[2][2:]
        if not salt or not count.isascii() or not count.isdigit() or count.startswith("0"):
            raise MalformedSaslError("SCRAM server-first: bad salt or iteration count")
        iterations = int(count) if len(count) <= 9 else self.max_iterations + 1
        if not self.min_iterations <= iterations <= self.max_iterations:
            raise MalformedSaslError("SCRAM server-first: iteration count out of bounds")

        password = self.credentials.require_password(self.name)
        raw_password = password.reveal().encode("utf-8", "surrogateescape")
        # RFC 5802 §3.
        salted = salted_password(self.hash_name, raw_password, salt, iterations)
        client_key = _hmac(self.hash_name, salted, b"Client Key")
        stored_key = hashlib.new(self.hash_name, client_key).digest()
        server_key = _hmac(self.hash_name, salted, b"Server Key")
        cbind_input = encode_base64(self._gs2.encode("utf-8") + self._cbind_data).decode("ascii")
        without_proof = f"c={cbind_input},r={nonce}"
        auth_message = ",".join((self._client_first_bare, text, without_proof)).encode("utf-8")
        client_signature = _hmac(self.hash_name, stored_key, auth_message)
        proof = encode_base64(_xor(client_key, client_signature)).decode("ascii")
        self._server_signature = _hmac(self.hash_name, server_key, auth_message)
        self._phase = "server-final"
        return f"{without_proof},p={proof}".encode("ascii")

    def _server_final(self, data: bytes) -> bytes:
        # RFC 5802 §7: server-final-message = (server-error / verifier) ["," extensions]
        text = decode_utf8(data, "SCRAM server-final")
        attributes = _attributes(text, "server-final")
        _check_extensions(attributes[1:], "server-final")
        self._phase = "done"
        first = attributes[0]
        if first.startswith("e="):
            self.server_error = first[2:]
            return b""  # the server will say -ERR
        if not first.startswith("v="):
            raise MalformedSaslError("SCRAM server-final: expected v= or e=")
        if not hmac.compare_digest(decode_base64(first[2:]), self._server_signature):
            raise ServerProofError("SCRAM server signature does not match")
        self._verified = True
        return b""

    def _check_success(self) -> None:
        if not self._verified:
            raise ServerProofError("SCRAM server said +OK without proving itself")


class ScramPlusClient(ScramClient):
    """SCRAM-SHA-256-PLUS client: binds to ``credentials.channel_binding``."""

    name = "SCRAM-SHA-256-PLUS"
    plus = True
