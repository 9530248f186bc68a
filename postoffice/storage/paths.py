"""Where a user's maildrop lives: the ``mail.maildir`` template filled in for one user."""

from __future__ import annotations

from pathlib import Path

from postoffice.auth.base import UserRecord
from postoffice.auth.usernames import split_username, validate_username
from postoffice.errors import StorageError


def maildir_for(template: str, *, data_dir: Path, user: UserRecord) -> Path:
    """The maildir path for ``user``; the name is checked against the allow-list first."""
    name = validate_username(user.name)
    localpart, domain = split_username(name)
    if "{home}" in template and not user.home:
        raise StorageError(f"user {name!r} has no home directory but mail.maildir uses {{home}}")
    filled = template.format(
        user=name, localpart=localpart, domain=domain, home=user.home, data_dir=data_dir
    )
    path = Path(filled).expanduser()
    if not path.is_absolute():
        raise StorageError(f"maildir path for {name!r} is not absolute: {filled}")
    return path
