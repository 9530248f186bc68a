"""The user-name allow-list, checked before a name reaches a file name or a log line.

A name may become a directory under the mail root, so only a small ASCII alphabet passes;
everything else (``/``, ``..``, NUL, control bytes, spaces, non-ASCII) is refused.
Error messages never repeat the name: users sometimes type their password into it.
"""

from __future__ import annotations

import string

from postoffice.errors import InvalidUsernameError

MAX_USERNAME_LENGTH = 255
_ALLOWED = frozenset(string.ascii_letters + string.digits + "._-+@")


def validate_username(name: str) -> str:
    """Return ``name`` unchanged if it is allowed, else raise InvalidUsernameError."""
    if not name:
        raise InvalidUsernameError("user name is empty")
    if len(name) > MAX_USERNAME_LENGTH:
        raise InvalidUsernameError(f"user name is longer than {MAX_USERNAME_LENGTH} characters")
    for position, char in enumerate(name, start=1):
        if char not in _ALLOWED:
            raise InvalidUsernameError(
                f"user name has a character outside A-Z a-z 0-9 . _ - + @ at position {position}"
            )
    if name[0] in ".-":
        raise InvalidUsernameError("user name must not start with '.' or '-'")
    if ".." in name:
        raise InvalidUsernameError("user name must not contain '..'")
    return name


def split_username(name: str) -> tuple[str, str]:
    """Split ``name`` on its last ``@`` into (localpart, domain); domain is "" without one."""
    localpart, at, domain = name.rpartition("@")
    if not at:
        return name, ""
    return localpart, domain
