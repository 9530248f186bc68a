"""Per-client penalties after failed logins, modelled on Dovecot's auth penalty (anvil).

Theory of operation: each client network (an IPv4 address, or an IPv6 /48, since one
IPv6 client owns a whole prefix) has a failure count. After a failure, the next attempt
must wait ``base_delay * 2**(failures - 1)`` seconds from that failure, capped at
``max_delay``. A client that repeats the same user name and password among its last ten
failures (a mail client with a saved wrong password) does not escalate its penalty; it
only restarts the wait. A success clears the network's record; ``forget_after`` seconds
without a failure forget it too. At most ``memory`` networks are tracked, the least
recently failing are dropped first. Trusted networks are never delayed; loopback is not
trusted unless listed.

Not thread-safe: use it from the event loop. Nothing here logs.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

IPV6_PREFIX = 48
_REMEMBERED_ATTEMPTS = 10
_MAX_COUNTED_FAILURES = 64  # far past any cap; keeps 2**n a small float


@dataclass(slots=True)
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    recent: deque[bytes] = field(default_factory=lambda: deque(maxlen=_REMEMBERED_ATTEMPTS))


class FailureThrottle:
    """Tells how long a login attempt from an IP address must wait."""

    def __init__(
        self,
        *,
        base_delay: float = 2.0,
        max_delay: float = 15.0,
        trusted: Iterable[Network | str] = (),
        clock: Callable[[], float] = time.monotonic,
        memory: int = 10000,
        forget_after: float = 3600.0,
    ) -> None:
        if base_delay < 0 or max_delay < 0 or forget_after <= 0:
            raise ValueError("delays must not be negative and forget_after must be positive")
        if memory < 1:
            raise ValueError("memory must be at least 1")
        self._base = base_delay
        self._max = max_delay
        self._trusted = tuple(
            net if not isinstance(net, str) else ipaddress.ip_network(net, strict=False)
            for net in trusted
        )
        self._clock = clock
        self._memory = memory
        self._forget_after = forget_after
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._keys: dict[str, str | None] = {}  # parsing an address costs more than a login

    def __len__(self) -> int:
        """How many client networks are tracked now."""
        return len(self._records)

    def delay_for(self, ip: str) -> float:
        """Seconds a login attempt from ``ip`` must wait now (0.0 if none)."""
        key = self._key(ip)
        if key is None:
            return 0.0
        record = self._current(key)
        if record is None or record.failures == 0:
            return 0.0
        exponent = min(record.failures, _MAX_COUNTED_FAILURES) - 1
        penalty = min(self._max, self._base * 2.0**exponent)
        return max(0.0, record.last_failure + penalty - self._clock())

    def record_failure(self, ip: str, username: str, password_fingerprint: bytes) -> None:
        """Count a failed login; a repeat of a recent (user, password) does not escalate."""
        key = self._key(ip)
        if key is None:
            return
        record = self._current(key)
        if record is None:
            record = self._records[key] = _Record()
        # Keep a digest, not the name and fingerprint themselves: bounded and opaque.
        attempt = hashlib.blake2b(
            username.encode("utf-8", "surrogateescape") + b"\0" + password_fingerprint,
            digest_size=16,
        ).digest()
        if attempt not in record.recent:
            record.failures = min(record.failures + 1, _MAX_COUNTED_FAILURES)
            record.recent.append(attempt)
        record.last_failure = self._clock()
        self._records.move_to_end(key)
        while len(self._records) > self._memory:
            self._records.popitem(last=False)

    def record_success(self, ip: str) -> None:
        """Forget the failures of ``ip``'s network."""
        key = self._key(ip)
        if key is not None:
            self._records.pop(key, None)

    def _current(self, key: str) -> _Record | None:
        record = self._records.get(key)
        if record is not None and self._clock() - record.last_failure >= self._forget_after:
            del self._records[key]
            return None
        return record

    def _key(self, ip: str) -> str | None:
        """The network ``ip`` is counted in, or None if it is trusted."""
        try:
            return self._keys[ip]
        except KeyError:
            pass
        if len(self._keys) >= self._memory:
            self._keys.clear()
        key = self._keys[ip] = self._network_of(ip)
        return key

    def _network_of(self, ip: str) -> str | None:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return ip  # not an IP (a Unix socket peer): counted under its own name
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            else:
                address = ipaddress.IPv6Address(int(address))  # drop any %scope
        if any(address in net for net in self._trusted):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
        return str(address)
