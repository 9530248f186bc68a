"""The user database contract."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


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


class NotCurrent(enum.Enum):
    NOT_CURRENT = "not current"


NOT_CURRENT = NotCurrent.NOT_CURRENT
"""The database's copy in memory may be out of date: use ``lookup``."""


@runtime_checkable
class CachedUserDatabase(UserDatabase, Protocol):
    """A database that keeps its users in memory and can answer without any I/O but a stat."""

    def lookup_if_current(self, name: str) -> UserRecord | NotCurrent | None:
        """The user from memory if the source is unchanged, else ``NOT_CURRENT``."""

    @property
    def typical_hash(self) -> str | None:
        """A stored hash in the source's most common scheme (unknown names are checked
        against it), or None."""
