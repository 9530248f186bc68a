"""Connection and session counts: in total, per client address, per user, per user+address."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class ConnectionLimits:
    """Admits or refuses connections and logins against the configured caps."""

    max_connections: int
    max_connections_per_ip: int
    max_sessions_per_user: int
    max_connections_per_user_ip: int = 10
    total: int = 0
    per_ip: Counter[str] = field(default_factory=Counter)
    per_user: Counter[str] = field(default_factory=Counter)
    per_user_ip: Counter[tuple[str, str]] = field(default_factory=Counter)

    def connection_cap_reached(self, ip: str) -> str | None:
        """Which cap a new connection from ``ip`` would break: "total", "ip", or None."""
        if self.total >= self.max_connections:
            return "total"
        if self.per_ip[ip] >= self.max_connections_per_ip:
            return "ip"
        return None

    def admit_connection(self, ip: str) -> bool:
        if self.connection_cap_reached(ip) is not None:
            return False
        self.total += 1
        self.per_ip[ip] += 1
        return True

    def release_connection(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    @property
    def counts_user_ip(self) -> bool:
        """Whether the per-user+address cap can bind before the per-user one (not with the
        defaults, 10 and 10): only then is it counted, which costs a key per session."""
        return self.max_connections_per_user_ip < self.max_sessions_per_user

    def admit_user(self, user: str, ip: str) -> bool:
        by_ip = self.counts_user_ip
        if self.per_user[user] >= self.max_sessions_per_user or (
            by_ip and self.per_user_ip[user, ip] >= self.max_connections_per_user_ip
        ):
            return False
        self.per_user[user] += 1
        if by_ip:
            self.per_user_ip[user, ip] += 1
        return True

    def release_user(self, user: str, ip: str) -> None:
        self.per_user[user] -= 1
        if self.per_user[user] <= 0:
            del self.per_user[user]
        if self.counts_user_ip:
            self.per_user_ip[user, ip] -= 1
            if self.per_user_ip[user, ip] <= 0:
                del self.per_user_ip[user, ip]
