"""SCRAM verifiers from the passwd-file's ``{SCRAM-SHA-256}`` values (Dovecot's format).

``{SCRAM-SHA-256}<iterations>,<base64 salt>,<base64 StoredKey>,<base64 ServerKey>`` is
written by ``doveadm pw -s SCRAM-SHA-256`` and by postoffice.auth.schemes.hash_password,
whose scheme parsing this reuses. This is the one place where the pure SASL code knows
about the user database's formats; it reads a string and does no I/O.
"""

from __future__ import annotations

import hashlib

from postoffice.auth.schemes import scheme_of
from postoffice.errors import UnknownSchemeError
from postoffice.sasl.errors import MalformedSaslError
from postoffice.sasl.events import ScramCredentials
from postoffice.sasl.framing import decode_base64

_SCHEMES = {"sha256": "SCRAM-SHA-256", "sha1": "SCRAM-SHA-1"}


def scram_credentials(stored: str, hash_name: str = "sha256") -> ScramCredentials | None:
    """The SCRAM verifier in ``stored``, or None if it is in another scheme (such a user
    cannot use SCRAM: answer NO_CREDENTIALS). Raises UnknownSchemeError if the value says
    SCRAM but does not parse, so the caller fails closed as for any broken hash."""
    scheme = _SCHEMES.get(hash_name)
    if scheme is None or scheme_of(stored) != scheme:
        return None
    data = stored.partition("}")[2]
    fields = data.split(",")
    malformed = UnknownSchemeError(f"malformed {{{scheme}}} password hash")
    if len(fields) != 4 or not fields[0].isascii() or not fields[0].isdigit():
        raise malformed
    try:
        salt, stored_key, server_key = (decode_base64(field) for field in fields[1:])
    except MalformedSaslError as exc:
        raise malformed from exc
    size = hashlib.new(hash_name).digest_size
    if not salt or int(fields[0]) < 1 or len(stored_key) != size or len(server_key) != size:
        raise malformed
    return ScramCredentials(
        salt=salt, iterations=int(fields[0]), stored_key=stored_key, server_key=server_key
    )
