"""Connection and session counts, in total, per client address and per user."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class ConnectionLimits:
    """Admits or refuses connections and logins against the configured caps."""

    max_connections: int
    max_connections_per_ip: int
    max_sessions_per_user: int
    total: int = 0
    per_ip: Counter[str] = field(default_factory=Counter)
    per_user: Counter[str] = field(default_factory=Counter)

    def admit_connection(self, ip: str) -> bool:
        if self.total >= self.max_connections or self.per_ip[ip] >= self.max_connections_per_ip:
            return False
        self.total += 1
        self.per_ip[ip] += 1
        return True

    def release_connection(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    def admit_user(self, user: str) -> bool:
        if self.per_user[user] >= self.max_sessions_per_user:
            return False
        self.per_user[user] += 1
        return True

    def release_user(self, user: str) -> None:
        self.per_user[user] -= 1
        if self.per_user[user] <= 0:
            del self.per_user[user]
