"""Where a user's maildrop lives: the ``mail.maildir`` template filled in for one user."""

from __future__ import annotations

import re
from pathlib import Path

from postoffice.auth.base import UserRecord
from postoffice.auth.usernames import split_username, validate_username
from postoffice.errors import StorageError

# What a Path would spell otherwise: repeated slashes, "." parts, a trailing slash.
_NOT_AS_A_PATH_SPELLS_IT = re.compile(r"//|/\.(?:/|$)|/$")


def maildir_for(template: str, *, data_dir: Path, user: UserRecord) -> Path:
    """The maildir path for ``user``; the name is checked against the allow-list first."""
    return Path(maildir_path_for(template, data_dir=data_dir, user=user))


def maildir_path_for(template: str, *, data_dir: Path, user: UserRecord) -> str:
    """``maildir_for`` as a string, spelled as ``str()`` of that Path spells it. A login on a
    server that has not seen the user makes it; making the Path would cost more than the
    rest of this (usually the template gives a path that needs no change)."""
    name = validate_username(user.name)
    localpart, domain = split_username(name)
    if "{home}" in template and not user.home:
        raise StorageError(f"user {name!r} has no home directory but mail.maildir uses {{home}}")
    filled = template.format(
        user=name, localpart=localpart, domain=domain, home=user.home, data_dir=data_dir
    )
    if filled.startswith("/") and not _NOT_AS_A_PATH_SPELLS_IT.search(filled):
        return filled
    try:
        path = Path(filled).expanduser()
    except RuntimeError:  # "~name" of no such user
        raise StorageError(f"maildir path for {name!r} cannot be expanded: {filled}") from None
    if not path.is_absolute():
        raise StorageError(f"maildir path for {name!r} is not absolute: {filled}")
    return str(path)
