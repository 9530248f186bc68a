"""Durations and sizes as configuration files write them: ``30``, ``"10m"``, ``"50MB"``.

Shared by the server's and the fetcher's configuration; it imports nothing else of the
package, so the fetcher can read its configuration without loading the server's.
"""

from __future__ import annotations

import re

from postoffice.errors import ConfigError

__all__ = ["parse_duration", "parse_size"]

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"\s*([0-9]+)\s*([KMG]i?B|B)?\s*", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 1024,
    "mib": 2**20,
    "gib": 2**30,
}


def parse_duration(value: object, key: str) -> float:
    """Seconds from a number or a string such as ``"90s"``, ``"10m"``, ``"2h"``."""
    if isinstance(value, bool):
        raise ConfigError(f'{key}: expected a duration such as 30 or "10m", got {value!r}')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ConfigError(f'{key}: expected a duration such as 30 or "10m", got {value!r}')
    if seconds < 0:
        raise ConfigError(f"{key}: must not be negative")
    return seconds


def parse_size(value: object, key: str) -> int:
    """Octets from a number or a string such as ``"50MB"`` or ``"10MiB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]
    raise ConfigError(f'{key}: expected a size such as 1048576 or "50MB", got {value!r}')
