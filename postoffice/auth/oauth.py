"""Bearer-token validation for OAUTHBEARER and XOAUTH2 (RFC 7628).

Two validators, chosen by configuration:

- ``JwksValidator`` checks a JWT (RFC 7519) against the keys of a local JWKS file
  (RFC 7517): signature (RS256/384/512, PS256/384/512, ES256/384/512, EdDSA), expiry and
  not-before with a minute's leeway, and the issuer and audience when configured. The file
  is re-read when it changes, so keys can be rotated without a restart.
- ``IntrospectionValidator`` runs a command with the token on standard input (never on
  the command line) and reads an RFC 7662 introspection response from its standard output:
  ``{"active": true, "username": "alice"}`` (or ``"sub"``).

Either returns the user name the token proves, or None.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from postoffice.secret import Secret

log = logging.getLogger(__name__)

LEEWAY = 60.0  # seconds of clock difference tolerated for exp and nbf

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}


class BearerValidator(Protocol):
    async def validate(self, token: Secret, user: str) -> str | None:
        """The user name ``token`` proves (and, if ``user`` is given, it must match)."""


def _b64url(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii"))


def _int(text: str) -> int:
    return int.from_bytes(_b64url(text), "big")


class JwksValidator:
    def __init__(
        self,
        jwks_file: Path,
        *,
        issuer: str = "",
        audience: str = "",
        username_claim: str = "sub",
        clock: Any = time.time,
    ) -> None:
        self.jwks_file = jwks_file
        self.issuer = issuer
        self.audience = audience
        self.username_claim = username_claim
        self._clock = clock
        self._keys: list[dict[str, Any]] = []
        self._signature: tuple[int, int] | None = None

    def _current_keys(self) -> list[dict[str, Any]]:
        stat = os.stat(self.jwks_file)
        signature = (stat.st_mtime_ns, stat.st_size)
        if signature != self._signature:
            document = json.loads(self.jwks_file.read_text())
            keys = document.get("keys") if isinstance(document, dict) else None
            if not isinstance(keys, list):
                raise ValueError("JWKS file has no 'keys' list")
            self._keys = [key for key in keys if isinstance(key, dict)]
            self._signature = signature
        return self._keys

    async def validate(self, token: Secret, user: str) -> str | None:
        try:
            claims = self.verified_claims(token.reveal())
        except (
            ValueError,
            KeyError,
            TypeError,
            binascii.Error,
            InvalidSignature,
            OSError,
        ) as error:
            log.info("bearer token refused: %s", type(error).__name__)
            return None
        if claims is None:
            return None
        identity = claims.get(self.username_claim)
        if not isinstance(identity, str) or not identity:
            log.info("bearer token refused: no %r claim", self.username_claim)
            return None
        if user and user != identity:
            log.info("bearer token refused: it is not for the user named")
            return None
        return identity

    def verified_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of a JWT whose signature and times check out, else None."""
        header_text, payload_text, signature_text = token.split(".")
        header = json.loads(_b64url(header_text))
        claims = json.loads(_b64url(payload_text))
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm == "none":
            return None
        signed = f"{header_text}.{payload_text}".encode("ascii")
        signature = _b64url(signature_text)
        candidates = [
            key
            for key in self._current_keys()
            if ("kid" not in header or key.get("kid") == header["kid"])
            and key.get("alg", algorithm) == algorithm
        ]
        if not any(_verify(key, algorithm, signed, signature) for key in candidates):
            log.info("bearer token refused: no key verifies its signature")
            return None
        now = self._clock()
        expires = claims.get("exp")
        if not isinstance(expires, int | float) or now > expires + LEEWAY:
            log.info("bearer token refused: expired or without exp")
            return None
        not_before = claims.get("nbf")
        if isinstance(not_before, int | float) and now + LEEWAY < not_before:
            return None
        if self.issuer and claims.get("iss") != self.issuer:
            log.info("bearer token refused: wrong issuer")
            return None
        if self.audience:
            audience = claims.get("aud")
            audiences = audience if isinstance(audience, list) else [audience]
            if self.audience not in audiences:
                log.info("bearer token refused: wrong audience")
                return None
        return claims


def _verify(key: dict[str, Any], algorithm: str, signed: bytes, signature: bytes) -> bool:
    """Whether ``signature`` over ``signed`` checks with this JWK for this algorithm."""
    try:
        family, bits = algorithm[:2], algorithm[2:]
        key_type = key.get("kty")
        if family in ("RS", "PS") and key_type == "RSA":
            public = rsa.RSAPublicNumbers(_int(key["e"]), _int(key["n"])).public_key()
            digest = _HASHES[bits]()
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if family == "RS"
                else padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            )
            public.verify(signature, signed, pad, digest)
            return True
        if family == "ES" and key_type == "EC":
            curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
            curve = curves[key["crv"]]
            ec_public = ec.EllipticCurvePublicNumbers(
                _int(key["x"]), _int(key["y"]), curve
            ).public_key()
            half = len(signature) // 2
            der = encode_dss_signature(
                int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
            )
            ec_public.verify(der, signed, ec.ECDSA(_HASHES[bits]()))
            return True
        if algorithm == "EdDSA" and key_type == "OKP" and key.get("crv") == "Ed25519":
            ed25519.Ed25519PublicKey.from_public_bytes(_b64url(key["x"])).verify(signature, signed)
            return True
    except (InvalidSignature, KeyError, ValueError, TypeError, binascii.Error):
        return False
    return False


class IntrospectionValidator:
    def __init__(self, command: str, *, timeout: float = 10.0) -> None:
        self.command = command
        self.timeout = timeout

    async def validate(self, token: Secret, user: str) -> str | None:
        environment = dict(os.environ, POSTOFFICE_OAUTH_USER=user)
        process = await asyncio.create_subprocess_shell(
            self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=environment,
        )
        try:
            async with asyncio.timeout(self.timeout):
                output, _ = await process.communicate(token.reveal().encode() + b"\n")
        except TimeoutError:
            process.kill()
            await process.wait()
            log.warning("token introspection command timed out")
            return None
        if process.returncode != 0:
            log.info("token introspection command exited %d", process.returncode)
            return None
        try:
            response = json.loads(output)
        except ValueError:
            log.warning("token introspection command printed no JSON")
            return None
        if not isinstance(response, dict) or response.get("active") is not True:
            return None
        identity = response.get("username") or response.get("sub")
        if not isinstance(identity, str) or not identity or (user and user != identity):
            return None
        return identity
