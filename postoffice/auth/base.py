"""The user database contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class UserRecord:
    """One user, as a Dovecot-format passwd-file line describes it.

    ``user:{SCHEME}hash:uid:gid:gecos:home:shell:extra_fields``
    """

    name: str
    password_hash: str = ""
    """The stored password with its ``{SCHEME}`` prefix; never logged."""
    uid: int | None = None
    gid: int | None = None
    gecos: str = ""
    home: str = ""
    shell: str = ""
    extra_fields: str = ""

    def __repr__(self) -> str:
        return f"UserRecord(name={self.name!r}, home={self.home!r})"


class UserDatabase(Protocol):
    """Looks users up by name. Implementations re-read their source when it changes."""

    def lookup(self, name: str) -> UserRecord | None:
        """The user called ``name``, or None."""
