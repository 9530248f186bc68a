"""Password schemes, in the formats Dovecot's ``doveadm pw`` writes.

Theory of operation: a stored password is ``{SCHEME}data``, or bare ``data`` which Dovecot
reads as scheme CRYPT (the format is then recognised by its ``$id$`` prefix). A scheme name
may carry an encoding suffix, ``.HEX`` or ``.B64``/``.BASE64``, that changes how binary
digests are written. Every scheme maps to one verifier; a scheme we do not know, or data
that does not parse, raises UnknownSchemeError so that the caller fails closed and can tell
the administrator. Comparisons are constant time. Nothing here logs, and no exception text
contains a password or a hash.

Candidate passwords are UTF-8 encoded (``surrogateescape`` so that undecodable bytes from
the wire come back as the same bytes), as Dovecot compares raw bytes.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass

import argon2
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from passlib.hash import md5_crypt, sha256_crypt, sha512_crypt

from postoffice.errors import UnknownSchemeError
from postoffice.secret import Secret

DEFAULT_SCHEME = "ARGON2ID"

# Plaintext, unsalted digests and MD5-based schemes: stored passwords that are recoverable
# or cheap to brute-force. Their users can still log in, but the operator is warned.
WEAK_SCHEMES = frozenset(
    {
        "PLAIN",
        "CLEAR",
        "CLEARTEXT",
        "PLAIN-TRUNC",
        "PLAIN-MD4",
        "PLAIN-MD5",
        "LDAP-MD5",
        "MD5",
        "MD5-CRYPT",
        "SMD5",
        "SHA",
        "SHA1",
        "SHA256",
        "SHA512",
        "DES-CRYPT",
        "CRAM-MD5",
        "HMAC-MD5",
        "DIGEST-MD5",
        "LANMAN",
        "NTLM",
        "RPA",
        "OTP",
        "SKEY",
    }
)
_PLAINTEXT_SCHEMES = frozenset({"PLAIN", "CLEAR", "CLEARTEXT"})

_BCRYPT_MAX_BYTES = 72  # crypt_blowfish (Dovecot's BLF-CRYPT) ignores the rest
_SALT_ALPHABET = "./" + string.digits + string.ascii_uppercase + string.ascii_lowercase


@dataclass(frozen=True, slots=True)
class _Parsed:
    scheme: str  # upper case, without the encoding suffix
    encoding: str | None  # "HEX", "B64" or None (the scheme's own default)
    data: str


@functools.lru_cache(maxsize=8192)  # a login parses its user's hash several times
def _parse(stored: str) -> _Parsed:
    if stored.startswith("{"):
        end = stored.find("}")
        if end > 1:
            name = stored[1:end].upper()
            data = stored[end + 1 :]
            base, dot, suffix = name.rpartition(".")
            if dot and suffix in ("HEX", "B64", "BASE64"):
                return _Parsed(base, "HEX" if suffix == "HEX" else "B64", data)
            return _Parsed(name, None, data)
    return _Parsed("CRYPT", None, stored)


def _malformed(scheme: str) -> UnknownSchemeError:
    return UnknownSchemeError(f"malformed {{{scheme}}} password hash")


def _encode(candidate: Secret) -> bytes:
    return candidate.reveal().encode("utf-8", "surrogateescape")


def _decode_binary(parsed: _Parsed, default: str, size: int | None = None) -> bytes:
    """Decode ``parsed.data`` as hex or base64; ``size`` is the exact raw length if fixed."""
    encoding = parsed.encoding or default
    data = parsed.data.strip()
    # Dovecot also reads a hex digest where base64 is the default, when the length says so.
    if parsed.encoding is None and size is not None and len(data) == 2 * size:
        encoding = "HEX"
    try:
        if encoding == "HEX":
            return bytes.fromhex(data)
        return base64.b64decode(data, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise _malformed(parsed.scheme) from exc


# --- digest schemes ----------------------------------------------------------------------

# scheme -> (hashlib name, salted, default encoding)
_DIGESTS: dict[str, tuple[str, bool, str]] = {
    "SHA": ("sha1", False, "B64"),
    "SHA1": ("sha1", False, "B64"),
    "SHA256": ("sha256", False, "B64"),
    "SHA512": ("sha512", False, "B64"),
    "SSHA": ("sha1", True, "B64"),
    "SSHA256": ("sha256", True, "B64"),
    "SSHA512": ("sha512", True, "B64"),
    "LDAP-MD5": ("md5", False, "B64"),
    "PLAIN-MD5": ("md5", False, "HEX"),
    "SMD5": ("md5", True, "B64"),
}


def _digest(algorithm: str, data: bytes) -> bytes:
    # MD5 and SHA-1 here only check passwords stored in legacy Dovecot schemes.
    return hashlib.new(algorithm, data, usedforsecurity=False).digest()


def _verify_digest(parsed: _Parsed, password: bytes) -> bool:
    algorithm, salted, default = _DIGESTS[parsed.scheme]
    size = hashlib.new(algorithm, usedforsecurity=False).digest_size
    raw = _decode_binary(parsed, default, None if salted else size)
    if len(raw) < size + (1 if salted else 0) or (not salted and len(raw) != size):
        raise _malformed(parsed.scheme)
    expected, salt = raw[:size], raw[size:]
    return hmac.compare_digest(_digest(algorithm, password + salt), expected)


def _hash_digest(scheme: str, password: bytes) -> str:
    algorithm, salted, _ = _DIGESTS[scheme]
    salt = secrets.token_bytes(16) if salted else b""
    raw = _digest(algorithm, password + salt) + salt
    return base64.b64encode(raw).decode("ascii")


# --- plaintext ---------------------------------------------------------------------------


def _plaintext_bytes(parsed: _Parsed) -> bytes:
    if parsed.encoding is None:
        return parsed.data.encode("utf-8", "surrogateescape")
    return _decode_binary(parsed, parsed.encoding)


def _verify_plain(parsed: _Parsed, password: bytes) -> bool:
    return hmac.compare_digest(_plaintext_bytes(parsed), password)


# --- crypt(3) families -------------------------------------------------------------------


def _verify_argon2(parsed: _Parsed, password: bytes) -> bool:
    if not parsed.data.startswith(("$argon2id$", "$argon2i$")):
        raise _malformed(parsed.scheme)
    try:
        return argon2.PasswordHasher().verify(parsed.data, password)
    except VerifyMismatchError:
        return False
    except (InvalidHashError, VerificationError) as exc:
        raise _malformed(parsed.scheme) from exc


def _verify_bcrypt(parsed: _Parsed, password: bytes) -> bool:
    if not parsed.data.startswith(("$2y$", "$2b$", "$2a$")):
        raise _malformed(parsed.scheme)
    try:
        return bcrypt.checkpw(password[:_BCRYPT_MAX_BYTES], parsed.data.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise _malformed(parsed.scheme) from exc


def _passlib_verifier(handler: object, prefix: str) -> Callable[[_Parsed, bytes], bool]:
    def verify(parsed: _Parsed, password: bytes) -> bool:
        if not parsed.data.startswith(prefix):
            raise _malformed(parsed.scheme)
        try:
            return bool(handler.verify(password, parsed.data))  # type: ignore[attr-defined]
        except (ValueError, TypeError) as exc:
            raise _malformed(parsed.scheme) from exc

    return verify


_verify_sha512_crypt = _passlib_verifier(sha512_crypt, "$6$")
_verify_sha256_crypt = _passlib_verifier(sha256_crypt, "$5$")
_verify_md5_crypt = _passlib_verifier(md5_crypt, "$1$")

# CRYPT: the format is named by its prefix, as crypt(3) does it.
_CRYPT_PREFIXES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("$argon2id$", "$argon2i$"), "ARGON2ID"),
    (("$2y$", "$2b$", "$2a$"), "BLF-CRYPT"),
    (("$6$",), "SHA512-CRYPT"),
    (("$5$",), "SHA256-CRYPT"),
    (("$1$",), "MD5-CRYPT"),
)


def _crypt_family(data: str) -> str | None:
    for prefixes, scheme in _CRYPT_PREFIXES:
        if data.startswith(prefixes):
            return scheme
    return None


def _verify_crypt(parsed: _Parsed, password: bytes) -> bool:
    # Empty, "*" and "!" values are the crypt(3) way to lock an account: nothing matches.
    if not parsed.data or parsed.data.startswith(("*", "!")):
        return False
    family = _crypt_family(parsed.data)
    if family is None:
        raise UnknownSchemeError("{CRYPT} password hash in a format postoffice does not know")
    return _VERIFIERS[family](_Parsed(family, None, parsed.data), password)


# --- PBKDF2 and SCRAM --------------------------------------------------------------------


def _verify_pbkdf2(parsed: _Parsed, password: bytes) -> bool:
    # Dovecot: $1$<salt>$<rounds>$<hex PBKDF2-HMAC-SHA1, 20 bytes>; the salt text is the salt.
    fields = parsed.data.split("$")
    if len(fields) != 5 or fields[0] != "" or fields[1] != "1" or not fields[3].isdigit():
        raise _malformed(parsed.scheme)
    rounds = int(fields[3])
    try:
        expected = bytes.fromhex(fields[4])
        salt = fields[2].encode("ascii")
    except (ValueError, UnicodeEncodeError) as exc:
        raise _malformed(parsed.scheme) from exc
    if rounds < 1 or len(expected) != 20:
        raise _malformed(parsed.scheme)
    return hmac.compare_digest(hashlib.pbkdf2_hmac("sha1", password, salt, rounds), expected)


def _hash_pbkdf2(password: bytes, rounds: int | None) -> str:
    salt = "".join(secrets.choice(_SALT_ALPHABET) for _ in range(16))
    rounds = rounds or 5000  # Dovecot's default
    key = hashlib.pbkdf2_hmac("sha1", password, salt.encode("ascii"), rounds)
    return f"$1${salt}${rounds}${key.hex()}"


_SCRAM_HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}


def _scram_keys(algorithm: str, password: bytes, salt: bytes, rounds: int) -> tuple[bytes, bytes]:
    """RFC 5802 section 3: (StoredKey, ServerKey)."""
    salted = hashlib.pbkdf2_hmac(algorithm, password, salt, rounds)
    client_key = hmac.digest(salted, b"Client Key", algorithm)
    server_key = hmac.digest(salted, b"Server Key", algorithm)
    return hashlib.new(algorithm, client_key).digest(), server_key


def _verify_scram(parsed: _Parsed, password: bytes) -> bool:
    # Dovecot: <iterations>,<b64 salt>,<b64 StoredKey>,<b64 ServerKey>
    fields = parsed.data.split(",")
    if len(fields) != 4 or not fields[0].isdigit() or int(fields[0]) < 1:
        raise _malformed(parsed.scheme)
    try:
        salt, stored_key = (base64.b64decode(f, validate=True) for f in fields[1:3])
    except (ValueError, binascii.Error) as exc:
        raise _malformed(parsed.scheme) from exc
    algorithm = _SCRAM_HASHES[parsed.scheme]
    computed, _ = _scram_keys(algorithm, password, salt, int(fields[0]))
    return hmac.compare_digest(computed, stored_key)


def _hash_scram(scheme: str, password: bytes, rounds: int | None) -> str:
    rounds = rounds or 4096  # RFC 7677's minimum and Dovecot's default
    salt = secrets.token_bytes(16)
    stored_key, server_key = _scram_keys(_SCRAM_HASHES[scheme], password, salt, rounds)
    b64 = [base64.b64encode(v).decode("ascii") for v in (salt, stored_key, server_key)]
    return f"{rounds},{','.join(b64)}"


# --- the tables --------------------------------------------------------------------------

_VERIFIERS: dict[str, Callable[[_Parsed, bytes], bool]] = {
    "ARGON2ID": _verify_argon2,
    "ARGON2I": _verify_argon2,
    "BLF-CRYPT": _verify_bcrypt,
    "SHA512-CRYPT": _verify_sha512_crypt,
    "SHA256-CRYPT": _verify_sha256_crypt,
    "MD5-CRYPT": _verify_md5_crypt,
    "MD5": _verify_md5_crypt,  # Dovecot's MD5 is MD5-CRYPT
    "CRYPT": _verify_crypt,
    "PBKDF2": _verify_pbkdf2,
    "SCRAM-SHA-1": _verify_scram,
    "SCRAM-SHA-256": _verify_scram,
    **dict.fromkeys(_PLAINTEXT_SCHEMES, _verify_plain),
    **dict.fromkeys(_DIGESTS, _verify_digest),
}


def scheme_of(stored: str) -> str:
    """The scheme named by ``stored``'s ``{SCHEME}`` prefix, upper case, or CRYPT without one.

    An encoding suffix is kept: ``{sha512.hex}...`` gives ``SHA512.HEX``.
    """
    parsed = _parse(stored)
    if parsed.encoding is None:
        return parsed.scheme
    return f"{parsed.scheme}.{parsed.encoding}"


def is_weak_scheme(stored: str) -> bool:
    """True if ``stored`` is plaintext, an unsalted digest, or MD5/DES based."""
    parsed = _parse(stored)
    scheme = parsed.scheme
    if scheme == "CRYPT":
        family = _crypt_family(parsed.data)
        # Unrecognised crypt data with a value is most likely 13-character DES.
        scheme = family or ("DES-CRYPT" if parsed.data[:1] not in ("", "*", "!") else "")
    return scheme in WEAK_SCHEMES


def is_cheap_scheme(stored: str) -> bool:
    """True if checking ``stored`` costs microseconds (plaintext or one digest), so it can
    be done on the event loop rather than in the hashing pool."""
    scheme = _parse(stored).scheme
    return scheme in _PLAINTEXT_SCHEMES or scheme in _DIGESTS


def is_known_scheme(stored: str) -> bool:
    """True if verify_password knows the scheme of ``stored`` (the data may still be bad)."""
    return _parse(stored).scheme in _VERIFIERS


def plaintext_password(stored: str) -> Secret | None:
    """The password itself if ``stored`` is in a plaintext scheme (needed by APOP), else None."""
    parsed = _parse(stored)
    if parsed.scheme not in _PLAINTEXT_SCHEMES:
        return None
    return Secret(_plaintext_bytes(parsed).decode("utf-8", "surrogateescape"))


def verify_password(stored: str, candidate: Secret) -> bool:
    """True if ``candidate`` matches the ``stored`` password hash.

    Raises UnknownSchemeError if the scheme is unknown or the stored data cannot be parsed.
    """
    parsed = _parse(stored)
    verifier = _VERIFIERS.get(parsed.scheme)
    if verifier is None:
        raise UnknownSchemeError(f"unknown password scheme {{{parsed.scheme}}}")
    password = _encode(candidate)
    if b"\0" in password:  # no Dovecot password can contain NUL
        return False
    return verifier(parsed, password)


def hash_password(
    password: Secret,
    scheme: str = DEFAULT_SCHEME,
    *,
    rounds: int | None = None,
    memory_kib: int | None = None,
) -> str:
    """Hash ``password`` as ``{SCHEME}data``, the way ``doveadm pw -s SCHEME`` does.

    ``rounds`` means what ``doveadm pw -r`` means: Argon2 time cost, bcrypt log2 cost,
    SHA-crypt rounds, PBKDF2 or SCRAM iterations. ``memory_kib`` is the Argon2 memory cost.
    Supported: ARGON2ID, ARGON2I, BLF-CRYPT, SHA512-CRYPT, SHA256-CRYPT, PBKDF2,
    SCRAM-SHA-1, SCRAM-SHA-256, SSHA512, SSHA256, SSHA, PLAIN, CLEAR.
    """
    name = scheme.upper()
    raw = _encode(password)
    if b"\0" in raw:
        raise ValueError("a password must not contain NUL")
    data: str
    if name in ("ARGON2ID", "ARGON2I"):
        # Dovecot's defaults: ARGON2ID m=65536,t=3; ARGON2I m=32768,t=4; p=1.
        argon_id = name == "ARGON2ID"
        hasher = argon2.PasswordHasher(
            time_cost=rounds or (3 if argon_id else 4),
            memory_cost=memory_kib or (65536 if argon_id else 32768),
            parallelism=1,
            type=argon2.Type.ID if argon_id else argon2.Type.I,
        )
        data = hasher.hash(raw)
    elif name == "BLF-CRYPT":
        salt = bcrypt.gensalt(rounds=rounds or 12)
        # $2b$ and $2y$ are the same algorithm; doveadm writes $2y$.
        data = "$2y$" + bcrypt.hashpw(raw[:_BCRYPT_MAX_BYTES], salt).decode("ascii")[4:]
    elif name in ("SHA512-CRYPT", "SHA256-CRYPT"):
        handler = sha512_crypt if name == "SHA512-CRYPT" else sha256_crypt
        data = str(handler.using(rounds=rounds).hash(raw) if rounds else handler.hash(raw))
    elif name == "PBKDF2":
        data = _hash_pbkdf2(raw, rounds)
    elif name in _SCRAM_HASHES:
        data = _hash_scram(name, raw, rounds)
    elif name in ("SSHA512", "SSHA256", "SSHA"):
        data = _hash_digest(name, raw)
    elif name in _PLAINTEXT_SCHEMES:
        data = password.reveal()
    else:
        raise UnknownSchemeError(f"cannot hash into password scheme {{{name}}}")
    return f"{{{name}}}{data}"


# Verified for unknown users so that a login costs the same whether the name exists or not.
@functools.cache
def dummy_hash() -> str:
    """A default-cost ARGON2ID hash of a random password, made on first use (it costs a
    quarter of a second, which a command like ``postoffice fetch`` should not pay)."""
    return hash_password(Secret(secrets.token_urlsafe(32)))


def __getattr__(name: str) -> str:
    # DUMMY_HASH is made on first access, not at import.
    if name == "DUMMY_HASH":
        return dummy_hash()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
